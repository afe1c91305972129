"""DeepSeek-OCR (v1) as our own PyTorch port (no remote code).

    model = from_pretrained(path, dtype=torch.float32)       # official checkpoint layout
    proc = processor_from_pretrained(path)
    batch = proc.batch(pages, PROMPT_MARKDOWN, mode="gundam")  # left-padded
    out = model.generate(**batch, max_new_tokens=..., do_sample=False)
"""

from __future__ import annotations

from pathlib import Path

import torch

from .configuration import DeepseekOCRConfig, load_config, official_config_dict
from .loading import (CheckpointMismatchError, build_from_config, default_device, default_dtype, init_random_weights,
                      load_model)
from .modeling import DeepseekOCRForCausalLM
from .processing import (DEFAULT_MODE, MODES, PROMPT_FREE_OCR, PROMPT_MARKDOWN, PROMPTS, DeepseekOCRProcessor,
                         collate, processor_from_pretrained)


def from_pretrained(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
                    attn_implementation: str = "sdpa", strict: bool = True) -> DeepseekOCRForCausalLM:
    """Load an official-format checkpoint folder; eval mode, on `device` (default: CUDA if
    available, else CPU). Raises CheckpointMismatchError on missing/unexpected keys."""
    return load_model(path, dtype=dtype, device=device, attn_implementation=attn_implementation, strict=strict)


__all__ = [
    "CheckpointMismatchError", "DEFAULT_MODE", "DeepseekOCRConfig", "DeepseekOCRForCausalLM",
    "DeepseekOCRProcessor", "MODES", "PROMPTS", "PROMPT_FREE_OCR", "PROMPT_MARKDOWN", "build_from_config", "collate",
    "default_device", "default_dtype", "from_pretrained", "init_random_weights", "load_config", "official_config_dict",
    "processor_from_pretrained",
]
