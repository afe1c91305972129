"""What every olmOCR-bench rule check shares: the normal form of text, the fuzzy threshold,
and a rule's `max_diffs` (olmOCR-bench refuses a rule whose value is not a whole number >= 0)."""

from __future__ import annotations

from typing import Any, Optional

from ..textnorm import markdown_to_text


class RuleError(ValueError):
    """A rule olmOCR-bench would reject when loading it."""


def normalize_text(text: Optional[str]) -> str:
    """olmOCR-bench's normal form of a page or a rule's text."""
    return markdown_to_text(text, style="olmocr")


def fuzzy_threshold(max_diffs: int, text: str) -> float:
    """The similarity a match needs: one minus the share of `text` that may differ."""
    return 1.0 - (max_diffs / (len(text) if len(text) > 0 else 1))


def rule_max_diffs(rule: dict[str, Any]) -> int:
    value = rule.get("max_diffs", 0)
    value = 0 if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RuleError(f"max_diffs must be a whole number >= 0, got {value!r}")
    return value
