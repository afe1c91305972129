"""Text metrics: the normalised form both sides are compared in, and CER / WER."""

from __future__ import annotations

import unicodedata
from typing import Any, Optional

from ..textnorm import markdown_to_text


def strip_markdown(text: str) -> str:
    """Markdown markup out, the words in: headings, emphasis, links, lists, tables, html."""
    return markdown_to_text(text, style="words")


def normalise(text: Optional[str], markdown: bool = False, ignore_case: bool = False) -> str:
    """The form both sides are compared in: NFKC, markup stripped (markdown), one space."""
    text = unicodedata.normalize("NFKC", text or "")
    if markdown:
        text = strip_markdown(text)
    text = " ".join(text.split())
    return text.casefold() if ignore_case else text


def error_rates(hypothesis: str, reference: str) -> dict[str, Any]:
    """Character and word edit distances (Levenshtein, via rapidfuzz) and CER / WER.

    Both strings must already be normalised. CER = edits / reference characters; WER =
    word edits / reference words. None when the reference is empty.
    """
    from rapidfuzz.distance import Levenshtein

    ref_words, hyp_words = reference.split(), hypothesis.split()
    char_edits = Levenshtein.distance(hypothesis, reference)
    word_edits = Levenshtein.distance(hyp_words, ref_words)
    return {
        "char_edits": char_edits, "ref_chars": len(reference),
        "word_edits": word_edits, "ref_words": len(ref_words),
        "cer": round(char_edits / len(reference), 6) if reference else None,
        "wer": round(word_edits / len(ref_words), 6) if ref_words else None,
    }


def case_insensitive_for(reference: str, setting: str) -> bool:
    """--ignore-case yes/no, or auto: fold case when the reference has no lower-case letter
    (an all-capitals transcript, like SROIE's, cannot judge case)."""
    if setting in ("yes", "no"):
        return setting == "yes"
    letters = [c for c in reference if c.isalpha() and c.lower() != c.upper()]
    return bool(letters) and not any(c.islower() for c in letters)
