"""Phi-3.5-vision-instruct, ported to native transformers (no remote code).

    from chatvlm.models import phi3_vision
    model = phi3_vision.from_pretrained(path, dtype=torch.bfloat16, device="cuda")
    tok = phi3_vision.load_tokenizer(path)
    proc = phi3_vision.processor_from_pretrained(path, num_crops=16, tokenizer=tok)
    batch = proc.build_batch([phi3_vision.format_prompt(p) for p in prompts], images)  # left-padded
    out = model.generate(**{k: v.to("cuda") for k, v in batch.items()}, max_new_tokens=1024,
                         do_sample=False, eos_token_id=proc.stop_token_ids(), pad_token_id=tok.pad_token_id)
    texts = [proc.decode(row[batch["input_ids"].shape[1]:]) for row in out]
"""

from ..checkpoint import weight_files as checkpoint_files
from .configuration import Phi3VConfig, clip_vision_config, config_from_dict
from .image_embedding import Phi3ImageEmbedding, num_image_tokens
from .modeling import (
    CheckpointKeyError,
    Phi3VForCausalLM,
    build_from_config,
    from_pretrained,
)
from .processing import (
    DEFAULT_NUM_CROPS,
    OCR_NUM_CROPS,
    OCR_PROMPTS,
    Phi3VImageProcessor,
    format_prompt,
    load_tokenizer,
    processor_from_pretrained,
)

__all__ = [
    "CheckpointKeyError",
    "DEFAULT_NUM_CROPS",
    "OCR_NUM_CROPS",
    "OCR_PROMPTS",
    "Phi3ImageEmbedding",
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VImageProcessor",
    "build_from_config",
    "checkpoint_files",
    "clip_vision_config",
    "config_from_dict",
    "format_prompt",
    "from_pretrained",
    "load_tokenizer",
    "num_image_tokens",
    "processor_from_pretrained",
]
