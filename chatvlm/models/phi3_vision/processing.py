"""Phi-3.5-vision image processor and prompt builder (official behaviour, own code).

Image: convert to RGB; transpose portrait images; pick the largest `scale` with
`scale * ceil(scale / ratio) <= num_crops`; PIL-bilinear resize to width `scale*336`;
pad the height to a multiple of 336 with white (centred); transpose back; /255 and
CLIP-normalise; global view = bicubic 336x336 of the normalised HD image; sub-crops
row-major; zero views up to `num_crops + 1`.

Prompt: `<|user|>\\n<|image_1|>\\n{prompt}<|end|>\\n<|assistant|>\\n`. The text is split on
`<|image_N|>`; each chunk is tokenised on its own (so each gets the tokenizer's BOS) and
`num_img_tokens` copies of -N are put where the tag was. Batches are padded on the LEFT.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...collate import pad_left
from ...model_constants import CLIP_MEAN, CLIP_STD, PHI3_VISION_OCR_PROMPTS
from .image_embedding import CROP, num_image_tokens

DEFAULT_NUM_CROPS = 4
# Model card: num_crops=4 for multi-frame, 16 for a single frame. A dense page needs 16:
# with 4, an A4 page is read at an effective 672 px.
OCR_NUM_CROPS = 16

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
PROMPT_TEMPLATE = "<|user|>\n{image_tags}{prompt}<|end|>\n<|assistant|>\n"
STOP_TOKENS = ("<|end|>", "<|endoftext|>", "</s>")

# No official OCR prompt exists for Phi-3.5-vision; these two are ours.
OCR_PROMPTS = PHI3_VISION_OCR_PROMPTS


def format_prompt(prompt: str, num_images: int = 1) -> str:
    """The official chat format with `<|image_1|>` ... `<|image_n|>` before the question."""
    tags = "".join(f"<|image_{i}|>\n" for i in range(1, num_images + 1))
    return PROMPT_TEMPLATE.format(image_tags=tags, prompt=prompt)


def hd_grid(width: int, height: int, num_crops: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, padded_w, padded_h) of the HD image for an input of width x height."""
    transposed = width < height
    long_side, short_side = (height, width) if transposed else (width, height)
    ratio = long_side / short_side
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    if scale < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    new_long = int(scale * CROP)
    new_short = int(new_long / ratio)
    padded_short = int(math.ceil(new_short / CROP) * CROP)
    if transposed:
        return new_short, new_long, padded_short, new_long
    return new_long, new_short, new_long, padded_short


