"""dots.ocr preprocessing and prompt building, our own implementation of the official recipe.

Images: Qwen2-VL ``smart_resize`` (factor 28) with dots' own pixel limits — read from the
checkpoint's preprocessor_config.json, defaulting to dots' 3136..11,289,600, never to
transformers' Qwen2-VL default max (~11x smaller) — PIL bicubic resize, CLIP
normalisation, then patchification into ``pixel_values`` [N, 3*1*14*14] with the 4
patches of every 2x2 merge window in consecutive rows, and ``image_grid_thw`` per image.
This reproduces the official (slow, PIL) ``Qwen2VLImageProcessor`` bit for bit.

Prompts: the official chat framing and the four official prompt modes. Each
``<|imgpad|>`` is expanded to t*h*w/merge^2 copies (one per LLM image token). Batches are
left-padded, as batched generation needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...collate import pad_left
from ...model_constants import CLIP_MEAN, CLIP_STD
from ..resize import smart_resize as qwen_smart_resize
from .configuration import EOS_TOKEN_IDS, IMAGE_TOKEN_ID

# The four official prompt modes, verbatim from rednote-hilab/dots.ocr@c3084bd
# dots_ocr/utils/prompts.py (dict_promptmode_to_prompt). Model input: must stay byte-exact
# (tests check their SHA-256). Note the trailing newlines of two of them.
PROMPTS: dict[str, str] = {
    "prompt_layout_all_en": """Please output the layout information from the PDF image, including each layout element's bbox, its category, and the corresponding text content within the bbox.

1. Bbox format: [x1, y1, x2, y2]

2. Layout Categories: The possible categories are ['Caption', 'Footnote', 'Formula', 'List-item', 'Page-footer', 'Page-header', 'Picture', 'Section-header', 'Table', 'Text', 'Title'].

3. Text Extraction & Formatting Rules:
    - Picture: For the 'Picture' category, the text field should be omitted.
    - Formula: Format its text as LaTeX.
    - Table: Format its text as HTML.
    - All Others (Text, Title, etc.): Format their text as Markdown.

4. Constraints:
    - The output text must be the original text from the image, with no translation.
    - All layout elements must be sorted according to human reading order.

5. Final Output: The entire output must be a single JSON object.
""",
    "prompt_layout_only_en": "Please output the layout information from this PDF image, including each layout's bbox and its category. The bbox should be in the format [x1, y1, x2, y2]. The layout categories for the PDF document include ['Caption', 'Footnote', 'Formula', 'List-item', 'Page-footer', 'Page-header', 'Picture', 'Section-header', 'Table', 'Text', 'Title']. Do not output the corresponding text. The layout result should be in JSON format.",
    "prompt_ocr": "Extract the text content from this image.",
    "prompt_grounding_ocr": """Extract text from the given bounding box on the image (format: [x1, y1, x2, y2]).
