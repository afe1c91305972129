"""olmOCR-bench `table` rules: a cell, and what sits next to it, in some table on the page.

Tables are read from the page's markdown (pipe tables) and HTML (`<table>`, with rowspan,
colspan, `<th>` and `<thead>` headings). A pipe table's first row and first column are its
headings. A rule names a `cell` and optionally the text `up`, `down`, `left`, `right` of
it (the next cell in that direction; spans can give several) and its `top_heading` /
`left_heading` (any heading cell above / to the left). Texts are compared with rapidfuzz
`ratio` in olmOCR-bench's normal form, passing at max(0.5, 1 - max_diffs / len(text)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Optional

from .olmocr_text import fuzzy_threshold, normalize_text, rule_max_diffs

Pos = tuple[int, int]


@dataclass
class CellSpec:
    text: str
    rowspan: int = 1
    colspan: int = 1
    heading: bool = False


@dataclass
class Table:
    """Cells by their top-left position, and for each cell its neighbours in each direction."""

    text: dict[Pos, str] = field(default_factory=dict)
    headings: set[Pos] = field(default_factory=set)
    up: dict[Pos, set[Pos]] = field(default_factory=dict)
    down: dict[Pos, set[Pos]] = field(default_factory=dict)
    left: dict[Pos, set[Pos]] = field(default_factory=dict)
    right: dict[Pos, set[Pos]] = field(default_factory=dict)
    top_heading: dict[Pos, set[Pos]] = field(default_factory=dict)
    left_heading: dict[Pos, set[Pos]] = field(default_factory=dict)


def build_table(rows: list[list[CellSpec]]) -> Optional[Table]:
    """Lay the cells out on a grid (spans fill every slot they cover) and link neighbours."""
    grid: dict[Pos, Pos] = {}          # slot -> the cell covering it
    spans: dict[Pos, tuple[int, int]] = {}
    table = Table()
    for r, specs in enumerate(rows):
        c = 0
        for spec in specs:
            while (r, c) in grid:      # slots taken by a rowspan from above
                c += 1
            table.text[(r, c)] = spec.text
            if spec.heading:
                table.headings.add((r, c))
            spans[(r, c)] = (spec.rowspan, spec.colspan)
            for dr in range(spec.rowspan):
                for dc in range(spec.colspan):
                    grid[(r + dr, c + dc)] = (r, c)
            c += spec.colspan
    if not table.text:
        return None
    height = max(r for r, _ in grid) + 1
    width = max(c for _, c in grid) + 1

    def first(cell: Pos, slots) -> set[Pos]:
        """The first other cell met walking along each line of slots."""
        found = set()
        for line in slots:
            for slot in line:
                other = grid.get(slot)
                if other is not None and other != cell:
                    found.add(other)
                    break
        return found

    def every_heading(cell: Pos, slots) -> set[Pos]:
        return {grid[s] for line in slots for s in line if grid.get(s) not in (None, cell) and grid[s] in table.headings}

    for cell, (rowspan, colspan) in spans.items():
        r0, c0 = cell
        r1, c1 = r0 + rowspan - 1, c0 + colspan - 1
        rows_of = range(r0, r1 + 1)
        cols_of = range(c0, c1 + 1)
        above = [[(r, c) for r in range(r0 - 1, -1, -1)] for c in cols_of]
        leftwards = [[(r, c) for c in range(c0 - 1, -1, -1)] for r in rows_of]
        table.up[cell] = first(cell, above)
        table.down[cell] = first(cell, [[(r, c) for r in range(r1 + 1, height)] for c in cols_of])
        table.left[cell] = first(cell, leftwards)
        table.right[cell] = first(cell, [[(r, c) for c in range(c1 + 1, width)] for r in rows_of])
        table.top_heading[cell] = every_heading(cell, above)
        table.left_heading[cell] = every_heading(cell, leftwards)
    return table


# --------------------------------------------------------------------------- markdown tables

def _is_separator(line: str) -> bool:
    body = line.replace("|", "").strip()
    return bool(body) and all(c in "- :" for c in body)


def _table_rows(lines: list[str]) -> list[list[str]]:
    separator = next((i for i, line in enumerate(lines) if _is_separator(line)), None)
    rows = []
    for i, line in enumerate(lines):
        if i == separator or (line.strip() and all(c in "- :|" for c in line)):
            continue
        cells = [cell.strip() for cell in line.split("|")]
        if cells and cells[0] == "":
            cells = cells[1:]
        if cells and cells[-1] == "":
            cells = cells[:-1]
        if cells:
            rows.append(cells)
    return rows


def markdown_tables(page: str) -> list[Table]:
    """Every run of two or more consecutive lines holding a `|`, as a table."""
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in page.strip().split("\n") + [""]:
        if "|" in line:
            current.append(line)
            continue
        if len(current) >= 2:
            blocks.append(current)
        current = []
    tables = []
    for block in blocks:
        rows = _table_rows(block)
        specs = [[CellSpec(text, heading=(r == 0 or c == 0)) for c, text in enumerate(row)] for r, row in enumerate(rows)]
        table = build_table(specs) if specs else None
        if table is not None:
            tables.append(table)
    return tables


# --------------------------------------------------------------------------- HTML tables

def _span(value: Optional[str]) -> int:
    try:
        number = int(value) if value not in (None, "") else 1
    except ValueError:
        return 1
    return number if number > 0 else 1


class _HTMLTables(HTMLParser):
    """Collects each <table>'s rows of cells (text, spans, heading); nested tables apart."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[dict[str, Any]]]] = []
        self._stack: list[dict[str, Any]] = []   # open tables: rows, open cell, in <thead>

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._stack.append({"rows": [], "cell": None, "thead": False})
        elif not self._stack:
            return
        top = self._stack[-1]
        if tag == "thead":
            top["thead"] = True
        elif tag == "tr":
            self._close_cell(top)
            top["rows"].append([])
        elif tag in ("td", "th"):
            self._close_cell(top)
            if not top["rows"]:
                top["rows"].append([])
            top["cell"] = {"text": [], "rowspan": attrs.get("rowspan"), "colspan": attrs.get("colspan"),
                           "heading": tag == "th" or top["thead"]}
        elif tag == "br" and top["cell"] is not None:
            top["cell"]["text"].append("\n")

    def handle_endtag(self, tag):
        if not self._stack:
            return
        top = self._stack[-1]
        if tag in ("td", "th", "tr"):
            self._close_cell(top)
        elif tag == "thead":
            top["thead"] = False
        elif tag == "table":
            self._close_cell(top)
            self.tables.append(self._stack.pop()["rows"])

    def handle_data(self, data):
        if self._stack and self._stack[-1]["cell"] is not None:
            self._stack[-1]["cell"]["text"].append(data)

    @staticmethod
    def _close_cell(top):
        cell = top["cell"]
        if cell is not None:
            cell["text"] = "".join(cell["text"]).strip()
            top["rows"][-1].append(cell)
            top["cell"] = None