class Phi3VImageProcessor:
    """Pixels and placeholder counts exactly as the official `Phi3VImageProcessor`."""

    def __init__(
        self,
        num_crops: int = DEFAULT_NUM_CROPS,
        num_img_tokens: int = 144,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        do_convert_rgb: bool = True,
        tokenizer: Any = None,
    ):
        if num_img_tokens != 144:
            raise ValueError("num_img_tokens must be 144 (12x12 merged tokens per crop)")
        self.num_crops = int(num_crops)
        self.num_img_tokens = num_img_tokens
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)
        self.do_convert_rgb = do_convert_rgb
        self.tokenizer = tokenizer

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> "Phi3VImageProcessor":
        keys = ("num_crops", "num_img_tokens", "image_mean", "image_std", "do_convert_rgb")
        kwargs = {k: d[k] for k in keys if k in d}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "do_convert_rgb": self.do_convert_rgb,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "image_processor_type": "Phi3VImageProcessor",
            "num_crops": self.num_crops,
            "num_img_tokens": self.num_img_tokens,
            "processor_class": "Phi3VProcessor",
        }

    # ---- images ------------------------------------------------------------------

    def hd_image(self, image: Image.Image, num_crops: int | None = None) -> Image.Image:
        """Resize and white-pad to whole 336-px crops (the official HD_transform)."""
        num_crops = num_crops or self.num_crops
        if self.do_convert_rgb or image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        transposed = width < height
        if transposed:
            # Work in landscape like upstream: PIL resizes in two rounded passes, so
            # resizing the transposed image is not bit-identical to resizing the original.
            image = image.transpose(Image.TRANSPOSE)
        new_w, new_h, pad_w, pad_h = hd_grid(*image.size, num_crops)
        image = image.resize((new_w, new_h), Image.BILINEAR)
        top = int((pad_h - new_h) / 2)
        canvas = Image.new("RGB", (pad_w, pad_h), (255, 255, 255))
        canvas.paste(image, (0, top))
        if transposed:
            canvas = canvas.transpose(Image.TRANSPOSE)
        return canvas

    def normalize(self, image: Image.Image) -> torch.Tensor:
        """uint8 RGB -> [3, H, W] float32, (x/255 - mean)/std in the torchvision order."""
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
        return x.sub(mean).div(std)

    def preprocess_one(self, image: Image.Image, num_crops: int | None = None) -> tuple[torch.Tensor, tuple[int, int], int]:
        """-> (views [num_crops+1, 3, 336, 336], (height, width) of the HD image, placeholder count)."""
        num_crops = num_crops or self.num_crops
        hd = self.normalize(self.hd_image(image, num_crops))
        _, h, w = hd.shape
        h_crop, w_crop = h // CROP, w // CROP
        global_view = F.interpolate(hd[None], size=(CROP, CROP), mode="bicubic", align_corners=False)
        crops = hd.reshape(3, h_crop, CROP, w_crop, CROP).permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)
        views = torch.cat([global_view, crops], dim=0)
        if views.shape[0] < num_crops + 1:
            pad = views.new_zeros(num_crops + 1 - views.shape[0], 3, CROP, CROP)
            views = torch.cat([views, pad], dim=0)
        return views, (h, w), num_image_tokens(h_crop, w_crop)

    def preprocess(self, images: Sequence[Image.Image], num_crops: int | None = None) -> dict[str, Any]:
        """-> {"pixel_values": [n, V, 3, 336, 336], "image_sizes": [n, 2] (h, w), "num_img_tokens": [n]}."""
        if isinstance(images, Image.Image):
            images = [images]
        out = [self.preprocess_one(im, num_crops) for im in images]
        return {
            "pixel_values": _stack_views([v for v, _, _ in out]),
            "image_sizes": torch.tensor([list(s) for _, s, _ in out], dtype=torch.long).reshape(-1, 2),
            "num_img_tokens": [n for _, _, n in out],
        }

    # ---- text --------------------------------------------------------------------

    def prompt_ids(self, prompt: str, num_img_tokens: Sequence[int], tokenizer: Any = None) -> list[int]:
        """Token ids of one prompt with image tags expanded to -N placeholder runs."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("a tokenizer is needed to build input_ids")
        tags = [int(m) for m in IMAGE_TAG.findall(prompt)]
        if tags != list(range(1, len(tags) + 1)):
            # Images fill placeholder runs in order, so tags must read <|image_1|>, <|image_2|>, ...
            raise ValueError(f"image tags must be <|image_1|>..<|image_n|> in order, got {tags}")
        if len(tags) != len(num_img_tokens):
            raise ValueError(f"prompt has {len(tags)} image tags but {len(num_img_tokens)} images were given")
        chunks = IMAGE_TAG.split(prompt)[::2]  # split() also returns the captured numbers
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            ids.extend(tokenizer(chunk).input_ids)  # add_special_tokens: BOS per chunk, as upstream
            if i < len(tags):
                ids.extend([-tags[i]] * num_img_tokens[i])
        return ids

    def build_batch(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]],
        tokenizer: Any = None,
        num_crops: int | None = None,
        pad_token_id: int | None = None,
    ) -> dict[str, Any]:
        """Model inputs for a batch of full prompts (already in chat format) and their images.

        `images[i]` is one image or a list of images for `prompts[i]`. Rows are LEFT-padded
        with `pad_token_id` (default: the tokenizer's pad token), attention_mask 0 on pads.
        pixel_values hold the images of all rows in order, zero views padding them to a
        common view count. Returns input_ids, attention_mask, pixel_values, image_sizes.
        """
        tokenizer = tokenizer or self.tokenizer
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image entries")
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            raise ValueError("no pad_token_id: pass one or use a tokenizer with a pad token")
        rows, views, sizes = [], [], []
        for prompt, row_images in zip(prompts, images):
            if isinstance(row_images, Image.Image):
                row_images = [row_images]
            done = [self.preprocess_one(im, num_crops) for im in row_images]
            rows.append(self.prompt_ids(prompt, [n for _, _, n in done], tokenizer))
            for v, size, _ in done:
                views.append(v)
                sizes.append(list(size))
        # Exactly the model's inputs, so `model.generate(**batch, ...)` works as is.
        batch: dict[str, Any] = pad_left(rows, pad_token_id)
        if views:
            batch["pixel_values"] = _stack_views(views)
            batch["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
        return batch

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        tokenizer: Any = None,
        num_crops: int | None = None,
        pad_token_id: int | None = None,
        return_tensors: str = "pt",
    ) -> dict[str, Any]:
        """`proc(images=[...])` -> pixel_values/image_sizes/num_img_tokens;
        `proc(images=..., text=[...], tokenizer=tok)` -> a left-padded batch (see `build_batch`)."""
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        if text is None:
            if images is None:
                raise ValueError("pass images and/or text")
            return self.preprocess(images, num_crops)
        if isinstance(text, str):
            # One prompt with all given images, like the official processor.
            text = [text]
            images = [list(images) if images is not None else []]
        return self.build_batch(text, images if images is not None else [[] for _ in text], tokenizer, num_crops, pad_token_id)

    # ---- generation helpers --------------------------------------------------------

    def stop_token_ids(self, tokenizer: Any = None) -> list[int]:
        """Ids of `<|end|>`, `<|endoftext|>` and `</s>` in this tokenizer (the model ends a
        turn with `<|end|>`; the shipped configs list other ids, see reference notes)."""
        tokenizer = tokenizer or self.tokenizer
        ids = []
        for tok in STOP_TOKENS:
            i = tokenizer.convert_tokens_to_ids(tok)
            if isinstance(i, int) and i >= 0 and i != getattr(tokenizer, "unk_token_id", None) and i not in ids:
                ids.append(i)
        return ids

    def decode(self, new_ids: torch.Tensor | Sequence[int], tokenizer: Any = None) -> str:
        """Text of generated ids (prompt already trimmed), as in the model card."""
        tokenizer = tokenizer or self.tokenizer
        return tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _stack_views(views: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-image views, zero-padding to the largest view count (the official padding)."""
    most = max(v.shape[0] for v in views)
    padded = [v if v.shape[0] == most else torch.cat([v, v.new_zeros(most - v.shape[0], *v.shape[1:])]) for v in views]
    return torch.stack(padded, dim=0)


def processor_from_pretrained(
    path: str | Path, num_crops: int | None = None, tokenizer: Any = None
) -> Phi3VImageProcessor:
    """Processor from a checkpoint folder's `preprocessor_config.json` (defaults if absent).

    `num_crops` overrides the file (4 in the official file; 16 is the advice for one dense page).
    """
    path = Path(path)
    file = path / "preprocessor_config.json" if path.is_dir() else path
    d: dict[str, Any] = {}
    if file.is_file():
        with open(file, encoding="utf-8") as fh:
            d = json.load(fh)
    proc = Phi3VImageProcessor.from_dict(d, num_crops=num_crops)
    proc.tokenizer = tokenizer
    return proc


def load_tokenizer(path: str | Path) -> Any:
    """The checkpoint's tokenizer (`tokenizer.json`) through transformers' generic fast
    tokenizer, left padding. Loaded by class, never through AutoTokenizer: that reads
    config.json, whose `auto_map` points at the remote code, and makes transformers stop
    and ask whether to run it."""
    from transformers import PreTrainedTokenizerFast

    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return PreTrainedTokenizerFast.from_pretrained(str(path), padding_side="left")
