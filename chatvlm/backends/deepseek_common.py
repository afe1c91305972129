"""What DeepSeek-OCR (v1, our port) and DeepSeek-OCR-2 (transformers) share.

Both use the same tokenizer family, the same grounding output format and the same
official anti-repetition rule, so both backends inherit this mixin:
  - special tokens looked up by name (BOS/EOS/pad; `<td>`/`</td>` for the n-gram whitelist),
  - decoding that keeps the grounding tags (they are special tokens) and drops BOS/EOS/pad,
  - the official windowed no-repeat n-gram logits processor,
  - postprocessing of a grounded answer into text, markdown and layout blocks.
"""

from __future__ import annotations

from typing import Any, Optional

from ..grounding import has_grounding, parse_grounding, strip_tags
from ..layout import blocks_to_markdown
from ..textnorm import markdown_to_text
from ..model_constants import DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_PAD
from ..loop_guard import WindowedNoRepeatNGram, trim_repetition
from ..records import PageResult, RawOutput

BOS, EOS, PAD = DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_PAD
TABLE_CELL_TAGS = ("<td>", "</td>")   # exempt from the n-gram ban: tables repeat them legitimately


class DeepseekGroundingMixin:
    """For HFBackend subclasses with `self.tokenizer` and `self._facts`."""

    skip_special_tokens = False             # keep <|ref|>/<|det|> and <td>; strip BOS/EOS/pad ourselves

    def _token_id(self, token: str, default: int) -> int:
        tok = self.tokenizer
        if tok is None:
            return default
        tid = tok.convert_tokens_to_ids(token)
        return int(tid) if isinstance(tid, int) and tid >= 0 else default

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for token in (BOS, EOS, PAD):
            text = text.replace(token, "")
        return text

    def ngram_processors(self, ngram_size: int, window: int, inputs: dict,
                         whitelist_tokens=TABLE_CELL_TAGS) -> list:
        """The official rule: no n-gram of generated tokens repeats within the last `window`."""
        if ngram_size <= 0 or window <= 0:
            self._facts["no_repeat_ngram"] = None
            return []
        # Whitelist ids looked up by name, so they follow the checkpoint's tokenizer.
        whitelist = [self._token_id(t, -1) for t in whitelist_tokens]
        self._facts["no_repeat_ngram"] = {"ngram_size": ngram_size, "window_size": window}
        return [WindowedNoRepeatNGram(ngram_size, window, int(inputs["input_ids"].shape[1]),
                                      whitelist=[w for w in whitelist if w >= 0])]


def grounded_result(result: PageResult, raw: RawOutput, task: str,
                    loop_trim: Optional[dict[str, Any]] = None) -> PageResult:
    """Fill a PageResult from a DeepSeek-OCR answer (pure string work).

    Grounded output -> layout blocks in page pixels (markdown/layout tasks), markdown and
    text without tags. A page that did not stop keeps everything it read; a repeated tail
    left in its text is cut to one copy and the page is marked `loop`.
    """
    page_w, page_h = raw.extra.get("page_size") or (result.width, result.height)
    result.width, result.height = int(page_w), int(page_h)
    if result.status == "error":
        return result
    text = raw.text or ""
    if raw.finish_reason in ("length", "loop"):
        text, trimmed = trim_repetition(text, **(loop_trim or {}))
        if trimmed:
            result.finish_reason = "loop"
    if not has_grounding(text):
        cleaned = strip_tags(text)           # also drops a stray <|grounding|> / partial tag
        if task == "text":
            result.text = cleaned.strip()
            return result
        result.markdown = cleaned + ("\n" if cleaned else "")
        result.text = markdown_to_text(cleaned)
        result.layout = [] if task in ("markdown", "layout") else None
        return result
    grounded = parse_grounding(text, result.width, result.height)
    if grounded.blocks and grounded.markdown == _blocks_text(grounded):
        markdown = blocks_to_markdown(grounded.blocks).strip()   # same rendering as the other layout models
    else:
        markdown = grounded.markdown                          # text outside every block is kept
    result.repaired = grounded.repaired
    result.text = markdown_to_text(markdown)
    if task == "text":
        return result
    result.markdown = markdown + ("\n" if markdown else "")
    result.layout = grounded.blocks
    return result


def _blocks_text(grounded) -> str:
    """The markdown the blocks alone give (to tell whether any text lies outside every block)."""
    return "\n\n".join(b.text for b in grounded.blocks if b.text and b.category != "Picture")
