"""The files of a dots.ocr checkpoint folder that chatvlm writes itself when the hub's are not
here: the preprocessor settings and a tokenizer with the official special tokens.

`bench --synthetic` (chatvlm.synthetic) writes them beside the full-size config to build the
real architecture with random weights; the test checkpoints (testing.py) write them at small
sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...model_constants import CLIP_MEAN, CLIP_STD
from .processing import IMAGE_PAD, MAX_PIXELS, MIN_PIXELS


def preprocessor_config(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> dict[str, Any]:
    """preprocessor_config.json as the checkpoint ships it (14-px patches merged 2x2, CLIP
    normalisation), at the official pixel budget unless told otherwise."""
    return {
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "patch_size": 14,
        "temporal_patch_size": 1,
        "merge_size": 2,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "DotsVLProcessor",
    }


# The official special tokens (reference §3) at their official ids.
SPECIAL_TOKENS = {
    "<|endoftext|>": 151643,
    "<|video_pad|>": 151656,
    "<|imgpad|>": 151665,
    "<|img|>": 151666,
    "<|endofimg|>": 151667,
    "<|user|>": 151670,
    "<|endofuser|>": 151671,
    "<|assistant|>": 151672,
    "<|endofassistant|>": 151673,
    "[PAD]": 151680,
}


def build_byte_tokenizer(folder: str | Path) -> Path:
    """Write a real (fast, byte-level) tokenizer into a checkpoint folder: Qwen2's byte-level
    pre-tokenizer and decoder over the 256 byte symbols (no merges, so any text encodes),
    plus dots.ocr's special tokens. With the official vocabulary size they sit at their
    official ids; a smaller test vocabulary (config.json in the folder) gets them at its top,
    with <|imgpad|> at the config's image_token_id. Ids the vocabulary lacks decode to
    nothing, so random-weight models still decode."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    vocab_size = int(cfg.get("vocab_size", 151936))
    specials = dict(SPECIAL_TOKENS)
    if vocab_size <= max(specials.values()):
        image_id = int(cfg.get("image_token_id", vocab_size - 1))
        free = [i for i in range(vocab_size - 1, 255, -1) if i != image_id]
        specials = {tok: (image_id if tok == IMAGE_PAD else free.pop(0)) for tok in specials}
    vocab = {sym: i for i, sym in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
    return folder
