"""One markdown-to-text function; its three styles differ where their uses need them to."""

from __future__ import annotations

import pytest

from chatvlm.bench import normalise, normalize_text, strip_markdown
from chatvlm.textnorm import STYLES, markdown_to_text

PAGE = ("# Title\n\nThe **quick** *brown* fox \u2013 \u201cjumps\u201d.<br>Next\n\n"
        "- item one\n\n![a chart](fig.png) see [docs](http://x)\n\n"
        "<table><tr><td>a</td><td>b</td></tr><tr><td>1</td><td>2</td></tr></table>\n\n$$\nx^2\n$$\n")


def test_page_style_keeps_lines_and_table_rows():
    text = markdown_to_text(PAGE, "page")
    assert text.startswith("Title\n\nThe quick *brown* fox")      # heading and bold marks out, italic kept
    assert "jumps\u201d.\nNext" in text                              # <br> is a line break
    assert "a\tb\n1\t2" in text                                      # table rows as tab-separated lines
    assert "a chart" not in text and "[docs](http://x)" in text      # images go, links stay
    assert "$$" not in text and "x^2" in text
    assert text.endswith("\n") and markdown_to_text("  \n", "page") == ""


def test_words_style_keeps_only_the_words():
    words = " ".join(markdown_to_text(PAGE, "words").split())
    assert words == "Title The quick brown fox \u2013 \u201cjumps\u201d. Next item one a chart see docs a b 1 2 $$ x^2 $$"
    assert strip_markdown(PAGE) == markdown_to_text(PAGE, "words")
    assert normalise("| a | b |\n|---|---|\n| 1 | 2 |", markdown=True) == "a b 1 2"


def test_olmocr_style_is_olmocr_benchs_normal_form():
    text = markdown_to_text(PAGE, "olmocr")
    # only emphasis, <br> and whitespace change; quotes and dashes become ASCII; the rest stays markup
    assert text.startswith('# Title The quick brown fox - "jumps". Next - item one ![a chart](fig.png)')
    assert "<table><tr><td>a</td>" in text and "\n" not in text
    assert markdown_to_text("*italic\nacross lines*", "olmocr") == "*italic across lines*"   # one line at a time
    assert markdown_to_text("caf\u0065\u0301 5 \u00b5m", "olmocr") == "caf\u00e9 5 \u03bcm"
    assert normalize_text(PAGE) == text


def test_styles_are_checked():
    assert STYLES == ("page", "words", "olmocr")
    assert markdown_to_text(None, "words") == ""
    with pytest.raises(ValueError, match="unknown text style"):
        markdown_to_text("x", "html")
