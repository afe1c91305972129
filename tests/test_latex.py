"""LaTeX in model answers to markdown and text: Qwen3-VL "qwenvl markdown" and GOT-OCR2
format mode, written as the models emit them, through the backends' own postprocess
(what the CLI runs) and, for picture boxes, the pipeline's crop step."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from chatvlm.backends.base import create_backend
from chatvlm.config import BackendOptions, RunConfig
from chatvlm.latex import coordinate_comments, latex_markdown, latex_text, math_text
from chatvlm.records import Page, RawOutput
from chatvlm.registry import get_spec

QWEN3_ANSWER = r"""```markdown
<!-- Image (102, 45, 898, 312) -->

# Quarterly Report 2024

Revenue grew by 12% against Q3; the margin is $m = \frac{p}{r}$, and unit costs were $5 and $10.

<!-- Table (100, 340, 900, 620) -->
\begin{tabular}{|l|c|r|}
\hline
Region & Q3 & Q4 \\
\hline
North & 1,200 & 1,350 \\
South & 980 & 1,010 \\
\hline
\end{tabular}

The total is
$$
T = \sum_{i=1}^{n} r_i
$$
```"""

GOT_FORMAT_ANSWER = r"""\title{Attention Is All You Need}

\section*{Abstract}
The dominant models are based on \textbf{complex} recurrent networks. We use \(d_{k}=64\) and
\[
\operatorname{Attention}(Q, K, V)=\operatorname{softmax}\left(\frac{Q K^{T}}{\sqrt{d_{k}}}\right) V
\]
\begin{itemize}
\item first point
\item second 50\% point
\end{itemize}
\begin{tabular}{|c|c|c|}
\hline \multirow{2}{*}{ Model } & \multicolumn{2}{|c|}{ BLEU } \\
\cline { 2 - 3 } & EN-DE & EN-FR \\
\hline ByteNet & 23.75 & \\
\hline
\end{tabular}<|im_end|>"""


def page(w=1000, h=2000, image=None):
    return Page(source=Path("a.pdf"), doc_key="a", page=1, image=image or Image.new("RGB", (w, h), "white"))


def postprocess(name, answer, task="markdown", pg=None):
    backend = create_backend(get_spec(name), BackendOptions())       # postprocess is pure: no load()
    return backend.postprocess(pg or page(), RawOutput(text=answer, finish_reason="stop"), task)


def test_qwen3_markdown_tables_math_and_comments():
    r = postprocess("qwen3_vl_2b", QWEN3_ANSWER)
    md = r.markdown
    assert "\\begin{tabular}" not in md and "\\hline" not in md and "<!--" not in md
    assert "| Region | Q3 | Q4 |\n|---|---|---|\n| North | 1,200 | 1,350 |\n| South | 980 | 1,010 |" in md
    assert "$m = \\frac{p}{r}$" in md                                   # math stays math
    assert "$$\nT = \\sum_{i=1}^{n} r_i\n$$" in md
    assert "unit costs were $5 and $10." in md                          # dollars are not math
    assert md.startswith("# Quarterly Report 2024")
    txt = r.text
    assert "Region\tQ3\tQ4\nNorth\t1,200\t1,350" in txt
    assert "m = p/r" in txt and "T = ∑_i=1^n r_i" in txt
    assert "\\" not in txt and "$$" not in txt and "<!--" not in txt and "#" not in txt
    assert "unit costs were $5 and $10." in txt


def test_qwen3_coordinate_comments_become_boxed_blocks():
    # 0-1000 relative coordinates (Qwen3-VL document parsing) on a 1000 x 2000 page
    r = postprocess("qwen3_vl_2b", QWEN3_ANSWER)
    cats = [(b.category, b.bbox) for b in r.layout]
    assert cats == [("Picture", [102, 90, 898, 624]), ("Text", None), ("Table", [100, 680, 900, 1240]), ("Text", None)]
    assert r.layout[2].text.startswith("| Region | Q3 | Q4 |")
    assert r.layout[1].problem is None and r.layout[3].text.startswith("The total is")
    # The pipeline's crop step links the picture from the markdown, the rest unchanged.
    from chatvlm.page_steps import _add_page_images

    config = RunConfig(inputs=[], out=Path("out"), formats=("text", "markdown"))
    _add_page_images(config, page(), r)
    assert r.markdown.startswith("![](page-0001-picture-1.png)\n\n# Quarterly Report 2024")
    assert "| North | 1,200 | 1,350 |" in r.markdown and "page-0001-picture-1.png" in r.images
    assert r.images["page-0001-picture-1.png"].size == (796, 534)
    # A plain answer without comments has no layout.
    assert postprocess("qwen3_vl_2b", "# Title\n\nText.").layout is None
    assert postprocess("qwen3_vl_2b", "Plain $x$ words", task="text").text == "Plain $x$ words"


def test_got_format_mode_to_markdown_and_text():
    r = postprocess("got_ocr_hf", GOT_FORMAT_ANSWER)
    md = r.markdown
    assert md.startswith("# Attention Is All You Need\n\n## Abstract\n\nThe dominant models are based on **complex**")
    assert "We use $d_{k}=64$ and" in md
    assert "$$\n\\operatorname{Attention}(Q, K, V)" in md
    assert "- first point\n- second 50% point" in md
    # merged cells: an HTML table (LaTeX's empty placeholder under \multirow is dropped)
    assert ('<table><tr><td rowspan="2">Model</td><td colspan="2">BLEU</td></tr>'
            '<tr><td>EN-DE</td><td>EN-FR</td></tr><tr><td>ByteNet</td><td>23.75</td><td></td></tr></table>') in md
    assert "\\title" not in md and "\\textbf" not in md and "\\begin" not in md and "<|im_end|>" not in md
    txt = r.text
    assert txt.startswith("Attention Is All You Need\n\nAbstract\n\nThe dominant models are based on complex")
    assert "d_k=64" in txt and "softmax(Q K^T/√(d_k)) V" in txt
    assert "ByteNet\t23.75" in txt and "\\" not in txt and "$" not in txt
    # plain mode is plain text, left alone
    assert postprocess("got_ocr_hf", "50\\% of x", task="text").text == "50\\% of x"


@pytest.mark.parametrize("latex, markdown, text", [
    ("\\section{Intro} text", "## Intro\n\ntext", "Intro\n\ntext"),
    ("\\subsection*{Methods}", "### Methods", "Methods"),
    ("\\textit{word} and \\emph{other}", "*word* and *other*", "word and other"),
    ("a \\footnote{note} b", "a (note) b", "a (note) b"),
    ("\\begin{enumerate}\\item one \\item two\\end{enumerate}", "1. one\n2. two", "one\ntwo"),
    ("\\begin{equation} E=mc^2 \\end{equation}", "$$\nE=mc^2\n$$", "E=mc^2"),
    ("100\\% \\& more", "100% & more", "100% & more"),
    ("Cost: 100% & 20 items", "Cost: 100% & 20 items", "Cost: 100% & 20 items"),   # not LaTeX: untouched
    ("\\unknownmacro text", "text", "text"),
    ("\\begin{tabular}{cc} a|b & c \\\\ \\end{tabular}", "| a\\|b | c |\n|---|---|", "a|b\tc"),
])
def test_constructs(latex, markdown, text):
    assert latex_markdown(latex) == markdown
    assert latex_text(latex) == text


def test_coordinate_comments_and_math_text():
    comments = coordinate_comments("<!-- Image (1, 2, 3, 4) -->\nx\n<!-- Table (10,20,30,40) -->")
    assert [(k, b) for k, b, _, _ in comments] == [("Image", [1, 2, 3, 4]), ("Table", [10, 20, 30, 40])]
    assert math_text("\\frac{a}{b} + \\beta^{2}") == "a/b + β^2"
