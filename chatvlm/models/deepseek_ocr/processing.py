"""Our own DeepSeek-OCR (v1) processor: resolution modes, tiling, prompt -> model inputs.

Reproduces what the official ``infer()`` builds (checked against the fixture): the five
resolution modes, the Gundam tiling grid, the pixel normalisation, and the image-token run
(one ``<image>`` id per slot, including the slots the model fills with ``image_newline`` and
``view_seperator``). Prompts use the "plain" format: ``BOS + prompt.strip()`` with the
``<image>`` marker expanded in place; no chat roles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ...collate import collate_left
from ...model_constants import (DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_FIRST_SPECIAL_ID, DEEPSEEK_PAD,
                                DEEPSEEK_PROMPT_FREE_OCR, DEEPSEEK_PROMPT_MARKDOWN, DEEPSEEK_SPECIALS, HALF_MEAN,
                                HALF_STD)

PROMPT_MARKDOWN = DEEPSEEK_PROMPT_MARKDOWN
PROMPT_FREE_OCR = DEEPSEEK_PROMPT_FREE_OCR
PROMPTS = {"markdown": PROMPT_MARKDOWN, "layout": PROMPT_MARKDOWN, "text": PROMPT_FREE_OCR}
IMAGE_TOKEN = "<image>"

REAL_VOCAB_SIZE = 129280
# Special-token ids of the real DeepSeek-OCR tokenizer.
OFFICIAL_TOKEN_IDS = {
    DEEPSEEK_BOS: 0, DEEPSEEK_EOS: 1, DEEPSEEK_PAD: 2,
    **{token: DEEPSEEK_FIRST_SPECIAL_ID + i for i, token in enumerate(DEEPSEEK_SPECIALS)},   # <image> = 128815
}
# Real-tokenizer ids of the text of the official prompts, so a checkpoint folder without
# its 4 MB tokenizer.json can still encode them. Any other text needs the tokenizer.
_OFFICIAL_TEXT_IDS: dict[str, list[int]] = {
    "": [],
    "\n": [201],
    "\nFree OCR.": [201, 21431, 126041, 16],
    "\n<|grounding|>Convert the document to markdown.": [201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16],
}


@dataclass(frozen=True)
class ResolutionMode:
    base_size: int   # global view side in crop mode
    image_size: int  # view side without crop mode; tile side with it
    crop_mode: bool


MODES = {
    "tiny": ResolutionMode(512, 512, False),
    "small": ResolutionMode(640, 640, False),
    "base": ResolutionMode(1024, 1024, False),
    "large": ResolutionMode(1280, 1280, False),
    "gundam": ResolutionMode(1024, 640, True),
}
DEFAULT_MODE = "gundam"


@dataclass
class PreparedImage:
    crops: torch.Tensor        # [n_tiles,3,T,T], or the official zero placeholder [1,3,S,S]
    global_view: torch.Tensor  # [1,3,S,S]
    spatial_crop: tuple[int, int]  # (tiles across, tiles down); (1, 1) without tiles
    num_tokens: int


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """(w, h) tile grids with min_num <= w*h <= max_num, ordered like the reference (a set
    sorted by tile count; ties keep CPython's deterministic set order for int tuples)."""
    grids = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_num <= i * j <= max_num}
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, tile: int = 640, min_num: int = 2, max_num: int = 9) -> tuple[int, int]:
    """Grid whose aspect ratio is closest to the image's; on a tie the later (larger) grid
    wins if the image has more than half its pixel area."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for w, h in candidate_grids(min_num, max_num):
        diff = abs(aspect - w / h)
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * w * h:
            best = (w, h)
    return best


class DeepseekOCRProcessor:
    def __init__(self, tokenizer: Any = None, *, vocab_size: int | None = None, image_token: str = IMAGE_TOKEN,
                 bos_token_id: int = 0, eos_token_id: int = 1, pad_token_id: int = 2, patch_size: int = 16,
                 downsample_ratio: int = 4, image_mean: Sequence[float] = HALF_MEAN,
                 image_std: Sequence[float] = HALF_STD, min_crops: int = 2, max_crops: int = 9,
                 pad_color: tuple[int, int, int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.image_token = image_token
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.pad_token_id = pad_token_id
        self.patch_size, self.downsample_ratio = patch_size, downsample_ratio
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.min_crops, self.max_crops = min_crops, max_crops
        # The reference pads with the mean colour: int(0.5 * 255) = 127.
        self.pad_color = pad_color or tuple(int(m * 255) for m in self.image_mean)
        if tokenizer is not None:
            self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        else:
            self.image_token_id = self._map_real_id(OFFICIAL_TOKEN_IDS[image_token])

    # -- ids ----------------------------------------------------------------------------------
    def _map_real_id(self, real_id: int) -> int:
        # Tiny test checkpoints in the official format use real_id % vocab_size.
        if self.vocab_size and self.vocab_size < REAL_VOCAB_SIZE:
            return real_id % self.vocab_size
        return real_id

    def encode_text(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        if text in _OFFICIAL_TEXT_IDS:
            return [self._map_real_id(i) for i in _OFFICIAL_TEXT_IDS[text]]
        raise ValueError("this processor has no tokenizer (no tokenizer.json in the checkpoint folder); "
                         f"only the official prompts can be encoded, not {text!r}")

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        if self.tokenizer is None:
            raise ValueError("decoding needs a tokenizer")
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # -- images -------------------------------------------------------------------------------
    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        # Same ops as torchvision ToTensor + Normalize, so values are bit-identical.
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (pixels - mean) / std

    def num_image_tokens(self, width: int, height: int, mode: str = DEFAULT_MODE) -> int:
        """Length of the ``<image>`` run for an (upright) image of this size, for token budgets."""
        m = MODES[mode]
        grid = (1, 1)
        if m.crop_mode and (width > m.image_size or height > m.image_size):
            grid = choose_grid(width, height, m.image_size, self.min_crops, self.max_crops)
        return self._tokens(mode, grid)

    def _tokens(self, mode: str, grid: tuple[int, int]) -> int:
        # Each view is n rows of n tokens plus a newline per row; one separator at the end.
        m = MODES[mode]
        n_global = self._queries(m.base_size if m.crop_mode else m.image_size)
        tokens = n_global * (n_global + 1) + 1
        if m.crop_mode and grid != (1, 1):
            n, (w, h) = self._queries(m.image_size), grid
            tokens += (n * w + 1) * (n * h)
        return tokens

    def _queries(self, size: int) -> int:
        return math.ceil((size // self.patch_size) / self.downsample_ratio)

    def views(self, image: Image.Image,
              mode: str = DEFAULT_MODE) -> tuple[list[Image.Image], Image.Image, tuple[int, int]]:
        """The PIL views the model sees: (tiles row-major, global view, (w, h) grid)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
        m = MODES[mode]
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if not m.crop_mode:
            if m.image_size <= 640:  # small views are stretched, larger ones padded
                image = image.resize((m.image_size, m.image_size), Image.BICUBIC)
            return [], ImageOps.pad(image, (m.image_size, m.image_size), color=self.pad_color), (1, 1)
        global_view = ImageOps.pad(image, (m.base_size, m.base_size), color=self.pad_color)
        width, height = image.size
        if width <= m.image_size and height <= m.image_size:
            return [], global_view, (1, 1)
        w, h = choose_grid(width, height, m.image_size, self.min_crops, self.max_crops)
        t = m.image_size
        resized = image.resize((t * w, t * h), Image.BICUBIC)
        tiles = [resized.crop((c * t, r * t, (c + 1) * t, (r + 1) * t)) for r in range(h) for c in range(w)]
        return tiles, global_view, (w, h)

    def preprocess(self, image: Image.Image, mode: str = DEFAULT_MODE) -> PreparedImage:
        tiles, global_view, (w, h) = self.views(image, mode)
        glob = self._to_tensor(global_view)[None]
        if tiles:
            crops = torch.stack([self._to_tensor(t) for t in tiles])
        else:  # the reference's "no tiles" placeholder; the model skips all-zero crops
            crops = torch.zeros_like(glob)
        return PreparedImage(crops, glob, (w, h), self._tokens(mode, (w, h)))

    # -- prompts ------------------------------------------------------------------------------
    def __call__(self, images: Sequence[Image.Image] | Image.Image | None = None, prompt: str = PROMPT_MARKDOWN,
                 mode: str = DEFAULT_MODE, return_tensors: str = "pt") -> dict[str, Any]:
        """One sample: input_ids/attention_mask/images_seq_mask [1, L], images [(crops, global)],
        images_spatial_crop [1, 2] (w, h): exactly the model's keyword arguments."""
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images or [])
        pieces = prompt.strip().split(self.image_token)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"prompt has {len(pieces) - 1} {self.image_token} markers but {len(images)} images")
        if len(images) > 1:
            raise ValueError("one image per prompt (batch several pages as several samples)")
        ids = [self.bos_token_id]
        seq_mask = [False]
        prepared = [self.preprocess(img, mode) for img in images]
        for i, piece in enumerate(pieces):
            text_ids = self.encode_text(piece)
            ids += text_ids
            seq_mask += [False] * len(text_ids)
            if i < len(prepared):
                ids += [self.image_token_id] * prepared[i].num_tokens
                seq_mask += [True] * prepared[i].num_tokens
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "images": [(p.crops, p.global_view) for p in prepared] or [None],
            "images_seq_mask": torch.tensor([seq_mask], dtype=torch.bool),
            "images_spatial_crop": torch.tensor([list(p.spatial_crop) for p in prepared] or [[1, 1]], dtype=torch.long),
        }

    def batch(self, images: Sequence[Image.Image], prompts: str | Sequence[str] = PROMPT_MARKDOWN,
              mode: str = DEFAULT_MODE) -> dict[str, Any]:
        """Several pages as one left-padded batch, ready for ``model.generate(**batch)``."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            raise ValueError("one prompt per image")
        return collate([self(images=[img], prompt=p, mode=mode) for img, p in zip(images, prompts)],
                       pad_token_id=self.pad_token_id)


def collate(samples: Sequence[dict[str, Any]], pad_token_id: int = 2) -> dict[str, Any]:
    """Left-pad single-sample encodings into one batch: ``images_seq_mask`` runs along the
    tokens (padded with False), ``images`` and ``images_spatial_crop`` hold one entry per row."""
    return collate_left(list(samples), pad_token_id, seq_keys=("images_seq_mask",))


def processor_from_pretrained(path: str | Path, tokenizer: Any = None, **overrides: Any) -> DeepseekOCRProcessor:
    """Processor for a checkpoint folder: ``processor_config.json`` and ``config.json`` when
    present, and its tokenizer when the folder has one (``tokenizer.json``)."""
    path = Path(path)
    kwargs: dict[str, Any] = {}
    pc = path / "processor_config.json"
    if pc.exists():
        cfg = json.loads(pc.read_text(encoding="utf-8"))
        for key in ("image_token", "patch_size", "downsample_ratio", "image_mean", "image_std"):
            if key in cfg:
                kwargs[key] = cfg[key]
    mc = path / "config.json"
    if mc.exists():
        cfg = json.loads(mc.read_text(encoding="utf-8"))
        lang = cfg.get("language_config", {})
        kwargs["vocab_size"] = cfg.get("vocab_size", lang.get("vocab_size"))
        for key in ("bos_token_id", "eos_token_id"):
            if cfg.get(key) is not None:
                kwargs[key] = cfg[key]
    if tokenizer is None and (path / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    if tokenizer is not None:
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, attr, None) is not None:
                kwargs[attr] = getattr(tokenizer, attr)
    kwargs.update(overrides)
    return DeepseekOCRProcessor(tokenizer, **kwargs)
