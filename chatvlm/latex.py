"""LaTeX in model output, made into markdown and plain text (parsing by pylatexenc).

Two models write LaTeX into their markdown: Qwen3-VL's "qwenvl markdown" (tables as
`tabular`, math as `$…$`, pictures and tables announced by `<!-- Image (x1, y1, x2, y2) -->`
comments) and GOT-OCR2's format mode (Mathpix-style: `\\title{}`, `\\section*{}`,
`\\textbf{}`, `\\(…\\)`, `\\[…\\]`, `itemize`, `tabular`). Neither belongs raw in a .md or .txt
file, so:

- `latex_markdown(text)`: tables become markdown pipe tables (HTML tables when cells span
  rows or columns), sectioning becomes headings, `\\textbf`/`\\emph` bold/italic, lists
  markdown lists; math stays math, as `$…$` inline and `$$…$$` display; other macros
  become their text; the coordinate comments are dropped (`coordinate_comments` gives them
  to whoever maps them to layout blocks).
- `latex_text(text)`: the same page as plain text: table rows as tab-separated lines,
  math written out as text (`\\frac{a}{b}` -> `a/b`, `\\alpha` -> `α`), no markup.

Only LaTeX constructs are touched: the text between them is copied as it is, so the
markdown around them (and a `%` or `&` in it) is never read as LaTeX. Every construct is
parsed by pylatexenc's LatexWalker, which knows the arguments of standard macros; what it
cannot parse is left as written.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Optional

# Qwen3-VL document parsing marks pictures and tables with their box (0-1000 relative).
COORDINATE_COMMENT = re.compile(
    r"<!--\s*([A-Za-z][\w -]*?)\s*\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,"
    r"\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)\s*-->[ \t]*\n?")

TABLE_ENVS = {"tabular", "tabular*", "tabularx", "longtable", "tabu", "array"}
MATH_ENVS = {"equation", "equation*", "align", "align*", "gather", "gather*", "multline", "multline*",
             "eqnarray", "eqnarray*", "displaymath", "math", "flalign", "flalign*", "alignat", "alignat*"}
LIST_ENVS = {"itemize": "-", "enumerate": "1.", "description": "-"}
HEADINGS = {"title": 1, "chapter": 1, "part": 1, "section": 2, "subsection": 3, "subsubsection": 4}
BOLD = {"textbf", "bf", "bfseries", "paragraph", "subparagraph"}
ITALIC = {"textit", "emph", "it", "itshape", "textsl"}
PLAIN = {"text", "textrm", "textsf", "underline", "uline", "mbox", "textnormal", "textup", "textsc", "url",
         "author", "date", "caption", "footnote", "textsuperscript", "textsubscript", "mathrm"}
RULES = {"hline", "cline", "toprule", "midrule", "bottomrule", "cmidrule", "hhline", "noalign", "rowcolor",
         "cellcolor", "arrayrulecolor", "centering", "raggedright", "raggedleft", "small", "footnotesize",
         "scriptsize", "tiny", "large", "Large", "normalsize", "maketitle", "newpage", "clearpage", "noindent",
         "label", "vspace", "hspace", "vfill", "hfill", "par", "linebreak", "pagebreak"}
# \% \& \_ ... : the character (markdown keeps its own escapes for the ones it has)
ESCAPED = set("%&_#${}~^ ")
MARKDOWN_ESCAPES = set("_#$*")


@lru_cache(maxsize=1)
def _context():
    """pylatexenc's default macro table plus the table macros it does not know."""
    from pylatexenc.latexwalker import get_default_latex_context_db
    from pylatexenc.macrospec import MacroSpec

    db = get_default_latex_context_db()
    db.add_context_category("chatvlm-tables", prepend=True, macros=[
        MacroSpec("multicolumn", "{{{"), MacroSpec("multirow", "{[{{"), MacroSpec("cline", "{"),
        MacroSpec("cmidrule", "[{"), MacroSpec("caption", "[{"), MacroSpec("textsuperscript", "{"),
        MacroSpec("textsubscript", "{"), MacroSpec("href", "{{"), MacroSpec("rowcolor", "[{"),
        MacroSpec("cellcolor", "[{"), MacroSpec("label", "{"), MacroSpec("vspace", "*{"),
        MacroSpec("hspace", "*{"), MacroSpec("text", "{"), MacroSpec("mathrm", "{"),
    ])
    return db


