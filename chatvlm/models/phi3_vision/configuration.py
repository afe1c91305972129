"""Configuration for the Phi-3.5-vision port.

The official checkpoint ships a remote-code `Phi3VConfig` (model_type ``phi3_v``). Its
language-model part is a plain Phi-3 config, so we reuse transformers' `Phi3Config` and keep
the two vision sections (`img_processor`, `embd_layer`) as extra attributes. The vision tower
is described separately as a `CLIPVisionConfig` (see `clip_vision_config`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, Phi3Config

# The official code ignores the config for its vision tower and always builds CLIP
# ViT-L/14-336 with these values (`CLIP_VIT_LARGE_PATCH14_336_CONFIG` upstream).
CLIP_VIT_L14_336: dict[str, Any] = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-5,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
}

# Keys inside `img_processor` that may override the hard-coded CLIP description. The
# reference fixture uses `fixture_clip_vision_config` to describe its shrunk CLIP; a real
# checkpoint has neither, so it gets ViT-L/14-336.
CLIP_OVERRIDE_KEYS = ("fixture_clip_vision_config", "clip_vision_config")

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


class Phi3VConfig(Phi3Config):
    """Phi-3 config plus the official `img_processor` and `embd_layer` sections."""

    model_type = "phi3_v"


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """Read `config.json` from a checkpoint folder (or a direct file path)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def config_from_dict(config_dict: dict[str, Any], attn_implementation: str = "sdpa") -> Phi3VConfig:
    """Build a `Phi3VConfig` from an official `config.json` dict.

    Handles two incompatibilities between the 4.4x-era file and transformers 5:
    the RoPE section is called `rope_scaling` with type ``su`` and transformers 5 wants
    `original_max_position_embeddings` inside it; and the file asks for
    `flash_attention_2`, which we never require (the caller picks sdpa or eager).
    """
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    d = copy.deepcopy(config_dict)
    d.pop("_attn_implementation", None)
    d.pop("attn_implementation", None)
    d.pop("auto_map", None)
    d.pop("model_type", None)
    for key in ("img_processor", "embd_layer"):
        if not isinstance(d.get(key), dict):
            raise ValueError(f"config.json has no `{key}` section: not a Phi-3-vision checkpoint")
    rope = d.pop("rope_scaling", None) or d.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        rope.setdefault("original_max_position_embeddings", d.get("original_max_position_embeddings", 4096))
        d["rope_scaling"] = rope
    # `torch_dtype` is only the storage dtype of the file; the loader decides the run dtype.
    d.pop("torch_dtype", None)
    d.pop("dtype", None)
    return Phi3VConfig(**d, attn_implementation=attn_implementation)


def clip_vision_config(config: Phi3VConfig | dict[str, Any], attn_implementation: str = "sdpa") -> CLIPVisionConfig:
    """The CLIP vision tower description: ViT-L/14-336 unless the config overrides it."""
    img_processor = config["img_processor"] if isinstance(config, dict) else config.img_processor
    values = dict(CLIP_VIT_L14_336)
    for key in CLIP_OVERRIDE_KEYS:
        if isinstance(img_processor.get(key), dict):
            values.update(img_processor[key])
            break
    if values["image_size"] != 336 or values["patch_size"] != 14:
        # The HD transform hard-codes 336-px crops and a 24x24 patch grid.
        raise ValueError("Phi-3-vision needs a CLIP with image_size 336 and patch_size 14")
    cfg = CLIPVisionConfig(**values)
    cfg._attn_implementation = attn_implementation
    return cfg


def check_supported(config: Phi3VConfig) -> None:
    """Fail early on config variants the port (and the official code path) does not cover."""
    emb = config.embd_layer
    ip = config.img_processor
    if ip.get("name") != "clip_vision_model":
        raise NotImplementedError(f"img_processor {ip.get('name')!r} is not supported")
    wanted = {
        "use_hd_transform": True,
        "with_learnable_separator": True,
        "hd_transform_order": "sub_glb",
        "projection_cls": "mlp",
    }
    for key, value in wanted.items():
        if emb.get(key) != value:
            raise NotImplementedError(f"embd_layer.{key}={emb.get(key)!r} is not supported (need {value!r})")
    if ip.get("layer_idx", -2) != -2 or ip.get("type_feature", "patch") != "patch":
        raise NotImplementedError("only layer_idx -2 with type_feature 'patch' is supported")
    if ip.get("num_img_tokens", 144) != 144:
        raise NotImplementedError("num_img_tokens must be 144 (12x12 merged tokens per 336-px crop)")
