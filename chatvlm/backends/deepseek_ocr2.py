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
from ..grounding import has_grounding, parse_grounding, strip_tags
from ..layout import blocks_to_markdown
from ..loop_guard import WindowedNoRepeatNGram
from ..records import Page, PageResult, RawOutput
from .hf import HFBackend, markdown_to_text

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"


class DeepseekOcr2Backend(HFBackend):
    auto_class = "DeepseekOcr2ForConditionalGeneration"
    attn_support = ("sdpa", "eager")          # no flash-attn (SAM relative-position bias)
    skip_special_tokens = False               # keep <|ref|>/<|det|> and <td>; strip BOS/EOS/pad ourselves

    def prompt_for(self, task: str) -> str:
        try:
            return self.spec.prompts[task]
        except KeyError:
            raise UsageError(f"model '{self.spec.name}' has no prompt for task '{task}'") from None

    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        prompt = self.prompt_for(task)
        kwargs = {}
        if "max_patches" in self.options.extra:
            kwargs["max_patches"] = int(self.options.extra["max_patches"])
        return dict(self.processor(images=[p.image for p in pages], text=[prompt] * len(pages),
                                   return_tensors="pt", padding=True, padding_side="left", **kwargs))

    # ------------------------------------------------------------------ generation facts
    def _token_id(self, token: str, default: int) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        return int(tid) if isinstance(tid, int) and tid >= 0 else default

    def stop_token_ids(self) -> list[int]:
        return [self._token_id(EOS, 1)]

    def pad_token_id(self) -> int:
        return self._token_id(PAD, 2)

    def logits_processors(self, task: str, params: GenerationParams, inputs: dict) -> list:
        extra = {**self.spec.extra, **self.options.extra}
        n = int(extra.get("ngram_size", 20))
        if n <= 0:
            return []
        whitelist = [self._token_id(t, -1) for t in extra.get("ngram_whitelist", ("<td>", "</td>"))]
        window = int(extra.get("ngram_window", 90))
        self._facts["no_repeat_ngram"] = {"ngram_size": n, "window_size": window}
        return [WindowedNoRepeatNGram(n, window, int(inputs["input_ids"].shape[1]),
                                      whitelist=[w for w in whitelist if w >= 0])]

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for token in (BOS, EOS, PAD):
            text = text.replace(token, "")
        return text

    # ------------------------------------------------------------------ postprocess (pure)
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        width, height = page.size
        text = raw.text
        if task == "text" and not has_grounding(text):
            return self.page_result(page, raw, text=text.strip())
        grounded = parse_grounding(text, width, height)
        if grounded.blocks and grounded.markdown == blocks_text(grounded):
            markdown = blocks_to_markdown(grounded.blocks).strip()     # same rendering as the other layout models
        elif grounded.blocks or has_grounding(text):
            markdown = grounded.markdown
        else:
            markdown = strip_tags(text)
        layout = grounded.blocks if task in ("markdown", "layout") else None
        if task == "text":
            return self.page_result(page, raw, text=markdown_to_text(markdown), repaired=grounded.repaired)
        return self.page_result(page, raw, markdown=markdown, text=markdown_to_text(markdown), layout=layout,
                                repaired=grounded.repaired)


def blocks_text(grounded) -> str:
    """The markdown the blocks alone give (to tell whether any text lies outside every block)."""
    return "\n\n".join(b.text for b in grounded.blocks if b.text and b.category != "Picture")