@lru_cache(maxsize=1)
def _to_text():
    from pylatexenc.latex2text import LatexNodes2Text

    return LatexNodes2Text(math_mode="text", keep_comments=False, strict_latex_spaces=False)


def math_text(latex: str) -> str:
    """Math written out as text: `\\frac{m}{2}` -> `m/2`, `\\alpha^{2}` -> `α^2`."""
    try:
        return " ".join(_to_text().latex_to_text(latex).split())
    except Exception:       # pylatexenc is tolerant; anything left is shown as written
        return latex.strip()


def coordinate_comments(text: str) -> list[tuple[str, list[float], int, int]]:
    """Qwen3-VL's `<!-- Kind (x1, y1, x2, y2) -->` comments: (kind, box, start, end) each."""
    return [(m.group(1).strip(), [float(m.group(i)) for i in range(2, 6)], m.start(), m.end())
            for m in COORDINATE_COMMENT.finditer(text)]


def has_latex(text: str) -> bool:
    return bool(re.search(r"\\[A-Za-z\[(]|\$|<!--", text))


def latex_markdown(text: str) -> str:
    """Markdown with the LaTeX in it converted (tables, headings, emphasis, lists), math
    kept as `$…$` / `$$…$$`, coordinate comments dropped."""
    return _tidy(_Converter(markdown=True).convert(COORDINATE_COMMENT.sub("", text or "")))


def latex_text(text: str) -> str:
    """The same as plain text: tables as tab-separated rows, math written out."""
    return _tidy(_Converter(markdown=False).convert(COORDINATE_COMMENT.sub("", text or "")))


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n\n {1,3}(?=\S)", "\n\n", text)     # the source's space after a block
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _block(text: str) -> str:
    """A block element (heading, table, display math) on its own paragraph."""
    return "\n\n" + text.strip("\n") + "\n\n"


