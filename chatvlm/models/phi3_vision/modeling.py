"""Phi-3.5-vision as a transformers `Phi3ForCausalLM` with an image embedding in front.

The language model is transformers' native Phi-3 (its parameter names match the official
checkpoint). Our `forward` turns `input_ids` (with negative image placeholder ids) plus
`pixel_values`/`image_sizes` into `inputs_embeds` and hands them to the native forward, so
HF `generate` works unchanged: KV cache, left padding (position ids from the attention
mask) and stopping criteria. Image features are computed only at prefill: later steps carry
no placeholder ids, and generate drops `pixel_values` outside prefill anyway.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, Phi3ForCausalLM

from ..checkpoint import CheckpointMismatchError, load_checkpoint
from ..common import chunk_positions
from .configuration import (
    Phi3VConfig,
    check_supported,
    clip_vision_config,
    config_from_dict,
    load_config_dict,
)
from .image_embedding import Phi3ImageEmbedding

# Ids in (-MAX_INPUT_ID, 0) are image placeholders (-N for image N), as upstream.
MAX_INPUT_ID = int(1e9)

# The official module tree shares `model.embed_tokens` as `model.vision_embed_tokens.wte`, so
# its state_dict lists the tensor twice; checkpoints store only `model.embed_tokens.weight`.
WTE_ALIAS = "model.vision_embed_tokens.wte.weight"
EMBED_KEY = "model.embed_tokens.weight"

# Phi-3 keeps its 64 added tokens at the end of the vocab: <|endoftext|> is the first of
# them and <|end|> the eighth (32000 and 32007 at full size).
ADDED_TOKENS = 64
ENDOFTEXT_OFFSET = 0
END_OFFSET = 7

# The shared loader's error, under the name this port has always raised.
CheckpointKeyError = CheckpointMismatchError


def default_stop_ids(config: Phi3VConfig) -> list[int]:
    """Ids that end a turn: `<|end|>`, `<|endoftext|>` and the config's eos.

    The model ends its answers with `<|end|>`; the shipped generation config only lists
    eos 2, which makes generation run on (see reference notes), so we stop on all three.
    """
    base = config.vocab_size - ADDED_TOKENS
    ids = [base + END_OFFSET, base + ENDOFTEXT_OFFSET]
    eos = config.eos_token_id
    for e in eos if isinstance(eos, list) else [eos]:
        if e is not None and e not in ids:
            ids.append(int(e))
    return [i for i in ids if 0 <= i < config.vocab_size]


class Phi3VForCausalLM(Phi3ForCausalLM):
    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig, clip_attn_implementation: str | None = None):
        super().__init__(config)
        check_supported(config)
        clip_cfg = clip_vision_config(config, clip_attn_implementation or config._attn_implementation)
        # Registered under `model.` so the names are `model.vision_embed_tokens.*` as upstream.
        # The official `wte` alias is deliberately not a submodule: we pass the shared token
        # embedding in at call time, so state_dict() lists it once, like the checkpoint.
        self.model.vision_embed_tokens = Phi3ImageEmbedding(
            hidden_size=config.hidden_size,
            image_dim_out=config.img_processor["image_dim_out"],
            clip_config=clip_cfg,
            layer_idx=config.img_processor.get("layer_idx", -2),
        )
        self.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=default_stop_ids(config),
            pad_token_id=config.pad_token_id,
        )

    @property
    def vision(self) -> Phi3ImageEmbedding:
        return self.model.vision_embed_tokens

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the image features written over the placeholder rows."""
        is_image = (input_ids < 0) & (input_ids > -MAX_INPUT_ID)
        embeds = self.model.embed_tokens(input_ids.clamp(min=0))
        n_slots = int(is_image.sum())
        if n_slots == 0:
            return embeds
        if pixel_values is None or image_sizes is None:
            raise ValueError("input_ids hold image placeholders but pixel_values/image_sizes are missing")
        features = self.vision(pixel_values.to(embeds.device), image_sizes)
        # Images fill the placeholder runs in reading order (row by row), as upstream does.
        features = torch.cat(features, dim=0)
        if features.shape[0] != n_slots:
            raise ValueError(
                f"{n_slots} image placeholder ids but the images give {features.shape[0]} features; "
                "build input_ids with the same processor settings (num_crops) as pixel_values"
            )
        return embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ):
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # Left padding: count positions from the first real token, as generate does, so a
            # padded row sees the same positions as the unpadded prompt in a plain forward too.
            position_ids = chunk_positions(attention_mask, inputs_embeds.shape[1])
        # The cache kwarg is passed through untouched (`past_key_values` or `cache`,
        # depending on the transformers 5.x release).
        return super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, image_sizes=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, pixel_values=pixel_values, image_sizes=image_sizes, **kwargs
        )
        # Phi-3 drops its KV cache once when the sequence first outgrows
        # original_max_position_embeddings (short -> long RoPE factors) and re-runs the whole
        # sequence. generate only forwards pixel_values at prefill, so hand them back for that
        # recompute: the placeholder ids are in the inputs again.
        ids = model_inputs.get("input_ids")
        if pixel_values is not None and ids is not None and bool(((ids < 0) & (ids > -MAX_INPUT_ID)).any()):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["image_sizes"] = image_sizes
        return model_inputs


