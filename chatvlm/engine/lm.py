"""The language model inside a VLM, as the static decoder sees it (`find_lm`), and why a
model or request must go through transformers' `generate` instead (`unsupported_reason`).

Where the decoder's parts are found: the first module with `layers`, `norm`, `embed_tokens`
and a rotary module whose layers are plain pre-norm decoder layers (q/k/v/o or Phi-3's fused
qkv projections, dense or DeepSeek-MoE feed-forward, full attention), with a RoPE whose
inverse frequencies do not depend on the length (or LongRoPE, with both factor sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn

STATIC = "chatvlm-static"
HF = "hf-generate"

ATTN_CHILDREN = {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"}
FUSED_ATTN_CHILDREN = {"qkv_proj", "o_proj"}                     # Phi-3: one q|k|v projection
LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
MLP_CHILDREN = {"gate_proj", "up_proj", "down_proj", "act_fn"}
FUSED_MLP_CHILDREN = {"gate_up_proj", "down_proj", "activation_fn"}   # Phi-3: one gate|up projection
STATIC_ROPE = {None, "default", "linear", "llama3", "yarn"}      # inv_freq does not depend on length
LONGROPE = "longrope"     # Phi-3 "su": short factors up to the original context, long ones beyond


class Unsupported(Exception):
    """This model or request is not handled by the static decoder (use generate)."""


@dataclass
class LMParts:
    text_model: nn.Module          # has .layers, .norm, .embed_tokens, .rotary_emb
    layers: Sequence[nn.Module]
    embed: nn.Module
    norm: nn.Module
    lm_head: nn.Module
    rotary: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float
    qk_norm: bool
    moe_layers: tuple[int, ...] = ()   # layers whose MLP is a router + experts block (engine.moe)
    fused_qkv: bool = False            # attention has one qkv_proj (q | k | v) instead of three
    longrope_original: Optional[int] = None   # LongRoPE: original_max_position_embeddings
    window: Optional[int] = None       # sliding window wider than any sequence served (else Unsupported)


def _children(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_children()}


def find_lm(model: nn.Module) -> LMParts:
    """The decoder stack of `model`'s language model, or Unsupported(reason)."""
    from .moe import moe_unsupported

    text_model = rotary = None
    for _, module in model.named_modules():
        rotary = getattr(module, "rotary_emb", None) or getattr(module, "rotary", None)
        if all(hasattr(module, a) for a in ("layers", "norm", "embed_tokens")) and isinstance(rotary, nn.Module) \
                and isinstance(getattr(module, "layers"), nn.ModuleList):
            layers = module.layers
            if len(layers) and hasattr(layers[0], "self_attn"):
                text_model = module
                break
    if text_model is None:
        raise Unsupported("no Llama-style decoder stack (layers/norm/embed_tokens/rotary_emb) found")
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(lm_head, nn.Linear):
        raise Unsupported("no linear lm_head")
    config = getattr(text_model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        raise Unsupported("final logit softcapping")
    # Qwen2-style configs carry a window they do not use; where one applies (Phi-3: 262144),
    # attention within it is plain causal: a request longer than the window is declined.
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise Unsupported(f"layer types {sorted(set(layer_types))}")
    rope_type = getattr(rotary, "rope_type", None)
    longrope_original = None
    if rope_type == LONGROPE:
        params = getattr(config, "rope_parameters", None) or {}
        longrope_original = params.get("original_max_position_embeddings") \
            or getattr(config, "original_max_position_embeddings", None)
        if not longrope_original or not hasattr(rotary, "attention_scaling"):
            raise Unsupported("LongRoPE without original_max_position_embeddings")
        longrope_original = int(longrope_original)
    elif rope_type not in STATIC_ROPE:
        raise Unsupported(f"rope type {rope_type!r} (length-dependent)")
    dims = None
    moe_layers = []
    for i, layer in enumerate(text_model.layers):
        # dropouts (Phi-3's residual dropouts) are identities in eval mode
        extra = {n for n in _children(layer) - LAYER_CHILDREN
                 if not (isinstance(getattr(layer, n), nn.Dropout) and not layer.training)}
        if extra or not LAYER_CHILDREN <= _children(layer):
            raise Unsupported(f"layer {i} ({type(layer).__name__}) is not a plain pre-norm decoder layer")
        attn, mlp = layer.self_attn, layer.mlp
        fused = _children(attn) == FUSED_ATTN_CHILDREN
        if not fused and (not {"q_proj", "k_proj", "v_proj", "o_proj"} <= _children(attn)
                          or _children(attn) - ATTN_CHILDREN):
            raise Unsupported(f"layer {i} attention ({type(attn).__name__}) is not q/k/v/o projections")
        dense = (not _children(mlp) - MLP_CHILDREN and {"gate_proj", "up_proj", "down_proj"} <= _children(mlp)) \
            or (not _children(mlp) - FUSED_MLP_CHILDREN and {"gate_up_proj", "down_proj"} <= _children(mlp))
        if not dense:
            reason = moe_unsupported(mlp)
            if reason:
                raise Unsupported(f"layer {i} MLP: {reason}")
            moe_layers.append(i)
        if getattr(attn, "sliding_window", None):
            raise Unsupported(f"layer {i} uses a sliding window")
        head_dim = int(attn.head_dim)
        num_heads = attn.o_proj.in_features // head_dim
        num_kv = ((attn.qkv_proj.out_features - num_heads * head_dim) // (2 * head_dim) if fused
                  else attn.k_proj.out_features // head_dim)
        scaling = float(getattr(attn, "scaling", head_dim ** -0.5))
        qk = hasattr(attn, "q_norm")
        this = (num_heads, num_kv, head_dim, scaling, qk, fused)
        if dims is not None and this != dims:
            raise Unsupported("layers differ in attention shape")
        dims = this
    num_heads, num_kv, head_dim, scaling, qk, fused = dims
    if num_heads % num_kv:
        raise Unsupported("query heads not a multiple of KV heads")
    return LMParts(text_model, list(text_model.layers), text_model.embed_tokens, text_model.norm, lm_head,
                   rotary, num_heads, num_kv, head_dim, scaling, qk, tuple(moe_layers), fused,
                   longrope_original, int(window) if window else None)


def _uses_mrope(parts: LMParts) -> bool:
    """Multimodal RoPE (three position sections: Qwen2-VL, Qwen3-VL) per the LM config."""
    config = getattr(parts.text_model, "config", None)
    for name in ("rope_parameters", "rope_scaling"):
        params = getattr(config, name, None)
        if isinstance(params, dict) and params.get("mrope_section"):
            return True
    return bool(getattr(parts.rotary, "mrope_section", None))


def unsupported_reason(model: nn.Module, *, do_sample: bool = False, num_beams: int = 1) -> Optional[str]:
    """Why the static decoder cannot run this model/request (None: it can)."""
    if do_sample:
        return "sampling (the static decoder is greedy only)"
    if num_beams and num_beams > 1:
        return "beam search"
    try:
        find_lm(model)
    except Unsupported as exc:
        return str(exc)
    return None