class _Converter:
    def __init__(self, markdown: bool):
        self.markdown = markdown

    # ------------------------------------------------------------------ the scan
    def convert(self, src: str) -> str:
        out: list[str] = []
        i, n = 0, len(src)
        while i < n:
            j = _next_special(src, i)
            if j < 0:
                out.append(src[i:])
                break
            out.append(src[i:j])
            piece, end = self.construct(src, j)
            out.append(piece)
            i = max(end, j + 1)
        return "".join(out)

    def construct(self, src: str, j: int) -> tuple[str, int]:
        """The converted construct starting at src[j] ('\\' or '$') and where it ends."""
        if src[j] == "$":
            return self.dollar_math(src, j)
        nxt = src[j + 1] if j + 1 < len(src) else ""
        if nxt in "([":
            close = "\\)" if nxt == "(" else "\\]"
            end = src.find(close, j + 2)
            if end < 0:
                return src[j:j + 2], j + 2
            return self.math(src[j + 2:end], display=nxt == "["), end + 2
        if nxt == "\\":
            return "\n", j + 2
        if nxt in ESCAPED:
            if self.markdown and nxt in MARKDOWN_ESCAPES:
                return src[j:j + 2], j + 2
            return nxt, j + 2
        if not nxt.isalpha():
            return src[j], j + 1
        node, end = self.parse_one(src, j)
        if node is None:
            m = re.match(r"\\[A-Za-z]+", src[j:])
            return src[j:j + m.end()], j + m.end()
        return self.node(node), end

    def parse_one(self, src: str, j: int) -> tuple[Any, int]:
        from pylatexenc.latexwalker import LatexWalker

        try:
            walker = LatexWalker(src, latex_context=_context(), tolerant_parsing=True)
            nodes, pos, length = walker.get_latex_nodes(pos=j, read_max_nodes=1)
        except Exception:
            return None, j
        if not nodes:
            return None, j
        node = nodes[0]
        return node, node.pos + node.len

    # ------------------------------------------------------------------ math
    def dollar_math(self, src: str, j: int) -> tuple[str, int]:
        if src.startswith("$$", j):
            end = src.find("$$", j + 2)
            if end < 0:
                return "$$", j + 2
            return self.math(src[j + 2:end], display=True), end + 2
        # pandoc's rule for inline $…$: no space inside the delimiters, no digit after the
        # closing one, one paragraph at most; else it is a dollar sign.
        m = re.compile(r"\$(?=\S)((?:\\.|[^$\\])+?)(?<=\S)\$(?!\d)", re.S).match(src, j)
        if not m or "\n\n" in m.group(1):
            return "$", j + 1
        return self.math(m.group(1), display=False), m.end()

    def math(self, latex: str, display: bool) -> str:
        if self.markdown:
            return _block(f"$$\n{latex.strip()}\n$$") if display else f"${latex.strip()}$"
        text = math_text(latex)
        return _block(text) if display else text

    # ------------------------------------------------------------------ nodes
    def node(self, node) -> str:
        from pylatexenc.latexwalker import LatexEnvironmentNode, LatexMacroNode

        if isinstance(node, LatexEnvironmentNode):
            return self.environment(node)
        if isinstance(node, LatexMacroNode):
            return self.macro(node)
        return self.convert(node.latex_verbatim())

    def environment(self, env) -> str:
        name = env.environmentname
        if name in TABLE_ENVS:
            return _block(self.table(env))
        if name in MATH_ENVS:
            body = _inner(env)
            if self.markdown:
                inner = body.strip() if name in ("equation", "equation*", "displaymath", "math") else env.latex_verbatim()
                return _block(f"$$\n{inner}\n$$")
            return _block(math_text(body))
        if name in LIST_ENVS:
            return _block(self.items(env, LIST_ENVS[name]))
        return _block(self.convert(_inner(env)))      # table, figure, center, abstract, ...

    def macro(self, node) -> str:
        name = node.macroname
        args = _args(node)
        if name in RULES:
            return ""
        if name in HEADINGS:
            text = " ".join(self.convert(args[-1]).split()) if args else ""
            if not text:
                return ""
            return _block(("#" * HEADINGS[name] + " " + text) if self.markdown else text)
        if name in BOLD or name in ITALIC:
            text = self.convert(args[-1]).strip() if args else ""
            if not self.markdown or not text:
                return text
            mark = "**" if name in BOLD else "*"
            text = f"{mark}{text}{mark}"
            return _block(text) if name in ("paragraph", "subparagraph") else text
        if name == "texttt":
            text = self.convert(args[-1]) if args else ""
            return f"`{text}`" if self.markdown and text else text
        if name == "href":
            return self.convert(args[-1]) if args else ""
        if name == "item":             # an \item outside a list environment
            return "\n- "
        if name in ("newline", "tabularnewline"):
            return "\n"
        if name in PLAIN:
            text = self.convert(args[-1]) if args else ""
            if name == "footnote":
                return f"({text.strip()})"
            if name == "caption":
                return _block(text)
            return text
        if name in ("multicolumn", "multirow"):
            return self.convert(args[-1]) if args else ""
        # Anything else: pylatexenc's own text for it (symbols, accents, \LaTeX, ...).
        try:
            return _to_text().nodelist_to_text([node])
        except Exception:
            return node.latex_verbatim()

    def items(self, env, marker: str) -> str:
        from pylatexenc.latexwalker import LatexMacroNode

        items: list[list[Any]] = []
        for child in env.nodelist or []:
            if isinstance(child, LatexMacroNode) and child.macroname == "item":
                items.append([])
            elif items:
                items[-1].append(child)
        lines = []
        for k, nodes in enumerate(items, 1):
            text = " ".join(self.convert("".join(n.latex_verbatim() for n in nodes)).split())
            bullet = f"{k}." if marker == "1." else "-"
            lines.append(f"{bullet} {text}" if self.markdown else text)
        return "\n".join(lines)

    # ------------------------------------------------------------------ tables
    def table(self, env) -> str:
        rows = self.table_rows(env)
        if not rows:
            return ""
        if not self.markdown:
            return "\n".join("\t".join(text + "\t" * (span - 1) for text, span, _ in row) for row in rows)
        if any(span > 1 or down > 1 for row in rows for _, span, down in row):
            return _html_table(rows)
        width = max(len(row) for row in rows)
        lines = []
        for k, row in enumerate(rows):
            cells = [text.replace("|", "\\|") for text, _, _ in row] + [""] * (width - len(row))
            lines.append("| " + " | ".join(cells) + " |")
            if k == 0:
                lines.append("|" + "|".join(["---"] * width) + "|")
        return "\n".join(lines)

    def table_rows(self, env) -> list[list[tuple[str, int, int]]]:
        """Rows of (cell text, colspan, rowspan); rules (\\hline, ...) skipped."""
        from pylatexenc.latexwalker import LatexCharsNode, LatexMacroNode, LatexSpecialsNode

        rows: list[list[tuple[str, int, int]]] = []
        row: list[tuple[str, int, int]] = []
        cell: list[Any] = []

        def end_cell():
            row.append(self.cell(cell))
            cell.clear()

        for child in env.nodelist or []:
            if isinstance(child, LatexMacroNode) and child.macroname in ("\\", "tabularnewline"):
                end_cell()
                rows.append(list(row))
                row.clear()
            elif isinstance(child, LatexSpecialsNode) and child.specials_chars == "&":
                end_cell()
            elif isinstance(child, LatexMacroNode) and child.macroname in RULES:
                continue
            else:
                cell.append(child)
        if row or any(not (isinstance(c, LatexCharsNode) and not c.chars.strip()) for c in cell):
            end_cell()
            rows.append(list(row))
        return rows

    def cell(self, nodes: list[Any]) -> tuple[str, int, int]:
        from pylatexenc.latexwalker import LatexCharsNode, LatexMacroNode

        solid = [n for n in nodes if not (isinstance(n, LatexCharsNode) and not n.chars.strip())]
        colspan = rowspan = 1
        while len(solid) == 1 and isinstance(solid[0], LatexMacroNode) and solid[0].macroname in ("multicolumn", "multirow"):
            macro = solid[0]
            args = _args(macro)
            count = _int(args[0]) if args else None
            if macro.macroname == "multicolumn":
                colspan = count or 1
            else:
                rowspan = count or 1
            solid = _parse_nodes(args[-1]) if args else []
        text = self.convert("".join(n.latex_verbatim() for n in solid))
        return " ".join(text.split()), colspan, rowspan


