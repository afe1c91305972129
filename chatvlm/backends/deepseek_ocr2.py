"""DeepSeek-OCR-2 through transformers' native DeepseekOcr2ForConditionalGeneration.

Official prompts (no chat roles: BOS + the raw prompt with one `<image>`): "Free OCR."
for text, the grounding prompt for markdown and layout. The processor tiles each page
(1024-px global view + 0-6 768-px tiles) and batches pages of different sizes with left
padding. Generation uses the official windowed no-repeat n-gram ban (n=20 within the
last 90 tokens, <td>/</td> whitelisted, as in the official image runner) and stops on
EOS (id 1). Output is decoded with special tokens kept (the grounding tags are special)
and the grounding blocks are parsed into layout blocks in page pixels.
"""

from __future__ import annotations

from ..config import GenerationParams
from ..errors import UsageError
from ..i18n import _
from ..records import Page, PageResult, RawOutput
from .deepseek_common import EOS, PAD, TABLE_CELL_TAGS, DeepseekGroundingMixin, grounded_result
from .hf import HFBackend


class DeepseekOcr2Backend(DeepseekGroundingMixin, HFBackend):
    auto_class = "DeepseekOcr2ForConditionalGeneration"
    attn_support = ("sdpa", "eager")          # no flash-attn (SAM relative-position bias)
    option_keys = HFBackend.option_keys | {"max_patches", "ngram_size", "ngram_window", "ngram_whitelist"}

    def prompt_for(self, task: str) -> str:
        try:
            return self.spec.prompts[task]
        except KeyError:
            raise UsageError(_("model '{name}' has no prompt for task '{task}'").format(name=self.spec.name, task=task)) from None

    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        prompt = self.prompt_for(task)
        kwargs = {}
        if "max_patches" in self.options.extra:
            kwargs["max_patches"] = int(self.options.extra["max_patches"])
        return dict(self.processor(images=[p.image for p in pages], text=[prompt] * len(pages),
                                   return_tensors="pt", padding=True, padding_side="left", **kwargs))

    # ------------------------------------------------------------------ generation facts
    def stop_token_ids(self) -> list[int]:
        return [self._token_id(EOS, 1)]

    def pad_token_id(self) -> int:
        return self._token_id(PAD, 2)

    def logits_processors(self, task: str, params: GenerationParams, inputs: dict) -> list:
        extra = {**self.spec.extra, **self.options.extra}
        return self.ngram_processors(int(extra.get("ngram_size", 20)), int(extra.get("ngram_window", 90)), inputs,
                                     extra.get("ngram_whitelist", TABLE_CELL_TAGS))

    def generate_batch(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        outputs = super().generate_batch(pages, task, params)
        for page, raw in zip(pages, outputs):
            raw.extra["page_size"] = tuple(page.size)   # what postprocess needs, so it stays pure
        return outputs

    # ------------------------------------------------------------------ postprocess (pure)
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        return grounded_result(self.page_result(page, raw), raw, task, loop_trim=self.text_loop_settings())
