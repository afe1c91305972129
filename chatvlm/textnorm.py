"""Markdown to plain text: one function, three purposes chosen by `style`.

The three purposes differ on purpose, so each is a style of the same function rather
than a copy of it:

- "page" (the `.txt` a model's markdown becomes): the page's words *and its lines*.
  Headings and bold lose their marks, HTML tables become tab-separated lines, `<br>`
  becomes a line break, images and `$$` fence lines go. Italic marks stay: a lone `*`
  or `_` in a transcript is more often text than emphasis.
- "words" (CER/WER against a transcript): every piece of markup out, only the words
  kept. Images keep their alt text, links their text, list markers, table pipes and
  separators, block quotes, code fences and all emphasis go. Line structure does not
  matter here (the comparison collapses whitespace afterwards).
- "olmocr" (olmOCR-bench rule checks): exactly what olmOCR-bench's own normaliser does,
  so a rule passes or fails here as it does there: `<br>` to a space, `**`/`__` and
  `*`/`_` pairs and `<b>`/`<i>` tags out (within a line), whitespace collapsed to one
  space, Unicode NFC, typographic quotes and dashes to ASCII, micro sign to Greek mu.
  Nothing else: headings, tables and links stay as they are.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Optional

STYLES = ("page", "words", "olmocr")

_Rules = list[tuple["re.Pattern[str]", str]]

_PAGE_RULES: _Rules = [
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),                     # images: nothing to read
    (re.compile(r"</t[dh]>\s*<t[dh][^>]*>"), "\t"),                 # table cells: tab-separated
    (re.compile(r"</tr>"), "\n"),                                   # table rows: one per line
    (re.compile(r"<br\s*/?>"), "\n"),
    (re.compile(r"<[^>]+>"), ""),                                   # any other html tag
    (re.compile(r"^\s{0,3}#{1,6}\s+", re.M), ""),                   # heading marks
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),                       # bold
    (re.compile(r"^\s*\$\$\s*$", re.M), ""),                        # display-formula fences
    (re.compile(r"\n{3,}"), "\n\n"),
]

_WORDS_RULES: _Rules = [
    (re.compile(r"```[^\n]*\n?"), ""),                              # code fences (keep the code)
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),                 # images -> alt text
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),                  # links -> link text
    (re.compile(r"<br\s*/?>", re.I), " "),
    (re.compile(r"</?[A-Za-z][^>\n]*>"), " "),                      # html tags (tables, sup, ...)
    (re.compile(r"^\s{0,3}#{1,6}\s+", re.M), ""),                   # headings
    (re.compile(r"^\s{0,3}>\s?", re.M), ""),                        # block quotes
    (re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.M), ""),               # horizontal rules
    (re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(?:\|\s*:?-{2,}:?\s*)*\|?\s*$", re.M), ""),  # table separators
    (re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.M), ""),            # list markers
    (re.compile(r"(\*\*|__)(.+?)\1", re.S), r"\2"),                 # bold
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", re.S), r"\1"),  # *italic*
    (re.compile(r"(?<![\w_])_(?!\s)(.+?)(?<!\s)_(?![\w_])", re.S), r"\1"),    # _italic_
    (re.compile(r"~~(.+?)~~", re.S), r"\1"),                        # strike-through
    (re.compile(r"`([^`]*)`"), r"\1"),                              # inline code
    (re.compile(r"\s*\|\s*"), " "),                                 # table cell pipes
]

# olmOCR-bench's normaliser, step by step and in its order. `.` stops at a line end, so
# emphasis is only removed within one line (a stray `*` cannot swallow a paragraph).
_OLMOCR_RULES: _Rules = [
    (re.compile(r"<br/?>"), " "),
    (re.compile(r"\*\*(.*?)\*\*"), r"\1"),
    (re.compile(r"__(.*?)__"), r"\1"),
    (re.compile(r"</?b>"), ""),
    (re.compile(r"</?i>"), ""),
    (re.compile(r"(\*\*|__)(.*?)\1"), r"\2"),
    (re.compile(r"(\*|_)(.*?)\1"), r"\2"),
    (re.compile(r"\s+"), " "),
]

# Typographic characters olmOCR-bench reads as their ASCII forms (and µ as Greek mu).
ASCII_LOOKALIKES = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\uff3f": "_", "\u2013": "-", "\u2014": "-", "\u2011": "-", "\u2012": "-", "\u2212": "-",
    "\u00b5": "\u03bc",
})

_RULES = {"page": _PAGE_RULES, "words": _WORDS_RULES, "olmocr": _OLMOCR_RULES}


def markdown_to_text(markdown: Optional[str], style: str = "page") -> str:
    """Plain text of `markdown` in one of STYLES (see the module docstring)."""
    if style not in _RULES:
        raise ValueError(f"unknown text style {style!r}; choose from {', '.join(STYLES)}")
    text = markdown or ""
    for pattern, replacement in _RULES[style]:
        text = pattern.sub(replacement, text)
    if style == "olmocr":
        return unicodedata.normalize("NFC", text).translate(ASCII_LOOKALIKES)
    if style == "page":
        return text.strip() + "\n" if text.strip() else ""
    return text
