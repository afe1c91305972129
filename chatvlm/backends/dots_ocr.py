"""dots.ocr (rednote-hilab/dots.ocr) through our own port (chatvlm/models/dots_ocr), no remote code.

One pass of `prompt_layout_all_en` gives every block of a page (bbox, category, text in
reading order), so the layout and markdown tasks share it: the JSON cells are salvaged
(layout.parse_cells), their boxes mapped from the model's resized frame to page pixels,
and markdown / text rendered from the blocks. `--mode layout-only` asks for boxes and
categories only (`prompt_layout_only_en`); the text task uses `prompt_ocr` (plain
markdown, no boxes). Prompts are the official ones, byte for byte, in the vLLM/string
chat framing behind the published scores (`extra={"framing": "hf"}` selects the HF demo's).

Pixel budget: the checkpoint's preprocessor_config.json (official 3136..11,289,600 px),
overridden by GenerationParams.min_pixels / max_pixels. Generation: greedy, stop on
<|endoftext|> / <|endofassistant|>, no repetition penalty (it blanks tables); loops are
caught by the shared loop guard, and a truncated or looping page keeps every complete block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import BackendOptions, GenerationParams
from ..errors import ModelUnavailableError, UsageError
from ..i18n import _
from ..layout import blocks_to_markdown, cells_to_blocks, parse_cells
from ..textnorm import markdown_to_text
from ..records import Page, PageResult, RawOutput
from ..registry import ModelSpec
from ..weights import load_port_model
from .hf import HFBackend

# Which official prompt mode serves which task (the spec's prompts may override).
DEFAULT_PROMPT_MODES = {
    "layout": "prompt_layout_all_en",
    "markdown": "prompt_layout_all_en",
    "text": "prompt_ocr",
    "layout-only": "prompt_layout_only_en",
}
LAYOUT_MODES = ("prompt_layout_all_en", "prompt_layout_only_en")


class DotsOcrBackend(HFBackend):
    # LM attention (transformers Qwen2); the vision tower always runs its own per-image
    # attention (flash-attn varlen when importable on CUDA, else SDPA per image).
    attn_support = ("flash_attention_2", "sdpa", "eager")
    default_gpu_batch = 8
    option_keys = HFBackend.option_keys | {"framing"}

    def __init__(self, spec: ModelSpec, options: Optional[BackendOptions] = None):
        super().__init__(spec, options)
        self.framing = str(self.options.extra.get("framing") or spec.extra.get("framing") or "string")
        if self.framing not in ("string", "hf"):
            raise UsageError(_("dots_ocr framing must be 'string' or 'hf', got {value}").format(value=repr(self.framing)))
        self.layout_mode = str(self.options.extra.get("layout_mode") or "all")
        self._budget: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ loading
    def load_processor(self, path: Path):
        from ..models.dots_ocr import processor_from_pretrained

        proc = processor_from_pretrained(path, framing=self.framing)
        if proc.tokenizer is None:
            raise ModelUnavailableError(_(
                "model '{name}': {path} has no tokenizer files (tokenizer.json / vocab.json); "
                "expected a full copy of {repo}").format(name=self.spec.name, path=path, repo=self.spec.repo_id))
        return proc

    def load_model(self, path: Path, dtype, attn: str):
        from ..models import dots_ocr

        return load_port_model(dots_ocr, path, dtype=dtype, device=self.device, attn_implementation=attn)

    def after_load(self) -> None:
        # The checkpoint's own pixel budget (preprocessor_config.json), never transformers'
        # Qwen2-VL default (~11x smaller).
        self._budget = (self.processor.min_pixels, self.processor.max_pixels)
        from ..models.dots_ocr.vision import flash_attn_varlen_func

        on_cuda = self.device.startswith("cuda")
        half = str(self.dtype).replace("torch.", "") in ("bfloat16", "float16")
        self._facts.update({
            "prompt_framing": self.framing,
            "vision_attention": "flash_attn_varlen" if (flash_attn_varlen_func is not None and on_cuda and half)
            else "sdpa per image",
            "min_pixels": self._budget[0],
            "max_pixels": self._budget[1],
        })

    # ------------------------------------------------------------------ prompts and inputs
    def prompt_mode(self, task: str) -> str:
        key = "layout-only" if (task in ("layout", "markdown") and self.layout_mode == "layout-only") else task
        mode = self.spec.prompts.get(key) or DEFAULT_PROMPT_MODES.get(key)
        if mode is None:
            raise UsageError(_("model '{name}' has no prompt for task '{task}'").format(name=self.spec.name, task=task))
        return mode

    def pixel_budget(self, params: Optional[GenerationParams]) -> tuple[int, int]:
        min_px = (params.min_pixels if params and params.min_pixels else None) or self._budget[0]
        max_px = (params.max_pixels if params and params.max_pixels else None) or self._budget[1]
        return int(min(min_px, max_px)), int(max_px)

    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        proc = self.processor
        proc.min_pixels, proc.max_pixels = self.pixel_budget(params)
        return proc.build_batch([p.image for p in pages], self.prompt_mode(task))

    def pad_token_id(self) -> int:
        # Finished rows are fed the pad id: it must be a row of this checkpoint's embedding.
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 0)
        for pad in (getattr(self.tokenizer, "pad_token_id", None), self.processor.pad_token_id):
            if pad is not None and (not vocab or int(pad) < vocab):
                return int(pad)
        return 0

    def generate_batch(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        outputs = super().generate_batch(pages, task, params)
        mode = self.prompt_mode(task)
        for page, raw in zip(pages, outputs):
            # Everything postprocess needs, so it stays pure: the frame the boxes live in.
            raw.extra.update({
                "prompt_mode": mode,
                "page_size": tuple(page.size),
                "frame": tuple(self.processor.resized_size(*page.size)),
            })
        return outputs

    # ------------------------------------------------------------------ postprocess (pure)
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        result = self.page_result(page, raw)
        page_w, page_h = raw.extra.get("page_size") or page.size
        result.width, result.height = int(page_w), int(page_h)
        if result.status == "error":
            return result
        mode = raw.extra.get("prompt_mode") or self.prompt_mode(task)
        if mode not in LAYOUT_MODES:
            # prompt_ocr: the answer is the page's markdown.
            markdown = raw.text.strip()
            result.markdown = markdown + "\n" if markdown else ""
            result.text = markdown_to_text(markdown)
            return result
        return layout_result(result, raw.text, raw.extra.get("frame") or (page_w, page_h))


def layout_result(result: PageResult, answer: str, frame: tuple[int, int]) -> PageResult:
    """Fill a PageResult from a layout answer: salvage the cells, map their boxes from the
    model frame to the page, render markdown (layoutjson2md rules) and text from them.
    A truncated or looping answer keeps every complete block and is marked repaired; so
    is a page with a block the model gave no usable box (the block keeps its text, with
    bbox null and its problem noted in the JSON)."""
    cells, repaired, dropped = parse_cells(answer)
    blocks = cells_to_blocks(cells, frame, (result.width, result.height))
    result.layout = blocks
    result.repaired = repaired or any(b.bbox is None for b in blocks)
    result.dropped_blocks = dropped
    result.markdown = blocks_to_markdown(blocks)
    result.text = markdown_to_text(result.markdown)
    return result

