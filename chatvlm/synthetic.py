"""Synthetic checkpoints for `chatvlm bench --synthetic`: real architecture, random weights.

`prepare_checkpoint(name, config, folder)` writes a checkpoint folder WITHOUT weights:
the model's full config (as given, e.g. `ModelSpec.full_config`) and a processor with the
real preprocessing (the model's own image-processor class and parameters, so a page
becomes as many image tokens as the real model would see). The real tokenizer is not
available offline, so the text side uses a byte-level tokenizer carrying the model's
special tokens (chatvlm.byte_tokenizer), and the config's special-token ids are pointed
at that tokenizer's ids (vocabulary size unchanged, so the compute is the real model's).
Prompts therefore tokenise to a few dozen more tokens than with the real tokenizer; image
tokens, which dominate, are exact.

Every folder carries SYNTHETIC_MARKER; `chatvlm.weights` makes the folder (`locate` with
`BackendOptions.synthetic`) and, seeing the marker, builds the model from it with random
weights initialised directly on the target device.

The models chatvlm ports itself (dots_ocr, phi3_vision, deepseek_ocr) have no transformers
config or processor class: their recipes write the files the port's own loaders read
(config.json as the hub ships it, and from the port's synthetic module the preprocessor
settings and a byte-level tokenizer with the official special-token ids), and
chatvlm.weights builds the port with its `build_from_config`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .model_constants import CLIP_MEAN, CLIP_STD, HALF_MEAN, HALF_STD

# The file that marks a checkpoint folder as weightless (random weights built from its config).
SYNTHETIC_MARKER = "SYNTHETIC_RANDOM_WEIGHTS.txt"



def _remap(config: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    """Point the token-id keys (top level, and text_config's) at the tokenizer's ids."""
    config = json.loads(json.dumps(config))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    for key, value in ids.items():
        config[key] = value
        if text is not None and (key in text or key in ("bos_token_id", "eos_token_id", "pad_token_id")):
            text[key] = value
    return config


def _qwen(config: dict[str, Any], version: int):
    import transformers

    from .byte_tokenizer import QWEN2_VL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE, qwen_vl_tokenizer

    tokenizer, ids = qwen_vl_tokenizer()
    config = _remap(config, {
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
    })
    if version == 2:   # Qwen2-VL-2B-Instruct's preprocessor_config.json
        processor = qwen_vl_processor(transformers.Qwen2VLProcessor, transformers.Qwen2VLVideoProcessor, tokenizer,
                                      QWEN2_VL_CHAT_TEMPLATE, size={"shortest_edge": 3136, "longest_edge": 12845056},
                                      patch_size=14, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    else:              # Qwen3-VL-2B-Instruct's preprocessor_config.json
        processor = qwen_vl_processor(transformers.Qwen3VLProcessor, transformers.Qwen3VLVideoProcessor, tokenizer,
                                      QWEN3_VL_CHAT_TEMPLATE, size={"shortest_edge": 65536, "longest_edge": 16777216},
                                      patch_size=16, image_mean=list(HALF_MEAN), image_std=list(HALF_STD))
    return config, processor


def qwen_vl_processor(processor_cls, video_cls, tokenizer, chat_template: str, **image_kw):
    """A Qwen-VL processor whose image and video processors share the settings `image_kw`
    (size, patch size, mean/std); temporal patches of 2 merged 2x2, as in both models."""
    from transformers import Qwen2VLImageProcessor

    kw = dict(temporal_patch_size=2, merge_size=2, **image_kw)
    return processor_cls(image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tokenizer,
                         video_processor=video_cls(**kw), chat_template=chat_template)


def _got(config: dict[str, Any]):
    from transformers import GotOcr2ImageProcessor, GotOcr2Processor

    from .byte_tokenizer import got_ocr_tokenizer

    tokenizer = got_ocr_tokenizer()
    tid = tokenizer.convert_tokens_to_ids
    config = _remap(config, {"image_token_index": tid("<imgpad>"), "bos_token_id": tid("<|endoftext|>"),
                             "eos_token_id": tid("<|endoftext|>"), "pad_token_id": tid("<|endoftext|>")})
    side = int((config.get("vision_config") or {}).get("image_size", 1024))
    processor = GotOcr2Processor(image_processor=GotOcr2ImageProcessor(size={"height": side, "width": side}),
                                 tokenizer=tokenizer)
    return config, processor


def _deepseek_ocr2(config: dict[str, Any]):
    from transformers import DeepseekOcr2ImageProcessor, DeepseekOcr2Processor

    from .byte_tokenizer import deepseek_tokenizer

    tokenizer = deepseek_tokenizer()
    config = _remap(config, {"image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
                             "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2})
    processor = DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessor(), tokenizer=tokenizer)
    return config, processor


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _dots_ocr(config: dict[str, Any], folder: Path) -> None:
    """config.json as given; the official preprocessor settings (pixel budget 3136..11,289,600,
    14-px patches merged 2x2, CLIP normalisation); dots' special tokens at their official ids."""
    from .models.dots_ocr.synthetic import build_byte_tokenizer, preprocessor_config

    _write_json(folder / "config.json", config)
    _write_json(folder / "preprocessor_config.json", preprocessor_config())
    build_byte_tokenizer(folder)   # reads config.json's vocab size: official ids at full size


def _phi3_vision(config: dict[str, Any], folder: Path) -> None:
    """config.json as given; the official image processor (HD transform, 336-px crops); a
    byte-level tokenizer with the official special ids (at vocab 32064 they are the real ones)."""
    from .models.phi3_vision import Phi3VImageProcessor
    from .models.phi3_vision.synthetic import build_byte_tokenizer

    build_byte_tokenizer(folder, vocab_size=int(config.get("vocab_size", 32064)))
    _write_json(folder / "config.json", config)
    _write_json(folder / "preprocessor_config.json", Phi3VImageProcessor().to_dict())


def _deepseek_ocr(config: dict[str, Any], folder: Path) -> None:
    """config.json as given; the processor settings (16-px patches, 4x downsampling, mean/std
    0.5); the official prompts keep their real ids without a tokenizer, so a byte-level one
    (folder decode_tokenizer/) only decodes the random tokens."""
    from .models.deepseek_ocr.synthetic import PROCESSOR_CONFIG, build_byte_tokenizer

    _write_json(folder / "config.json", config)
    _write_json(folder / "processor_config.json", PROCESSOR_CONFIG)
    vocab = int(config.get("vocab_size") or (config.get("language_config") or {}).get("vocab_size") or 129280)
    build_byte_tokenizer(folder / "decode_tokenizer", vocab_size=vocab)


# Models chatvlm ports itself: the recipe writes the checkpoint folder (no weights) directly.
PORT_RECIPES: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "dots_ocr": _dots_ocr,
    "phi3_vision": _phi3_vision,
    "deepseek_ocr": _deepseek_ocr,
}

