"""Helpers that write dots.ocr checkpoints in the official on-disk format with random
weights and any sizes, so tests can prove the port is not fitted to one fixture."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .configuration import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID
from .modeling import build_from_config
from .processing import MAX_PIXELS, MIN_PIXELS
from .synthetic import preprocessor_config


def config_dict(
    hidden_size: int = 32,
    intermediate_size: int = 48,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vocab_size: int = 1000,
    image_token_id: int = 900,
    vision_embed_dim: int = 48,
    vision_intermediate_size: int = 80,
    vision_layers: int = 3,
    vision_heads: int = 3,
    dtype: str = "float32",
) -> dict:
    """A config.json dict with the official keys and key order, at the given sizes."""
    return {
        "architectures": ["DotsOCRForCausalLM"],
        "model_type": "dots_ocr",
        "auto_map": {
            "AutoConfig": "configuration_dots.DotsOCRConfig",
            "AutoModelForCausalLM": "modeling_dots_ocr.DotsOCRForCausalLM",
        },
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 131072,
        "max_window_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        "image_token_id": image_token_id if vocab_size <= IMAGE_TOKEN_ID else IMAGE_TOKEN_ID,
        "video_token_id": VIDEO_TOKEN_ID if vocab_size > IMAGE_TOKEN_ID else image_token_id + 1,
        "vision_config": {
            "embed_dim": vision_embed_dim,
            "hidden_size": hidden_size,
            "intermediate_size": vision_intermediate_size,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "num_channels": 3,
            "patch_size": 14,
            "post_norm": True,
            "rms_norm_eps": 1e-05,
            "spatial_merge_size": 2,
            "temporal_patch_size": 1,
            "use_bias": False,
            "attn_implementation": "flash_attention_2",
            "init_merger_std": 0.02,
            "initializer_range": 0.02,
            "is_causal": False,
        },
    }


def build_random_checkpoint(
    folder: str | Path,
    config: dict,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int | None = None,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> Path:
    """Write config.json, preprocessor_config.json and random weights (model.safetensors,
    or shards + model.safetensors.index.json when ``max_shard_bytes`` is set)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_from_config(config, dtype=dtype, device="cpu", seed=seed)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(min_pixels, max_pixels), indent=2))
    if max_shard_bytes is None:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder
