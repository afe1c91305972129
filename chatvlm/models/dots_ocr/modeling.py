"""dots.ocr: our vision tower + transformers' ``Qwen2ForCausalLM``, loading official checkpoints.

The LM is a plain Qwen2 (1-D RoPE over the whole sequence, image tokens included; no
M-RoPE), so the model *is* a ``Qwen2ForCausalLM`` with one extra submodule,
``vision_tower``. Its forward builds ``inputs_embeds`` itself: token embeddings with the
``<|imgpad|>`` rows replaced, in order, by the vision features. Being a transformers
``PreTrainedModel`` + ``GenerationMixin`` gives us HF ``generate`` (KV cache, left-padded
batches, stopping) for free; the vision tower runs only in the prefill step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, Qwen2ForCausalLM

from ..checkpoint import load_checkpoint
from ..common import chunk_positions
from .configuration import EOS_TOKEN_IDS, DotsVisionConfig, load_config_dict, make_config
from .vision import DotsVisionTransformer, flash_attn_varlen_func


class DotsOCRForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.vision_config = DotsVisionConfig.from_dict(config.vision_config)
        self.vision_tower = DotsVisionTransformer(self.vision_config)

    # -- embeddings -----------------------------------------------------------------
    def embed_with_images(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the image-pad rows replaced by the vision features."""
        embeds = self.model.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds
        mask = input_ids == self.config.image_token_id
        n_tokens = int(mask.sum())
        if n_tokens == 0:  # e.g. a decode step that was still handed the pixels
            return embeds
        if image_grid_thw is None:
            raise ValueError("pixel_values given without image_grid_thw")
        features = self.vision_tower(pixel_values, image_grid_thw).to(embeds.dtype)
        if features.shape[0] != n_tokens:
            raise ValueError(
                f"{n_tokens} image tokens in input_ids but the images give {features.shape[0]} features"
            )
        # Row-major order over (batch, seq) == order of images in the batch, as upstream.
        return embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), features)

    # -- forward --------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,  # the KV cache (named `past_key_values` or `cache` depending on transformers)
    ):
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.embed_with_images(input_ids, pixel_values, image_grid_thw)
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # Left padding: real tokens count from 0, as generate() does.
            position_ids = chunk_positions(attention_mask, inputs_embeds.shape[1])
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

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, image_grid_thw=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        # Pixels only for the prefill step (empty cache); later steps see only new tokens.
        cache = inputs.get("cache", inputs.get("past_key_values"))
        prefill = cache is None or cache.get_seq_length() == 0
        inputs.pop("pixel_values", None)
        inputs.pop("image_grid_thw", None)
        if prefill and pixel_values is not None:
            inputs["pixel_values"] = pixel_values
            inputs["image_grid_thw"] = image_grid_thw
        return inputs


# ---------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------


def _pick_attn(attn_implementation: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """LM attention: flash-attn 2 when importable on CUDA in half precision, else SDPA."""
    if attn_implementation:
        return attn_implementation
    if flash_attn_varlen_func is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return "flash_attention_2"
    return "sdpa"


def _skeleton(config, dtype: torch.dtype, attn_implementation: str) -> DotsOCRForCausalLM:
    """The model with parameters on the meta device: no memory, no init cost."""
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = DotsOCRForCausalLM(config)
    model.to(dtype)  # meta -> meta: only changes the recorded dtype
    model.config._attn_implementation = attn_implementation
    return model


def _finish(model: DotsOCRForCausalLM, device: torch.device, generation_config: GenerationConfig | None):
    """Recreate the non-persistent buffers (LM rotary inv_freq, float32), check for leftovers."""
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config).to(device)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left uninitialised after loading: {left[:10]}")
    if generation_config is None:
        if model.config.vocab_size > max(EOS_TOKEN_IDS):
            generation_config = default_generation_config()
        else:  # a small test vocabulary has no official stop/pad ids
            generation_config = GenerationConfig(pad_token_id=0, do_sample=False)
    model.generation_config = generation_config
    # Inference only: no autograd graph even if a caller forgets torch.no_grad().
    return model.requires_grad_(False).eval()


def default_generation_config(**overrides) -> GenerationConfig:
    """Official generation_config.json: eos <|endoftext|>, <|endofassistant|>; greedy."""
    params = dict(eos_token_id=list(EOS_TOKEN_IDS), pad_token_id=EOS_TOKEN_IDS[0], do_sample=False)
    params.update(overrides)
    return GenerationConfig(**params)


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (the official dtype), fp32 on CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def from_pretrained(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> DotsOCRForCausalLM:
    """Load an official dots.ocr checkpoint folder (config.json + safetensors) in eval mode.

    Every model tensor must come from the checkpoint and every checkpoint tensor must be
    used (zero missing / unexpected keys), else CheckpointMismatchError (a ValueError).
    ``dtype`` None: bf16 on CUDA, fp32 on CPU. ``attn_implementation`` (LM only) None: flash_attention_2 when flash-attn
    imports on CUDA, else sdpa; the vision tower always uses its own per-image path.
    """
    folder = Path(path)
    device = torch.device(device)
    dtype = dtype or auto_dtype(device)
    config = make_config(folder)
    model = _skeleton(config, dtype, _pick_attn(attn_implementation, device, dtype))
    load_checkpoint(model, folder, device)
    gen_path = folder / "generation_config.json"
    gen = None
    if gen_path.exists():
        extra = json.loads(gen_path.read_text())
        extra.pop("transformers_version", None)
        extra.pop("max_length", None)  # 32768 upstream; callers pass max_new_tokens
        gen = default_generation_config(**extra)
    return _finish(model, device, gen)


@torch.no_grad()
def init_random_(model: DotsOCRForCausalLM, seed: int = 0, std: float = 0.02) -> DotsOCRForCausalLM:
    """Random weights in place: Linear/Conv/Embedding ~ N(0, std); norm weights
    1 + 0.1·N(0,1) and biases 0.02·N(0,1) (perturbed away from 1/0, so a port that ignored
    them would show in tests). Runs on the parameters' own device, so it is fast on GPU."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.normal_(0.0, 0.02, generator=gen)
        elif p.dim() == 1:  # RMSNorm / LayerNorm weights
            p.normal_(1.0, 0.1, generator=gen)
        else:
            p.normal_(0.0, std, generator=gen)
    return model


def build_from_config(
    config: str | Path | dict,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    attn_implementation: str | None = None,
) -> DotsOCRForCausalLM:
    """The model with random weights from a full config (e.g. fixtures' full_config.json),
    for benchmarks without weights. Parameters are allocated directly on ``device`` and
    initialised there; nothing is built twice."""
    device = torch.device(device)
    dtype = dtype or auto_dtype(device)
    cfg = make_config(load_config_dict(config))
    model = _skeleton(cfg, dtype, _pick_attn(attn_implementation, device, dtype))
    if device.type == "meta":  # structure only (tensor names, shapes, parameter counts)
        return model.eval()
    model.to_empty(device=device)
    init_random_(model, seed=seed, std=cfg.initializer_range)
    return _finish(model, device, None)
