"""DeepSeek-OCR (v1, deepseek-ai/DeepSeek-OCR) through our own port (chatvlm/models/deepseek_ocr), no remote code.

Prompts are the official ones in the "plain" format (BOS + prompt, `<image>` expanded in
place, no chat roles): "Free OCR." for text, the grounding prompt for markdown and layout.
Resolution mode from `BackendOptions.extra["mode"]` (else the spec's): gundam (1024-px
global view + 2-9 640-px tiles by aspect ratio; the default for documents), or tiny /
small / base / large (one view). Pages of different sizes (different image-token counts)
run in one left-padded batch.

Generation: greedy, stop on EOS, the official windowed no-repeat n-gram ban on generated
tokens (n=30 within the last 90, `<td>`/`</td>` exempt: the official image runner and the
README/vLLM recipe setting; `extra` keys `ngram_size` / `ngram_window` override, 0 turns it
off) plus chatvlm's loop guard. A page that never stops keeps what it read and is recorded
as `length` (or `loop` when a repetition was cut), never dropped (the official PDF runner
silently drops such pages). Output is decoded with special tokens kept (the grounding tags
are special) and parsed by chatvlm.grounding: 0-999 boxes -> layout blocks in page pixels,
labels mapped onto the layout categories, text and markdown without tags.

bench --synthetic: chatvlm.weights builds the real-size architecture from the spec's
`full_config` with random weights; the official prompts keep their real token ids (the
processor knows them without a tokenizer) and a decode-only tokenizer reads the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import BackendOptions, GenerationParams
from ..errors import ModelUnavailableError, UsageError
from ..records import Page, PageResult, RawOutput
from ..registry import ModelSpec
from .deepseek_common import EOS, PAD, DeepseekGroundingMixin, grounded_result
from ..weights import decode_tokenizer, load_port_model
from .hf import HFBackend

MODE_NAMES = ("tiny", "small", "base", "large", "gundam")
# (ngram_size, window_size) of the official image runner / README vLLM recipe
# (the official PDF runner uses (20, 50), the eval runner (40, 90)).
DEFAULT_NGRAM = (30, 90)
# A4 at 200 DPI, for memory budgeting before any page is seen.
TYPICAL_PAGE = (1654, 2339)


class DeepseekOcrBackend(DeepseekGroundingMixin, HFBackend):
    attn_support = ("sdpa", "eager")        # the port's kernels (no flash-attn: SAM relative positions)
    default_gpu_batch = 8
    option_keys = HFBackend.option_keys | {"mode", "max_crops", "ngram_size", "ngram_window"}

    def __init__(self, spec: ModelSpec, options: Optional[BackendOptions] = None):
        super().__init__(spec, options)
        extra = {**spec.extra, **self.options.extra}
        self.mode = str(extra.get("mode") or "gundam").lower()
        if self.mode not in MODE_NAMES:
            raise UsageError(f"deepseek_ocr mode must be one of {', '.join(MODE_NAMES)}; got {extra.get('mode')!r}")
        self.max_crops = int(extra.get("max_crops", 9))        # official HF infer(): 9 (vLLM runners: 6)
        self.ngram = (int(extra.get("ngram_size", DEFAULT_NGRAM[0])), int(extra.get("ngram_window", DEFAULT_NGRAM[1])))
        self._decode_tokenizer = None

    # ------------------------------------------------------------------ loading
    def load_processor(self, path: Path):
        """The processor knows the official prompts' token ids without a tokenizer, so a
        checkpoint may carry only a tokenizer for the generated tokens (weights.decode_tokenizer)."""
        from ..models.deepseek_ocr import processor_from_pretrained

        proc = processor_from_pretrained(path, max_crops=self.max_crops)
        if proc.tokenizer is None:
            self._decode_tokenizer = decode_tokenizer(path)
        if proc.tokenizer is None and self._decode_tokenizer is None:
            raise ModelUnavailableError(
                f"model '{self.spec.name}': {path} has no tokenizer files (tokenizer.json); "
                f"expected a full copy of {self.spec.repo_id}")
        return proc

    def load_model(self, path: Path, dtype, attn: str):
        from ..models import deepseek_ocr

        return load_port_model(deepseek_ocr, path, dtype=dtype, device=self.device, attn_implementation=attn)

    def after_load(self) -> None:
        self._facts.update({"mode": self.mode, "max_crops": self.max_crops,
                            "prompt_format": "plain (BOS + prompt, no chat roles)"})

    @property
    def tokenizer(self):
        tok = getattr(self.processor, "tokenizer", None)
        return tok if tok is not None else self._decode_tokenizer

    # ------------------------------------------------------------------ prompts and inputs
    def prompt_for(self, task: str) -> str:
        from ..models.deepseek_ocr import PROMPTS

        prompt = self.spec.prompts.get(task) or PROMPTS.get(task)
        if prompt is None:
            raise UsageError(f"model '{self.spec.name}' has no prompt for task '{task}'")
        return prompt

    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        return self.processor.batch([p.image for p in pages], self.prompt_for(task), mode=self.mode)

    def to_device(self, inputs) -> dict:
        data = super().to_device({k: v for k, v in inputs.items() if k != "images"})
        images = []
        for item in inputs.get("images") or []:
            if item is None:
                images.append(None)
            else:
                images.append(tuple(t.to(self.device, dtype=self.dtype) for t in item))
        data["images"] = images
        return data

    def page_cost(self, page: Page) -> float:
        if self.processor is None or page.image is None:
            return super().page_cost(page)
        return float(self.processor.num_image_tokens(*page.size, mode=self.mode))

    def prompt_tokens_estimate(self) -> int:
        if self.processor is None:
            return 1300
        return int(self.processor.num_image_tokens(*TYPICAL_PAGE, mode=self.mode)) + 16

    # ------------------------------------------------------------------ generation facts
    def stop_token_ids(self) -> list[int]:
        return [self._token_id(EOS, self.processor.eos_token_id)]

    def pad_token_id(self) -> int:
        return self._token_id(PAD, self.processor.pad_token_id)

    def logits_processors(self, task: str, params: GenerationParams, inputs: dict) -> list:
        return self.ngram_processors(*self.ngram, inputs)

    def generate_batch(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        outputs = super().generate_batch(pages, task, params)
        for page, raw in zip(pages, outputs):
            # What postprocess needs, so it stays pure.
            raw.extra.update({"page_size": tuple(page.size), "mode": self.mode})
        return outputs

    # ------------------------------------------------------------------ postprocess (pure)
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        return grounded_result(self.page_result(page, raw), raw, task, loop_trim=self.text_loop_settings())