Bounding Box:
""",
}

IMAGE_START, IMAGE_PAD, IMAGE_END = "<|img|>", "<|imgpad|>", "<|endofimg|>"
USER, END_USER, ASSISTANT = "<|user|>", "<|endofuser|>", "<|assistant|>"

# Two official framings exist (reference §5):
#  "string": the vLLM/OpenAI path behind the published scores:
#            <|user|><|img|><|imgpad|><|endofimg|>PROMPT<|endofuser|><|assistant|>
#  "hf":     the chat template applied to list content (demo_hf.py): a leading space and no
#            user markers:  " <|img|><|imgpad|><|endofimg|>PROMPT<|assistant|>"
FRAMINGS = ("string", "hf")

# dots_ocr/utils/consts.py
MIN_PIXELS, MAX_PIXELS, IMAGE_FACTOR = 3136, 11289600, 28


def smart_resize(
    height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """dots.ocr's resize: the Qwen2-VL rule with dots' own default limits."""
    return qwen_smart_resize(height, width, factor, min_pixels, max_pixels)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent images are composited on white (as transformers' convert_to_rgb)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class DotsOCRProcessor:
    def __init__(
        self,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        patch_size: int = 14,
        temporal_patch_size: int = 1,
        merge_size: int = 2,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        tokenizer: Any = None,
        framing: str = "string",
        image_token_id: int = IMAGE_TOKEN_ID,
        pad_token_id: int | None = None,
    ):
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        self.image_mean = np.asarray(image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_std, dtype=np.float32)
        self.tokenizer = tokenizer
        self.framing = framing
        self.image_token_id = image_token_id
        self._pad_token_id = pad_token_id

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    # -- images ---------------------------------------------------------------------
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the frame the model sees; its bboxes live in this frame."""
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return w, h

    def preprocess_image(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One image -> (patches [N, C*T*p*p] float32, (t, h, w) grid in patches)."""
        image = to_rgb(image)
        w, h = self.resized_size(*image.size)
        if (w, h) != image.size:
            image = image.resize((w, h), resample=Image.BICUBIC)
        # Same arithmetic as the slow Qwen2VLImageProcessor: rescale in float64, cast to
        # float32, normalise in float32 -> bit-identical pixels.
        x = (np.asarray(image).astype(np.float64) * (1 / 255)).astype(np.float32)
        x = ((x - self.image_mean) / self.image_std).transpose(2, 0, 1)  # CHW
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        frames = np.repeat(x[None], tp, axis=0)  # an image is one frame, tiled to T
        c = x.shape[0]
        gt, gh, gw = 1, h // p, w // p
        x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
        # -> (t, h_block, w_block, h_in, w_in, C, T, py, px): merge windows contiguous.
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), (gt, gh, gw)

    def preprocess_images(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        patches, grids = [], []
        for image in images:
            x, grid = self.preprocess_image(image)
            patches.append(x)
            grids.append(grid)
        return {
            "pixel_values": torch.from_numpy(np.concatenate(patches, axis=0)),
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),
        }

    def num_image_tokens(self, grid_thw: Sequence[int]) -> int:
        t, h, w = (int(v) for v in grid_thw)
        return t * h * w // self.merge_size**2

    # -- prompts --------------------------------------------------------------------
    def render_prompt(self, prompt: str, num_images: int = 1, framing: str | None = None) -> str:
        """The chat-framed prompt with one ``<|imgpad|>`` per image (not yet expanded).

        ``prompt`` is a PROMPTS key or literal prompt text (for prompt_grounding_ocr append
        the box yourself: ``PROMPTS["prompt_grounding_ocr"] + str([x1, y1, x2, y2])``).
        """
        prompt = PROMPTS.get(prompt, prompt)
        framing = framing or self.framing
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        images = (IMAGE_START + IMAGE_PAD + IMAGE_END) * num_images
        if framing == "hf":
            return " " + images + prompt + ASSISTANT
        return USER + images + prompt + END_USER + ASSISTANT

    def expand_image_tokens(self, ids: Sequence[int], grids: Sequence[Sequence[int]]) -> list[int]:
        """Replace the k-th image token by num_image_tokens(grids[k]) copies of it."""
        out: list[int] = []
        k = 0
        for tok in ids:
            if tok == self.image_token_id:
                if k >= len(grids):
                    raise ValueError("more image tokens in the text than images")
                out.extend([tok] * self.num_image_tokens(grids[k]))
                k += 1
            else:
                out.append(tok)
        if k != len(grids):
            raise ValueError(f"{len(grids)} images but {k} image tokens in the text")
        return out

    def _tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(
                "this processor has no tokenizer (the checkpoint folder had none): pass tokenizer= "
                "to processor_from_pretrained, or build input_ids yourself"
            )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def pad_token_id(self) -> int:
        """Value written into padded slots (masked out, but must be a valid embedding row)."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = self._pad_token_id
        return int(pad) if pad is not None else EOS_TOKEN_IDS[0]

    def __call__(
        self,
        images: Sequence[Image.Image] | Image.Image | None = None,
        text: Sequence[str] | str | None = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        """Images -> pixel_values + image_grid_thw; text (already framed, one <|imgpad|> per
        image, images consumed in order across the texts) -> input_ids + attention_mask,
        padded on the left (``padding_side`` is accepted as in transformers' processors, but
        only "left" is: batched generation needs it)."""
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        if isinstance(images, Image.Image):
            images = [images]
        out: dict[str, torch.Tensor] = {}
        grids: list[list[int]] = []
        if images:
            out.update(self.preprocess_images(images))
            grids = out["image_grid_thw"].tolist()
        if text is None:
            return out
        texts = [text] if isinstance(text, str) else list(text)
        rows, k = [], 0
        for t in texts:
            ids = self._tokenize(t)
            n = sum(1 for i in ids if i == self.image_token_id)
            rows.append(self.expand_image_tokens(ids, grids[k : k + n]))
            k += n
        if k != len(grids):
            raise ValueError(f"{len(grids)} images but {k} image tokens in the texts")
        out.update(self.pad(rows, padding_side))
        return out

    def pad(self, rows: Sequence[Sequence[int]], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Token id lists -> input_ids / attention_mask [batch, max_len], padded on the left
        (batched generation needs every row's prompt to end in the last column)."""
        if padding_side != "left":
            raise ValueError("only left padding is supported (batched generation needs it)")
        return pad_left(rows, self.pad_token_id)

    def build_batch(
        self, images: Sequence[Image.Image], prompts: Sequence[str] | str, framing: str | None = None
    ) -> dict[str, torch.Tensor]:
        """One page per row: framed prompt + its image, left-padded. ``prompts`` is one
        prompt (mode name or text) for all pages, or one per page. The backend entry point."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            raise ValueError("one prompt per image")
        texts = [self.render_prompt(p, 1, framing) for p in prompts]
        return self(images=list(images), text=texts, padding_side="left")


def processor_from_pretrained(path: str | Path, tokenizer: Any = None, framing: str = "string") -> DotsOCRProcessor:
    """The processor configured by the folder's preprocessor_config.json (dots' own pixel
    limits; missing keys fall back to the official values) and config.json (image token
    id). The tokenizer is loaded from the
    folder when it has one and none is passed."""
    folder = Path(path)
    cfg_path = folder / "preprocessor_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    size = cfg.get("size") or {}
    # The image token id lives in the model's config.json (official: 151665).
    model_cfg_path = folder / "config.json"
    model_cfg = json.loads(model_cfg_path.read_text()) if model_cfg_path.exists() else {}
    if tokenizer is None:
        tokenizer = load_tokenizer(folder)
    return DotsOCRProcessor(
        min_pixels=cfg.get("min_pixels", size.get("shortest_edge", MIN_PIXELS)),
        max_pixels=cfg.get("max_pixels", size.get("longest_edge", MAX_PIXELS)),
        patch_size=cfg.get("patch_size", 14),
        temporal_patch_size=cfg.get("temporal_patch_size", 1),
        merge_size=cfg.get("merge_size", 2),
        image_mean=cfg.get("image_mean", CLIP_MEAN),
        image_std=cfg.get("image_std", CLIP_STD),
        tokenizer=tokenizer,
        framing=framing,
        image_token_id=int(model_cfg.get("image_token_id", IMAGE_TOKEN_ID)),
        # Official: <|endoftext|>, as generate pads; small test vocabularies lack it.
        pad_token_id=EOS_TOKEN_IDS[0] if model_cfg.get("vocab_size", 151936) > EOS_TOKEN_IDS[0] else 0,
    )


def load_tokenizer(folder: str | Path) -> Any:
    """The checkpoint's tokenizer, or None when the folder has none. Loaded by class, never
    through AutoTokenizer: that reads config.json, whose ``auto_map`` points at the remote
    code and makes transformers stop and ask whether to run it."""
    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        from transformers import Qwen2Tokenizer

        return Qwen2Tokenizer.from_pretrained(str(folder))
    return None
