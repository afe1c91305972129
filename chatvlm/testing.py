"""Tiny random-weight checkpoints of the transformers-native models, for tests and demos.

Each builder uses the model's REAL config class, REAL processor classes and a byte-level
BPE tokenizer built in code (chatvlm.byte_tokenizer, the way transformers tests itself), with the special tokens
the model and its processor need. The result is a folder written with `save_pretrained`
that loads through the backend's own `load()` exactly like a downloaded checkpoint:

    from chatvlm.testing import build_tiny_checkpoint
    path = build_tiny_checkpoint("qwen_vl_2b", tmp_path / "qwen")
    chatvlm ocr pages/ -o out --model qwen_vl_2b --model-path <path>

The weights are random, so the "text" is noise; what the checkpoints prove is structure:
batching, padding, prompt building, stop tokens, token counts, files. Vocabularies are
tiny (256 byte tokens plus the special tokens), hidden sizes 16-32 and one or two layers,
so building and running one takes seconds on a CPU. Vision sizes that the real processors
or model code hard-code (GOT's 1024-px SAM input, DeepSeek-OCR-2's 1024/768 views) are kept.

`tiny_synthetic_configs` are reduced configs of all seven VLMs for `bench --synthetic` on a
CPU (the recipe tests, and the GPU check's dry run through `python -m chatvlm.testing
synthetic-configs DIR`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .byte_tokenizer import (GOT_SPECIALS, QWEN2_VL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE, deepseek_tokenizer,
                             got_ocr_tokenizer, qwen_vl_tokenizer)
from .model_constants import CLIP_MEAN, CLIP_STD, HALF_MEAN, HALF_STD
from .synthetic import qwen_vl_processor

TINY_MODELS = ("qwen_vl_2b", "qwen3_vl_2b", "got_ocr_hf", "deepseek_ocr2")


def _finish(folder: Path, model, processor, generation: dict) -> Path:
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "TINY_RANDOM_WEIGHTS.txt").write_text(
        "Tiny random-weight checkpoint built by chatvlm.testing for tests; its output is noise.\n")
    return folder


def _seed(seed: int) -> None:
    import torch
    torch.manual_seed(seed)


def _randomize(model, std: float = 0.3) -> None:
    """Re-draw every weight matrix with a wide normal (norms and biases kept).

    With transformers' default 0.02 init a tiny model emits one token forever, the same
    for every page; wider weights give page-dependent, varied greedy outputs, so batching
    tests compare real token streams and greedy choices are not fp32 near-ties.
    """
    import torch
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() < 2 or "norm" in name:
                continue
            param.normal_(0.0, std)
        for name, param in model.named_parameters():
            if name.endswith("view_separator") or name.endswith("image_newline"):
                param.normal_(0.0, std)


def _boost(model, token_ids, factor: float) -> None:
    """Scale the output-embedding rows of `token_ids` (stop tokens): the model then emits
    them early at page-dependent steps, so tests see rows of one batch stop at different times."""
    import torch
    if not factor or factor == 1.0:
        return
    with torch.no_grad():
        out = model.get_output_embeddings().weight
        for tid in token_ids:
            out[tid].mul_(factor)


def _qwen_text_token_ids(ids: dict[str, int]) -> dict[str, int]:
    return dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def _qwen_vision_token_ids(ids: dict[str, int]) -> dict[str, int]:
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def _qwen_generation(ids: dict[str, int]) -> dict:
    return dict(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
                bos_token_id=ids["<|endoftext|>"], do_sample=False)


def build_qwen2_vl(folder: Path, seed: int = 0, init_std: float = 0.3, eos_boost: float = 0.0) -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, Qwen2VLVideoProcessor

    _seed(seed)
    tokenizer, ids = qwen_vl_tokenizer()
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1000000.0},
            **_qwen_text_token_ids(ids), tie_word_embeddings=True,
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        **_qwen_vision_token_ids(ids), tie_word_embeddings=True,
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    _randomize(model, init_std)
    _boost(model, [ids["<|im_end|>"]], eos_boost)
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64}   # small budget: <= 64 image tokens
    processor = qwen_vl_processor(Qwen2VLProcessor, Qwen2VLVideoProcessor, tokenizer, QWEN2_VL_CHAT_TEMPLATE,
                                size=size, patch_size=14, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return _finish(folder, model, processor, _qwen_generation(ids))


def build_qwen3_vl(folder: Path, seed: int = 0, init_std: float = 0.3, eos_boost: float = 0.0) -> Path:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    _seed(seed)
    tokenizer, ids = qwen_vl_tokenizer()
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True,
                             "rope_theta": 5000000.0},
            **_qwen_text_token_ids(ids), tie_word_embeddings=True,
        ),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        **_qwen_vision_token_ids(ids), tie_word_embeddings=True,
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    _randomize(model, init_std)
    _boost(model, [ids["<|im_end|>"]], eos_boost)
    size = {"shortest_edge": 64 * 64, "longest_edge": 32 * 32 * 64}
    processor = qwen_vl_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, tokenizer, QWEN3_VL_CHAT_TEMPLATE,
                                size=size, patch_size=16, image_mean=list(HALF_MEAN), image_std=list(HALF_STD))
    return _finish(folder, model, processor, _qwen_generation(ids))


def build_got_ocr(folder: Path, seed: int = 0, init_std: float = 0.3, eos_boost: float = 0.0) -> Path:
    """GOT-OCR2 with a 256-px SAM input (16 image tokens per view instead of 256)."""
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration, GotOcr2ImageProcessor, GotOcr2Processor

    _seed(seed)
    tokenizer = got_ocr_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GOT_SPECIALS}
    config = GotOcr2Config(
        vision_config=dict(hidden_size=16, output_channels=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=256, patch_size=16, window_size=4, global_attn_indexes=[], mlp_dim=32),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"]),
        image_token_index=ids["<imgpad>"], image_seq_length=16, tie_word_embeddings=True,
    )
    model = GotOcr2ForConditionalGeneration(config).eval()
    _randomize(model, init_std)
    _boost(model, [ids["<|im_end|>"]], eos_boost)
    image_processor = GotOcr2ImageProcessor(size={"height": 256, "width": 256})
    processor = GotOcr2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return _finish(folder, model, processor, dict(
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"], do_sample=False))


def build_deepseek_ocr2(folder: Path, seed: int = 0, init_std: float = 0.3, eos_boost: float = 0.0) -> Path:
    """DeepSeek-OCR-2 with the real 1024/768 views (the model hard-codes 256/144 queries)."""
    from transformers import (DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration,
                              DeepseekOcr2ImageProcessor, DeepseekOcr2Processor)

    _seed(seed)
    tokenizer = deepseek_tokenizer()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    config = DeepseekOcr2Config(
        vision_config=dict(
            sam_config=dict(hidden_size=16, output_channels=16, num_hidden_layers=1, num_attention_heads=2,
                            image_size=1024, patch_size=16, window_size=8, global_attn_indexes=[], mlp_dim=32,
                            downsample_channels=[16, 32]),
            encoder_config=dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
            n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16,
            mlp_layer_types=["dense", "sparse"], bos_token_id=0, eos_token_id=1, pad_token_id=2,
        ),
        image_token_id=image_id,
    )
    model = DeepseekOcr2ForConditionalGeneration(config).eval()
    _randomize(model, init_std)
    _boost(model, [1], eos_boost)
    image_processor = DeepseekOcr2ImageProcessor()
    processor = DeepseekOcr2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return _finish(folder, model, processor, dict(eos_token_id=1, pad_token_id=2, bos_token_id=0, do_sample=False))


BUILDERS: dict[str, Callable[..., Path]] = {
    "qwen_vl_2b": build_qwen2_vl,
    "qwen3_vl_2b": build_qwen3_vl,
    "got_ocr_hf": build_got_ocr,
    "deepseek_ocr2": build_deepseek_ocr2,
}


def build_tiny_checkpoint(name: str, folder, seed: int = 0, init_std: float = 0.3, eos_boost: float = 0.0) -> Path:
    """Write a tiny random-weight checkpoint of model `name` into `folder`; return the folder.

    `init_std` 0.3 gives varied outputs; a small one (0.05) gives a model that falls into
    repetition loops at once (useful for loop-guard tests).
    """
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"no tiny checkpoint builder for {name!r}; known: {', '.join(BUILDERS)}") from None
    folder = Path(folder)
    builder(folder, seed=seed, init_std=init_std, eos_boost=eos_boost)
    meta = {"model": name, "seed": seed, "init_std": init_std, "eos_boost": eos_boost, "tiny_random": True}
    (folder / "chatvlm_tiny.json").write_text(json.dumps(meta) + "\n")
    return folder


# --------------------------------------------------------------------------- reduced synthetic configs

# Options a model needs beside its reduced config to stay fast on a CPU: DeepSeek-OCR's
# "small" mode reads one 640-px view instead of tiles.
SYNTHETIC_CPU_OPTIONS: dict[str, dict[str, Any]] = {"deepseek_ocr": {"mode": "small"}}


def tiny_synthetic_configs() -> dict[str, dict[str, Any]]:
    """{model name: config.json dict}: the seven VLMs at a few thousand parameters, for
    `bench --synthetic --synthetic-config NAME=FILE` on a CPU (the full-size configs take
    minutes and gigabytes there). Each keeps its architecture and special tokens, so the
    recipe, processor, backend and decoder code is the full-size run's."""
    from .models.deepseek_ocr import official_config_dict
    from .models.dots_ocr.testing import config_dict as dots_config
    from .models.phi3_vision.testing import tiny_config as phi3_config

    small_text = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return {
        "qwen_vl_2b": {
            "model_type": "qwen2_vl", "tie_word_embeddings": True,
            "text_config": {**small_text, "tie_word_embeddings": True,
                            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1],
                                                "rope_theta": 1000000.0}},
            "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        },
        "qwen3_vl_2b": {
            "model_type": "qwen3_vl", "tie_word_embeddings": True,
            "text_config": {**small_text, "model_type": "qwen3_vl_text", "head_dim": 8, "tie_word_embeddings": True,
                            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1],
                                                "mrope_interleaved": True, "rope_theta": 5000000.0}},
            "vision_config": {"model_type": "qwen3_vl", "depth": 2, "hidden_size": 32, "intermediate_size": 64,
                              "num_heads": 2, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                              "out_hidden_size": 32, "num_position_embeddings": 64,
                              "deepstack_visual_indexes": [0]},
        },
        "got_ocr_hf": {   # 256-px SAM view: 16 image tokens (the recipe's processor follows image_size)
            "model_type": "got_ocr2", "image_seq_length": 16, "tie_word_embeddings": True,
            "text_config": {**small_text, "model_type": "qwen2", "tie_word_embeddings": True},
            "vision_config": {"model_type": "got_ocr2_vision", "hidden_size": 16, "output_channels": 16,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 256,
                              "patch_size": 16, "window_size": 4, "global_attn_indexes": [], "mlp_dim": 32},
        },
        "deepseek_ocr2": {
            "model_type": "deepseek_ocr2",
            "text_config": {**small_text, "num_key_value_heads": 4, "max_position_embeddings": 8192,
                            "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
                            "moe_intermediate_size": 16, "mlp_layer_types": ["dense", "sparse"],
                            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
            "vision_config": {
                "sam_config": {"hidden_size": 16, "output_channels": 16, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "image_size": 1024, "patch_size": 16, "window_size": 8,
                               "global_attn_indexes": [], "mlp_dim": 32, "downsample_channels": [16, 32]},
                "encoder_config": {"vocab_size": 16, "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                                   "max_position_embeddings": 2048},
            },
        },
        "dots_ocr": dots_config(vocab_size=1000),
        "phi3_vision": phi3_config(),
        "deepseek_ocr": official_config_dict(
            vocab_size=129280, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, sam_width=16,
            sam_layers=2, sam_heads=1, sam_global_attn_indexes=(1,), sam_downsample_channels=(16, 32),
            clip_layers=1, clip_heads=2),
    }


def write_tiny_synthetic_configs(folder, models=None) -> dict[str, dict[str, Any]]:
    """Write each model's reduced config as folder/<model>.json; return {model: {"config":
    path, "options": the -O options it needs on a CPU}}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, config in tiny_synthetic_configs().items():
        if models is None or name in models:
            path = folder / f"{name}.json"
            path.write_text(json.dumps(config), encoding="utf-8")
            written[name] = {"config": str(path), "options": dict(SYNTHETIC_CPU_OPTIONS.get(name, {}))}
    return written


if __name__ == "__main__":
    # python -m chatvlm.testing synthetic-configs DIR [MODEL ...]: the GPU check's dry run gets its
    # reduced configs this way, in a process of its own (the package never imports a test builder).
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "synthetic-configs":
        sys.exit("usage: python -m chatvlm.testing synthetic-configs DIR [MODEL ...]")
    print(json.dumps(write_tiny_synthetic_configs(sys.argv[2], sys.argv[3:] or None)))