# --------------------------------------------------------------------------- helpers

def _next_special(src: str, i: int) -> int:
    a, b = src.find("\\", i), src.find("$", i)
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


def _inner(env) -> str:
    return "".join(n.latex_verbatim() for n in (env.nodelist or []))


def _args(node) -> list[str]:
    """The LaTeX source of a macro's given arguments (braces removed), in order."""
    from pylatexenc.latexwalker import LatexGroupNode

    parsed = getattr(node, "nodeargd", None)
    out = []
    for arg in (getattr(parsed, "argnlist", None) or []):
        if arg is None:
            continue
        if isinstance(arg, LatexGroupNode):
            if arg.delimiters and arg.delimiters[0] == "[":
                continue            # optional arguments carry layout, not text
            out.append("".join(n.latex_verbatim() for n in (arg.nodelist or [])))
        elif hasattr(arg, "latex_verbatim"):
            text = arg.latex_verbatim()
            if text not in ("*",):
                out.append(text)
    return out


def _parse_nodes(src: str) -> list[Any]:
    from pylatexenc.latexwalker import LatexWalker

    try:
        nodes, _, _ = LatexWalker(src, latex_context=_context(), tolerant_parsing=True).get_latex_nodes(pos=0)
    except Exception:
        return []
    return list(nodes or [])


def _int(text: str) -> Optional[int]:
    try:
        return max(1, int(str(text).strip()))
    except ValueError:
        return None


def _html_table(rows: list[list[tuple[str, int, int]]]) -> str:
    """An HTML table for cells that span rows or columns. LaTeX writes an empty cell under
    a \\multirow; HTML must not, so cells covered by a rowspan from above are skipped."""
    import html

    covered: dict[int, int] = {}          # column -> rows still covered by a rowspan above
    out = ["<table>"]
    for row in rows:
        col, cells = 0, []
        for text, span, down in row:
            if covered.get(col, 0) > 0:
                covered[col] -= 1
                if not text:            # LaTeX's placeholder under a \multirow
                    col += 1
                    continue
            attrs = (f' colspan="{span}"' if span > 1 else "") + (f' rowspan="{down}"' if down > 1 else "")
            cells.append(f"<td{attrs}>{html.escape(text, quote=False)}</td>")
            if down > 1:
                for c in range(col, col + span):
                    covered[c] = down - 1
            col += span
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)