RECIPES: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], Any]]] = {
    "qwen_vl_2b": lambda c: _qwen(c, 2),
    "qwen3_vl_2b": lambda c: _qwen(c, 3),
    "got_ocr_hf": _got,
    "deepseek_ocr2": _deepseek_ocr2,
}


def prepare_checkpoint(name: str, config: dict[str, Any], folder: Path) -> Path:
    """Write config.json + processor files (no weights) for model `name` into `folder`."""
    from transformers import AutoConfig

    from .errors import ModelUnavailableError
    from .i18n import _

    if name not in RECIPES and name not in PORT_RECIPES:
        raise ModelUnavailableError(_("not available yet: no synthetic recipe for model '{name}'").format(name=name))
    if not config or "model_type" not in config:
        raise ModelUnavailableError(_("model '{name}': the synthetic config needs a model_type").format(name=name))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if name in PORT_RECIPES:
        PORT_RECIPES[name](json.loads(json.dumps(config)), folder)
    else:
        config, processor = RECIPES[name](config)
        fields = {k: v for k, v in config.items() if k != "model_type"}
        AutoConfig.for_model(config["model_type"], **fields).save_pretrained(folder)
        processor.save_pretrained(folder)
    (folder / SYNTHETIC_MARKER).write_text(
        "Synthetic checkpoint built by chatvlm bench --synthetic: config and processor only; weights are random.\n")
    return folder


# --------------------------------------------------------------------------- tokens per page

def parse_token_range(value: str) -> tuple[int, int]:
    """`--tokens`: "N" (every page N tokens) or "A-B" (each page its own count in A..B)."""
    text = str(value).strip()
    low, sep, high = text.partition("-")
    try:
        lo = int(low)
        hi = int(high) if sep else lo
    except ValueError:
        raise ValueError(f"--tokens takes N or A-B (whole numbers), got {value!r}") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"--tokens needs 1 <= A <= B, got {value!r}")
    return lo, hi


def page_token_target(doc_key: str, page: Any, low: int, high: int, seed: int) -> int:
    """The token count a synthetic page generates: uniform in low..high, drawn from the seed and
    the page's identity, so a page gets the same count in every model, repeat and batch order."""
    import random

    if low >= high:
        return int(low)
    return random.Random(f"{seed}:{doc_key}:{page}").randint(int(low), int(high))
