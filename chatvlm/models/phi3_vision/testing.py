"""Tiny Phi-3.5-vision checkpoints for tests (no weights needed).

`write_random_checkpoint` writes a folder in the official format (config.json with the
vision sections, preprocessor_config.json, model.safetensors or shards + index) with any
sizes and seed; with `synthetic.build_byte_tokenizer` (a small working tokenizer with the
official special tokens) tests run the whole path: load, process, generate, decode.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ...model_constants import CLIP_MEAN, CLIP_STD
from .modeling import build_from_config
from .processing import Phi3VImageProcessor
from .synthetic import special_token_ids

def tiny_config(
    vocab_size: int = 512,
    hidden_size: int = 48,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    intermediate_size: int = 96,
    clip_hidden_size: int = 32,
    clip_layers: int = 2,
    clip_heads: int = 2,
    clip_intermediate_size: int = 64,
    original_max_position_embeddings: int = 4096,
) -> dict[str, Any]:
    """An official-format config.json dict with small sizes.

    The sizes the code hard-codes stay real (336-px views, 14-px patches, 144 tokens per
    crop); the CLIP description goes in `img_processor.fixture_clip_vision_config`, the key
    the reference fixture uses.
    """
    head_dim = hidden_size // num_attention_heads
    # RoPE factor lists need head_dim/2 entries; a smooth ramp like the official ones.
    short = [round(1.0 + 7.0 * (i / max(1, head_dim // 2 - 1)) ** 2, 4) for i in range(head_dim // 2)]
    long = [round(1.0 + 63.0 * (i / max(1, head_dim // 2 - 1)), 4) for i in range(head_dim // 2)]
    specials = special_token_ids(vocab_size)
    return {
        "architectures": ["Phi3VForCausalLM"],
        "model_type": "phi3_v",
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": specials["<|endoftext|>"],
        "embd_layer": {
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "embd_pdrop": 0.0,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "img_processor": {
            "fixture_clip_vision_config": {
                "attention_dropout": 0.0,
                "dropout": 0.0,
                "hidden_act": "quick_gelu",
                "hidden_size": clip_hidden_size,
                "image_size": 336,
                "intermediate_size": clip_intermediate_size,
                "layer_norm_eps": 1e-5,
                "num_attention_heads": clip_heads,
                "num_channels": 3,
                "num_hidden_layers": clip_layers,
                "patch_size": 14,
                "projection_dim": 768,
            },
            "image_dim_out": clip_hidden_size,
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 131072,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads or num_attention_heads,
        "original_max_position_embeddings": original_max_position_embeddings,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-5,
        "rope_scaling": {"long_factor": long, "short_factor": short, "type": "su"},
        "rope_theta": 10000.0,
        "sliding_window": 262144,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Seeded O(1) random weights in the fixture's style: activations and logits of order one
    (small-std init would make greedy margins tiny), non-zero separators."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                value = 0.05 * noise
            elif p.ndim == 1 and ("norm" in name or "layrnorm" in name):
                value = 1 + 0.1 * noise
            elif leaf in ("glb_GN", "sub_GN") or "embed_tokens" in name:
                value = noise
            elif leaf == "class_embedding" or "position_embedding" in name:
                value = 0.5 * noise
            else:
                fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else p.shape[0]
                value = noise / math.sqrt(fan_in)
            p.copy_(value.to(p.dtype))


def write_random_checkpoint(
    folder: str | Path,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
    with_wte_alias: bool = False,
    num_crops: int = 4,
    **sizes: Any,
) -> dict[str, Any]:
    """Write a random checkpoint in the official format; returns its config dict.

    `sizes` go to `tiny_config`. `shards` > 1 writes `model-0000i-of-0000n.safetensors` and
    `model.safetensors.index.json`. `with_wte_alias` also stores the official
    `model.vision_embed_tokens.wte.weight` alias (a loader must accept it).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(**sizes)
    config["torch_dtype"] = str(dtype).replace("torch.", "")
    model = build_from_config(config, dtype=torch.float32, device="cpu")
    randomize_(model, seed)
    tensors = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    if with_wte_alias:
        tensors["model.vision_embed_tokens.wte.weight"] = tensors["model.embed_tokens.weight"].clone()
    names = sorted(tensors)
    if shards <= 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        per = math.ceil(len(names) / shards)
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in names[i * per : (i + 1) * per]}
            save_file(part, str(folder / file), metadata={"format": "pt"})
            weight_map.update({k: file for k in part})
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    proc = Phi3VImageProcessor(num_crops=num_crops, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    (folder / "preprocessor_config.json").write_text(json.dumps(proc.to_dict(), indent=2))
    return config