def html_tables(page: str) -> list[Table]:
    parser = _HTMLTables()
    parser.feed(page)
    parser.close()
    tables = []
    for rows in parser.tables:
        specs = [[CellSpec(cell["text"], colspan=_span(cell["colspan"]), heading=cell["heading"],
                           # rowspan="0" reaches the end of the table
                           rowspan=len(rows) - r if str(cell["rowspan"]).strip() == "0" else _span(cell["rowspan"]))
                  for cell in row]
                 for r, row in enumerate(rows)]
        table = build_table(specs)
        if table is not None:
            tables.append(table)
    return tables


# --------------------------------------------------------------------------- the rule

_RELATIONS = ("up", "down", "left", "right", "top_heading", "left_heading")


def check_table(rule: dict[str, Any], page: str) -> tuple[bool, str]:
    from rapidfuzz import fuzz

    max_diffs = rule_max_diffs(rule)
    cell = normalize_text(rule.get("cell"))
    wanted = {name: normalize_text(rule.get(name)) for name in _RELATIONS}
    threshold = max(0.5, fuzzy_threshold(max_diffs, cell))
    tables = ([] if rule.get("ignore_markdown_tables") else markdown_tables(page)) + html_tables(page)
    if not tables:
        return False, "no tables on the page"
    reasons: list[str] = []
    for table in tables:
        texts = {pos: normalize_text(text) for pos, text in table.text.items()}
        for pos in (p for p, text in texts.items() if fuzz.ratio(cell, text) / 100.0 >= threshold):
            missing = []
            for name, expected in wanted.items():
                if not expected:
                    continue
                need = max(0.5, fuzzy_threshold(max_diffs, expected))
                scores = {texts[n]: fuzz.ratio(expected, texts[n]) / 100.0 for n in getattr(table, name)[pos]}
                if not any(score >= need for score in scores.values()):
                    best = max(scores, key=scores.get, default=None)
                    missing.append(f"{name}: expected {expected[:40]!r}, nearest {best[:40] if best else None!r}")
            if not missing:
                return True, ""
            reasons += missing
    if not reasons:
        return False, f"no cell matching {cell[:40]!r} in any table"
    return False, "cell found, but " + "; ".join(reasons[:4])
