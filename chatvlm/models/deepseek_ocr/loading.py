"""Loading official checkpoints, and building random-weight models fast.

Models are built on the meta device (no memory, no init cost), then either filled from the
safetensors file(s) by their official names, or materialised on the target device and
filled with random weights there: a 3.3B-parameter model builds in seconds on a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointMismatchError, load_checkpoint
from .configuration import DeepseekOCRConfig, load_config
from .modeling import DeepseekOCRForCausalLM
from .sam import LayerNorm2d

# Registered as a buffer by the official CLIP code but never saved; rebuilt from arange.
_IGNORED_CHECKPOINT_KEYS = {"model.vision_model.embeddings.position_ids"}

__all__ = ["CheckpointMismatchError", "build_from_config", "default_device", "default_dtype", "init_random_weights",
           "load_model"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """bfloat16 on a GPU (the official inference dtype), float32 on CPU."""
    device = torch.device(device) if device is not None else default_device()
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _build_meta(config: DeepseekOCRConfig, dtype: torch.dtype) -> DeepseekOCRForCausalLM:
    with torch.device("meta"):
        model = DeepseekOCRForCausalLM(config)
    return model.to(dtype)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
               attn_implementation: str = "sdpa", strict: bool = True) -> DeepseekOCRForCausalLM:
    """Load a checkpoint in the official DeepSeek-OCR format; eval mode.

    Raises :class:`CheckpointMismatchError` on any missing or unexpected parameter (or shape
    mismatch) unless ``strict=False``; ``model.loading_info`` records what was found.
    """
    path = Path(path)
    config = load_config(path)
    device = torch.device(device) if device is not None else default_device()
    model = _build_meta(config, dtype)
    report = load_checkpoint(model, path, device, ignore=_IGNORED_CHECKPOINT_KEYS, strict=strict)
    missing, mismatched = report["missing"], report["mismatched"]
    info = {"missing_keys": missing, "unexpected_keys": report["unexpected"], "mismatched_keys": mismatched}
    if missing or mismatched:  # only with strict=False: give the holes defined (random) values
        _materialise_leftovers(model, device, dtype)
    model.set_attention(attn_implementation)
    model.eval()
    model.loading_info = info
    model.name_or_path = str(path)
    return model


def _materialise_leftovers(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                fresh = nn.Parameter(torch.empty(param.shape, device=device, dtype=dtype), requires_grad=False)
                nn.init.normal_(fresh, std=0.02)
                setattr(module, name, fresh)


@torch.no_grad()
def init_random_weights(model: nn.Module, seed: int = 0) -> None:
    """Fill every parameter with scale-aware random values (activations stay O(1), routing
    is non-degenerate, position tables are non-zero so interpolation paths matter)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.normal_(mean=mean, std=std, generator=gen)

    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            normal(module.weight, 1.0 / math.sqrt(fan_in))
            if module.bias is not None:
                normal(module.bias, 0.1)
        elif isinstance(module, (nn.LayerNorm, LayerNorm2d)) or type(module).__name__.endswith("RMSNorm"):
            normal(module.weight, 0.1, mean=1.0)
            if getattr(module, "bias", None) is not None:
                normal(module.bias, 0.1)
        elif isinstance(module, nn.Embedding):
            normal(module.weight, 0.5 if "position" in mod_name else 1.0)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "pos_embed":
            normal(param, 0.5)
        elif leaf in ("rel_pos_h", "rel_pos_w"):
            normal(param, 0.25)
        elif leaf in ("class_embedding", "image_newline", "view_seperator"):
            normal(param, 1.0)
        elif name.endswith("mlp.gate.weight"):  # MoE router
            normal(param, 2.0 / math.sqrt(param.shape[1]))


def build_from_config(config_dict: dict[str, Any] | DeepseekOCRConfig, dtype: torch.dtype = torch.bfloat16,
                      device: str | torch.device | None = None, seed: int = 0,
                      attn_implementation: str = "sdpa") -> DeepseekOCRForCausalLM:
    """The architecture of `config_dict` (e.g. the real ``full_config.json``) with random
    weights, materialised directly on `device` in `dtype`; eval mode. For benchmarks and tests."""
    config = config_dict if isinstance(config_dict, DeepseekOCRConfig) else DeepseekOCRConfig(**config_dict)
    device = torch.device(device) if device is not None else default_device()
    model = _build_meta(config, dtype).to_empty(device=device)
    init_random_weights(model, seed)
    model.set_attention(attn_implementation)
    return model.eval()
