"""DeepSeek-OCR (v1): DeepEncoder (SAM + CLIP) -> linear projector -> DeepSeek-V2-style MoE LM.

Parameter names are the official ones (``model.sam_model.*``, ``model.vision_model.*``,
``model.projector.*``, ``model.layers.*``, ``model.embed_tokens``, ``model.norm``,
``model.image_newline``, ``model.view_seperator``, ``lm_head``), so the official safetensors
load with ``strict`` semantics. The dense MLPs and RMSNorm are transformers' own DeepSeek-V2
modules (same math, same names); attention is plain MHA with rotate-half RoPE, as the
official code gets from LlamaAttention when ``use_mla`` is false.

Batching: a batch is left-padded; position ids come from the attention mask, every query
may also see itself (so all-padding rows stay finite), and vision features are computed for
all pages of a batch in a few large encoder calls, then written into each row's
``images_seq_mask`` positions.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2MLP, DeepseekV2RMSNorm
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ..common import chunk_positions
from .clip import ClipVisionModel
from .configuration import DeepseekOCRConfig
from .sam import SamEncoder

# transformers renamed the cache argument/field from `past_key_values` to `cache` in 5.2x;
# accept both and return whichever the installed version's output classes declare.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

ImageItem = tuple[torch.Tensor, torch.Tensor] | None  # (crops, global view)


# --------------------------------------------------------------------------------------------
# Language model
# --------------------------------------------------------------------------------------------

class RotaryEmbedding(nn.Module):
    """Default (unscaled) RoPE; cos/sin computed in float32 like LlamaRotaryEmbedding."""

    def __init__(self, dim: int, theta: float) -> None:
        super().__init__()
        self.dim, self.theta = dim, float(theta)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.dim, 2, dtype=torch.int64, device=x.device).float() / self.dim
        inv_freq = 1.0 / (self.theta ** exponent)
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class DeepseekOCRAttention(nn.Module):
    def __init__(self, config: DeepseekOCRConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads or config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        self.attn_implementation = "sdpa"
        h, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | str | None, cache: Any) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.attn_implementation == "eager":
            out = _eager_attention(q, k, v, mask, self.scaling)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask if isinstance(mask, torch.Tensor) else None,
                is_causal=mask == "causal" if isinstance(mask, str) else False, scale=self.scaling)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def _eager_attention(q, k, v, mask, scaling):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if isinstance(mask, str):  # "causal" with no cache: square lower triangle
        n = q.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


class MoEGate(nn.Module):
    """Softmax router with greedy top-k; the official model does NOT renormalise the k weights."""

    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Routing in float32 whatever the model dtype, as the reference does.
        scores = F.linear(x.float(), self.weight.float()).softmax(dim=-1)
        weight, idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.top_k > 1 and self.norm_topk_prob:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        return idx, weight * self.routed_scaling_factor


class DeepseekOCRMoE(nn.Module):
    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__()
        moe = config.moe_intermediate_size
        self.gate = MoEGate(config)
        self.experts = nn.ModuleList(DeepseekV2MLP(config, intermediate_size=moe)
                                     for _ in range(config.n_routed_experts))
        self.shared_experts = (DeepseekV2MLP(config, intermediate_size=moe * config.n_shared_experts)
                               if config.n_shared_experts else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        idx, weight = self.gate(flat)
        # Sort the (token, slot) pairs by expert so each expert runs once on a contiguous
        # slice; a single host sync (the counts) per layer, as in the reference's moe_infer.
        flat_idx = idx.reshape(-1)
        order = flat_idx.argsort(stable=True)
        counts = torch.bincount(flat_idx, minlength=len(self.experts)).tolist()
        token = order // idx.shape[-1]
        outs = [self.experts[e](chunk) for e, chunk in enumerate(flat[token].split(counts)) if counts[e]]
        # Weighted sum in float32 (the reference sums in the router's dtype).
        y = torch.cat(outs).float() * weight.reshape(-1)[order, None]
        out = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device).index_add_(0, token, y)
        out = out.to(x.dtype).reshape(x.shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out


class DeepseekOCRDecoderLayer(nn.Module):
    def __init__(self, config: DeepseekOCRConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = DeepseekOCRAttention(config, layer_idx)
        self.mlp = DeepseekOCRMoE(config) if config.is_moe_layer(layer_idx) else DeepseekV2MLP(config)
        self.input_layernorm = DeepseekV2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = DeepseekV2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def _positions(attention_mask: torch.Tensor | None, past: int, q_len: int, batch: int,
               device: torch.device) -> torch.Tensor:
    """Position ids that skip left padding: the first real token of every row is 0."""
    if attention_mask is None:
        return torch.arange(past, past + q_len, device=device).expand(batch, -1)
    return chunk_positions(attention_mask, q_len)


def _attention_mask(attention_mask: torch.Tensor | None, past: int, q_len: int,
                    device: torch.device) -> torch.Tensor | str | None:
    """None (one new token, nothing padded), "causal" (plain prefill: lets SDPA pick its
    fastest kernel), or a boolean [B,1,q,kv] mask. A query may always see itself, so rows
    that are entirely padding stay finite instead of NaN."""
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded:
        if q_len == 1:
            return None
        if past == 0:
            return "causal"
    kv_len = past + q_len
    key = torch.arange(kv_len, device=device)
    query = torch.arange(past, kv_len, device=device)
    allowed = (key[None, :] <= query[:, None])[None]
    if padded:
        allowed = allowed & attention_mask[:, None, -kv_len:].bool()
        allowed = allowed | (key[None, :] == query[:, None])[None]
    return allowed[:, None]


# --------------------------------------------------------------------------------------------
# Vision side
# --------------------------------------------------------------------------------------------

class Projector(nn.Module):
    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__()
        p = config.projector_config
        self.layers = nn.Linear(p["input_dim"], p["n_embed"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _has_content(t: torch.Tensor | None) -> bool:
    # The reference treats an all-zero tensor as "no image" / "no tiles" (its placeholder).
    return t is not None and t.numel() > 0 and bool(t.any())


class DeepseekOCRModel(nn.Module):
    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DeepseekOCRDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = DeepseekV2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.sam_model = SamEncoder(config)
        self.vision_model = ClipVisionModel(config)
        self.projector = Projector(config)
        self.image_newline = nn.Parameter(torch.zeros(config.hidden_size))
        self.view_seperator = nn.Parameter(torch.zeros(config.hidden_size))  # (sic) official name
        # Views per encoder call are bounded so that a chunk's SAM global-attention bias
        # (views * heads * (S/16)^4 elements) stays near that of 16 tiles of 640 px.
        self.vision_budget = 16 * 40 ** 4

    # -- vision -------------------------------------------------------------------------------
    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """Square views [N,3,S,S] -> projected tokens [N, (S/64)^2, hidden]."""
        sam = self.sam_model(pixels)
        clip = self.vision_model(sam)
        fused = torch.cat([clip[:, 1:], sam.flatten(2).transpose(1, 2)], dim=-1)  # CLIP first
        return self.projector(fused)

    def _encode_grouped(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encode many view stacks with as few encoder calls as possible (grouped by size,
        in order of first appearance)."""
        out: list[torch.Tensor | None] = [None] * len(views)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.shape[-2:]), []).append(i)
        dtype = self.projector.layers.weight.dtype
        device = self.projector.layers.weight.device
        for members in groups.values():
            stack = torch.cat([views[i] for i in members]).to(device=device, dtype=dtype)
            per_call = max(1, self.vision_budget // (stack.shape[-1] // 16) ** 4)
            feats = torch.cat([self.encode_views(chunk) for chunk in stack.split(per_call)])
            for i, part in zip(members, feats.split([views[i].shape[0] for i in members])):
                out[i] = part
        return out  # type: ignore[return-value]

    def _layout(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None,
                tiles_w: int, tiles_h: int) -> torch.Tensor:
        """Official token order: local tiles as one (q*h) x (q*w) grid, each row + newline;
        then the global grid, each row + newline; then one view separator."""
        dim = global_feats.shape[-1]
        newline = self.image_newline.to(global_feats.dtype)
        g = math.isqrt(global_feats.shape[-2])
        rows = torch.cat([global_feats.reshape(g, g, dim), newline.expand(g, 1, dim)], dim=1).reshape(-1, dim)
        parts = [rows, self.view_seperator.to(global_feats.dtype)[None]]
        if local_feats is not None:
            q = math.isqrt(local_feats.shape[-2])
            grid = (local_feats.reshape(tiles_h, tiles_w, q, q, dim).permute(0, 2, 1, 3, 4)
                    .reshape(tiles_h * q, tiles_w * q, dim))
            local = torch.cat([grid, newline.expand(tiles_h * q, 1, dim)], dim=1).reshape(-1, dim)
            parts.insert(0, local)
        return torch.cat(parts)

    def image_features(self, images: Sequence[ImageItem], images_spatial_crop: Any) -> list[torch.Tensor | None]:
        """One [n_image_tokens, hidden] tensor per batch row (None where the row has no image)."""
        crops_spec = torch.as_tensor(images_spatial_crop).reshape(-1, 2).tolist() \
            if images_spatial_crop is not None else [[1, 1]] * len(images)
        views: list[torch.Tensor] = []
        plan: list[tuple[int | None, int | None]] = []  # per row: (index of crops, index of global)
        for item in images:
            crops, glob = item if item is not None else (None, None)
            if not _has_content(glob):
                plan.append((None, None))
                continue
            ci = None
            if _has_content(crops):
                ci = len(views)
                views.append(crops)
            views.append(glob if glob.dim() == 4 else glob[None])
            plan.append((ci, len(views) - 1))
        feats = self._encode_grouped(views) if views else []
        result: list[torch.Tensor | None] = []
        for (ci, gi), (w, h) in zip(plan, crops_spec):
            if gi is None:
                result.append(None)
                continue
            local = feats[ci] if ci is not None else None
            result.append(self._layout(feats[gi][0], local, int(w), int(h)))
        return result

    def embed(self, input_ids: torch.Tensor, images: Sequence[ImageItem] | None = None,
              images_seq_mask: torch.Tensor | None = None, images_spatial_crop: Any = None) -> torch.Tensor:
        """Token embeddings with the image runs overwritten by vision features."""
        embeds = self.embed_tokens(input_ids)
        # A mask longer than the input means a decode step (vision already in the KV cache).
        if images is None or images_seq_mask is None or len(images_seq_mask[0]) > input_ids.shape[-1]:
            return embeds
        mask = torch.as_tensor(images_seq_mask).to(device=embeds.device, dtype=torch.bool)
        if mask.shape[-1] < input_ids.shape[-1]:  # no-cache generation: appended tokens are text
            mask = F.pad(mask, (0, input_ids.shape[-1] - mask.shape[-1]), value=False)
        if not bool(mask.any()):
            return embeds
        if len(images) != input_ids.shape[0]:
            raise ValueError(f"got {len(images)} image entries for a batch of {input_ids.shape[0]}")
        embeds = embeds.clone()
        for row, feats in enumerate(self.image_features(images, images_spatial_crop)):
            n_slots = int(mask[row].sum())
            n_feats = 0 if feats is None else feats.shape[0]
            if n_slots != n_feats:
                raise ValueError(f"batch row {row}: {n_slots} image positions but {n_feats} image features")
            if feats is not None:
                embeds[row, mask[row]] = feats.to(embeds.dtype)
        return embeds

    # -- language model -----------------------------------------------------------------------
    def decode(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None,
               position_ids: torch.Tensor | None, cache: Any) -> torch.Tensor:
        b, q_len, _ = embeds.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = _positions(attention_mask, past, q_len, b, embeds.device)
        mask = _attention_mask(attention_mask, past, q_len, embeds.device)
        cos, sin = self.rotary(embeds, position_ids)
        x = embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        return self.norm(x)


class DeepseekOCRForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = DeepseekOCRConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _no_split_modules = ["DeepseekOCRDecoderLayer", "SamBlock", "ClipBlock"]

    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__(config)
        self.model = DeepseekOCRModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        if self.generation_config.pad_token_id is None:
            self.generation_config.pad_token_id = 2  # "<｜▁pad▁｜>" of the official tokenizer

    # Weights come from a checkpoint (the package's from_pretrained, strict on official names)
    # or from loading.init_random_weights; keep the HF init cheap.
    def _init_weights(self, module: nn.Module) -> None:
        pass

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_attention(self, implementation: str) -> None:
        """"sdpa" (default; bf16 on GPU) or "eager" (explicit float32 softmax)."""
        if implementation not in ("sdpa", "eager"):
            raise ValueError(f"unsupported attention implementation {implementation!r}")
        for layer in self.model.layers:
            layer.self_attn.attn_implementation = implementation

    @property
    def attention_implementation(self) -> str:
        return self.model.layers[0].self_attn.attn_implementation if len(self.model.layers) else "sdpa"

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: Any = None,
                inputs_embeds: torch.Tensor | None = None, images: Sequence[ImageItem] | None = None,
                images_seq_mask: torch.Tensor | None = None, images_spatial_crop: Any = None,
                use_cache: bool | None = None, logits_to_keep: int = 0, cache: Any = None,
                return_dict: bool | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.model.embed(input_ids, images, images_seq_mask, images_spatial_crop)
        if use_cache is None:
            use_cache = bool(getattr(self.config, "use_cache", True)) and not self.training
        if use_cache and cache is None:
            cache = DynamicCache()
        hidden = self.model.decode(inputs_embeds, attention_mask, position_ids, cache if use_cache else None)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()
        return CausalLMOutputWithPast(logits=logits, **{_CACHE_FIELD: cache if use_cache else None})

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask=None, images=None,
                                      images_seq_mask=None, images_spatial_crop=None, **kwargs: Any):
        """Vision runs only at prefill; decode steps feed the new token(s) and the KV cache."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        if past:
            input_ids = input_ids[:, past:]
            images = images_seq_mask = images_spatial_crop = None
        inputs: dict[str, Any] = {
            "input_ids": input_ids, "attention_mask": attention_mask, _CACHE_FIELD: cache,
            "position_ids": _positions(attention_mask, past, input_ids.shape[1], input_ids.shape[0], input_ids.device),
            "images": images, "images_seq_mask": images_seq_mask,
            "images_spatial_crop": images_spatial_crop, "use_cache": kwargs.get("use_cache", True),
        }
        if kwargs.get("logits_to_keep") is not None:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs
