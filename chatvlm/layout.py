"""The layout toolkit shared by every model that gives boxes (dots.ocr, DeepSeek-OCR, tesseract).

- schema: LayoutBlock (records.py) with dots.ocr's 11 categories; other labels map onto them
- boxes mapped from a model's input frame back to page pixels, clamped to the page
- salvage of truncated or looping JSON output (keep complete blocks, drop the broken tail,
  drop repeats) — the page is then marked `repaired`, never silently
- markdown rendering (formulas as $$ blocks, tables as HTML, pictures as cropped files)
- overlay pictures: each block's box, index and category in a colour per category
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Optional

from .records import LayoutBlock

CATEGORIES = (
    "Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header",
    "Picture", "Section-header", "Table", "Text", "Title",
)

COLOURS = {
    "Text": (0, 128, 0), "Picture": (255, 0, 255), "Caption": (255, 165, 0),
    "Section-header": (0, 200, 200), "Footnote": (0, 128, 0), "Formula": (128, 128, 128),
    "Table": (230, 90, 150), "Title": (255, 0, 0), "List-item": (0, 0, 255),
    "Page-header": (0, 128, 0), "Page-footer": (128, 0, 128), "Other": (165, 42, 42),
}

# Labels other models use, lower-cased, onto the schema's categories.
_ALIASES = {
    "text": "Text", "paragraph": "Text", "plain text": "Text", "abstract": "Text", "reference": "Text",
    "title": "Title", "doc_title": "Title",
    "sub_title": "Section-header", "subtitle": "Section-header", "section-header": "Section-header",
    "section_header": "Section-header", "heading": "Section-header", "header_text": "Section-header",
    "table": "Table", "table_caption": "Caption", "figure_caption": "Caption", "caption": "Caption",
    "image_caption": "Caption", "table_footnote": "Footnote", "footnote": "Footnote",
    "image": "Picture", "figure": "Picture", "picture": "Picture", "chart": "Picture", "seal": "Picture",
    "equation": "Formula", "formula": "Formula", "isolate_formula": "Formula", "interline_equation": "Formula",
    "list": "List-item", "list-item": "List-item", "list_item": "List-item",
    "header": "Page-header", "page-header": "Page-header", "page_header": "Page-header",
    "footer": "Page-footer", "page-footer": "Page-footer", "page_footer": "Page-footer",
    "page_number": "Page-footer",
}


def normalize_category(label: Optional[str]) -> str:
    if not label:
        return "Text"
    label = str(label).strip()
    if label in CATEGORIES:
        return label
    return _ALIASES.get(label.lower(), _ALIASES.get(label.lower().replace(" ", "_"), "Text"))


# --------------------------------------------------------------------------- boxes

def clamp_bbox(bbox: Iterable[float], width: int, height: int) -> Optional[list[int]]:
    """Clamp to the page; None when the box is empty or inverted after clamping."""
    try:
        x1, y1, x2, y2 = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
    y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
    if x2 <= x1 or y2 <= y1:
        return None
    return [int(x1), int(y1), int(round(x2)), int(round(y2))]


def scale_bbox(bbox: Iterable[float], from_size: tuple[float, float], to_size: tuple[int, int]) -> list[float]:
    """Map a box from a model's input frame (w, h) onto the page (w, h)."""
    fw, fh = from_size
    tw, th = to_size
    x1, y1, x2, y2 = bbox
    sx, sy = tw / fw, th / fh
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def cells_to_blocks(cells: list[dict[str, Any]], frame_size: tuple[float, float],
                    page_size: tuple[int, int]) -> list[LayoutBlock]:
    """dots-style cells ({bbox, category, text}) in the model frame -> blocks in page pixels."""
    blocks: list[LayoutBlock] = []
    for cell in cells:
        bbox = cell.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            continue
        try:
            mapped = scale_bbox([float(v) for v in bbox], frame_size, page_size)
        except (TypeError, ValueError):
            continue
        clamped = clamp_bbox(mapped, *page_size)
        if clamped is None:
            continue
        text = cell.get("text")
        blocks.append(LayoutBlock(bbox=clamped, category=normalize_category(cell.get("category")),
                                  text="" if text is None else str(text), order=len(blocks)))
    return blocks


# --------------------------------------------------------------------------- salvage

_CELL_RE = re.compile(r"\{[^{}]*?\"bbox\"\s*:\s*\[[^\]]*?\][^{}]*?\}", re.DOTALL)


def parse_cells(raw: str) -> tuple[list[dict[str, Any]], bool, int]:
    """Parse a model's JSON array of cells, salvaging what a truncated or looping output allows.

    Returns (cells, repaired, dropped): repaired is True when the text was not valid JSON
    or blocks had to be dropped; dropped counts the blocks removed as repeats.
    """
    text = raw.strip()
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)  # models sometimes fence their JSON
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            data = [data]
        if isinstance(data, list) and all(isinstance(c, dict) for c in data):
            cells, dropped = _drop_repeats(data)
            return cells, dropped > 0, dropped
    except json.JSONDecodeError:
        pass
    # Truncated or malformed: keep every complete cell object; the broken tail is dropped.
    cells = []
    for match in _CELL_RE.finditer(text):
        try:
            cell = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(cell, dict):
            cells.append(cell)
    cells, dropped = _drop_repeats(cells)
    return cells, True, dropped


def _drop_repeats(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """A looping model repeats blocks: drop a box seen before, and a (category, text) seen 5+ times."""
    def pair_of(cell: dict[str, Any]) -> tuple[str, str]:
        return str(cell.get("category")), str(cell.get("text", ""))

    totals: dict[tuple[str, str], int] = {}
    for cell in cells:
        totals[pair_of(cell)] = totals.get(pair_of(cell), 0) + 1
    seen_boxes: set[tuple] = set()
    seen_pairs: set[tuple[str, str]] = set()
    kept = []
    for cell in cells:
        bbox = cell.get("bbox")
        box_key = tuple(bbox) if isinstance(bbox, list) else None
        pair = pair_of(cell)
        if box_key is not None and box_key in seen_boxes:
            continue
        if pair in seen_pairs and totals[pair] >= 5:
            continue
        if box_key is not None:
            seen_boxes.add(box_key)
        seen_pairs.add(pair)
        kept.append(cell)
    return kept, len(cells) - len(kept)


# --------------------------------------------------------------------------- markdown

_HAS_LATEX = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\begin\{.*?\}.*?\\end\{.*?\}|\\[a-zA-Z]+\{.*?\}|\\[a-zA-Z]+|\\\[.*?\\\]|\\\(.*?\\\)", re.DOTALL)


def formula_markdown(text: str) -> str:
    """LaTeX from a Formula block as a display-math markdown block (dots.ocr's rules)."""
    t = text.strip()
    if t.startswith("$$") and t.endswith("$$") and len(t) >= 4:
        inner = t[2:-2].strip()
        return f"$$\n{inner}\n$$" if "$" not in inner else t
    if t.startswith("\\[") and t.endswith("\\]"):
        return f"$$\n{t[2:-2].strip()}\n$$"
    if re.search(r"\\\[.*?\\\]", t, re.DOTALL) or re.search(r"\$.*?\$", t, re.DOTALL):
        return t
    if not _HAS_LATEX.search(t):
        return t
    if "usepackage" in t:
        t = re.sub(r"\\documentclass\{.*?\}|\\usepackage(\[.*?\])?\{.*?\}|\\begin\{document\}|\\end\{document\}", "", t).strip()
    if t.startswith("`") and t.endswith("`"):
        t = t[1:-1]
    return f"$$\n{t}\n$$"


def _clean_text(text: str) -> str:
    t = text.strip()
    if t.startswith("`$") and t.endswith("$`"):
        t = t[1:-1]
    return t


def blocks_to_markdown(blocks: list[LayoutBlock], skip_headers: bool = False,
                       picture_names: Optional[dict[int, str]] = None) -> str:
    """Render blocks in reading order; pictures become links to cropped image files."""
    parts = []
    for i, block in enumerate(blocks):
        if skip_headers and block.category in ("Page-header", "Page-footer"):
            continue
        if block.category == "Picture":
            name = (picture_names or {}).get(i)
            if name:
                parts.append(f"![]({name})")
            if block.text.strip():
                parts.append(_clean_text(block.text))
            continue
        if not block.text.strip():
            continue
        if block.category == "Formula":
            parts.append(formula_markdown(block.text))
        else:
            parts.append(_clean_text(block.text))
    return "\n\n".join(parts) + ("\n" if parts else "")


def markdown_to_text(markdown: str) -> str:
    """Plain text from markdown: drop heading marks, emphasis, image links and HTML tags."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", markdown)
    text = re.sub(r"</t[dh]>\s*<t[dh][^>]*>", "\t", text)
    text = re.sub(r"</tr>", "\n", text)
    text = re.sub(r"<br\s*/?>", "\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"^\s{0,3}#{1,6}\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"^\s*\$\$\s*$", "", text, flags=re.MULTILINE)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n" if text.strip() else ""


def picture_crops(image, blocks: list[LayoutBlock], stem: str) -> tuple[dict[int, str], dict[str, Any]]:
    """Crop every Picture block: ({block index: file name}, {file name: PIL image})."""
    names: dict[int, str] = {}
    crops: dict[str, Any] = {}
    if image is None:
        return names, crops
    n = 0
    for i, block in enumerate(blocks):
        if block.category != "Picture":
            continue
        n += 1
        name = f"{stem}-picture-{n}.png"
        names[i] = name
        crops[name] = image.crop(tuple(block.bbox))
    return names, crops


# --------------------------------------------------------------------------- overlay

def draw_overlay(image, blocks: list[LayoutBlock]):
    """The page with each block's box filled at 30 % and labelled `index_category`."""
    from PIL import Image, ImageDraw, ImageFont

    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(12, min(base.size) // 60)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        font = ImageFont.load_default()
    for i, block in enumerate(blocks):
        colour = COLOURS.get(block.category, (0, 128, 0))
        x1, y1, x2, y2 = block.bbox
        draw.rectangle([x1, y1, x2, y2], fill=colour + (77,), outline=colour + (255,), width=2)
        draw.text((x1 + 2, max(0, y1 - size - 2)), f"{i}_{block.category}", fill=colour + (255,), font=font)
    return Image.alpha_composite(base, layer).convert("RGB")
