"""Test helpers: random checkpoints in the official on-disk format (config.json +
model.safetensors with official names), with a tokenizer from synthetic.build_byte_tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .configuration import official_config_dict
from .loading import build_from_config
from .synthetic import PROCESSOR_CONFIG, build_byte_tokenizer

def write_random_checkpoint(folder: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                            with_tokenizer: bool = True, **sizes: Any) -> dict[str, Any]:
    """Write a random-weight checkpoint in the official format; returns its config dict.

    `sizes` go to :func:`official_config_dict` (hidden_size, num_hidden_layers,
    n_routed_experts, sam_width, sam_global_attn_indexes, ...). Defaults are small.
    """
    small = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                 num_hidden_layers=2, num_attention_heads=4, n_routed_experts=8, num_experts_per_tok=3,
                 n_shared_experts=2, sam_width=32, sam_layers=6, sam_heads=2, sam_global_attn_indexes=(2, 5),
                 sam_downsample_channels=(32, 64), clip_layers=2, clip_heads=4)
    small.update(sizes)
    config = official_config_dict(torch_dtype=str(dtype).removeprefix("torch."), **small)
    model = build_from_config(config, dtype=dtype, device="cpu", seed=seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "processor_config.json").write_text(json.dumps(PROCESSOR_CONFIG, indent=2), encoding="utf-8")
    if with_tokenizer:
        build_byte_tokenizer(folder, vocab_size=small["vocab_size"])
    return config