# ---------------------------------------------------------------------------------------
# building and loading


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    # Parameters are created directly in the run dtype (no fp32 copy of a 4B model); the
    # RoPE inverse frequencies are computed with an explicit float32 dtype, so they stay exact.
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _resolve_dtype(dtype: torch.dtype | str | None, config_dict: dict[str, Any]) -> torch.dtype:
    if dtype is None:
        dtype = config_dict.get("torch_dtype") or config_dict.get("dtype") or "float32"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unsupported dtype {dtype!r}")
    return dtype


def build_from_config(
    config_dict: dict[str, Any],
    dtype: torch.dtype | str | None = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    clip_attn_implementation: str | None = None,
) -> Phi3VForCausalLM:
    """The model with random weights from a full config dict (official `config.json` format).

    Used for speed benchmarks without weights (`chatvlm bench --synthetic`) and as the
    skeleton `from_pretrained` loads into. Weights are created directly on `device`.
    """
    dtype = _resolve_dtype(dtype, config_dict)
    config = config_from_dict(config_dict, attn_implementation=attn_implementation)
    with torch.device(device), _default_dtype(dtype):
        model = Phi3VForCausalLM(config, clip_attn_implementation=clip_attn_implementation)
    separators = (model.vision.glb_GN, model.vision.sub_GN)
    if not any(p.is_meta for p in separators) and not all(p.any() for p in separators):
        # Zero separators (the official init) would hide layout bugs in a random model.
        with torch.no_grad():
            model.vision.glb_GN.normal_()
            model.vision.sub_GN.normal_()
    return model.eval()


def from_pretrained(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    clip_attn_implementation: str | None = None,
) -> Phi3VForCausalLM:
    """Load an official Phi-3.5-vision checkpoint folder (no remote code).

    `dtype` None keeps the file's `torch_dtype`. Raises `CheckpointKeyError` unless the
    checkpoint's tensor names equal the model's state_dict keys exactly (the `wte` alias of
    the token embedding is accepted in place of, or next to, `model.embed_tokens.weight`).
    The result records `load_report = {"missing": [], "unexpected": []}`.
    """
    path = Path(path)
    config_dict = load_config_dict(path)
    model = build_from_config(
        config_dict,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        clip_attn_implementation=clip_attn_implementation,
    )
    report = load_checkpoint(model, path, device, aliases={WTE_ALIAS: EMBED_KEY})
    model.load_report = {"missing": report["missing"], "unexpected": report["unexpected"]}
    generation_file = path / "generation_config.json"
    if generation_file.is_file():
        # Keep our stop ids: the shipped file lists only eos 2 (generation runs on).
        shipped = GenerationConfig.from_pretrained(str(path))
        shipped.eos_token_id = model.generation_config.eos_token_id
        if shipped.pad_token_id is None:
            shipped.pad_token_id = model.generation_config.pad_token_id
        model.generation_config = shipped
    return model.eval()
