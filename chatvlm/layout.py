"""The layout toolkit shared by every model that gives boxes (dots.ocr, DeepSeek-OCR, tesseract).

Rules follow dots.ocr's own post-processing (../shared/reference/dots_ocr.md §7-§10):
- schema: LayoutBlock (records.py) with dots.ocr's 11 categories; other models' labels map
  onto them, an unknown label is kept as it is (never dropped)
- boxes mapped from a model's input frame back to page pixels (int-truncated like
  post_process_cells), clamped to the page; a block whose box has no place on the page
  keeps its text, with bbox None and the box's problem noted
- salvage of truncated or looping JSON output (keep every complete block, drop the broken
  tail, drop repeats) — the page is then marked `repaired` with a dropped count, never silently
- markdown rendering (layoutjson2md: formulas as $$ blocks, tables as HTML, pictures as
  cropped files linked from the markdown, optional header/footer skipping)
- overlay pictures: each block filled at 30 % in its category colour, `index_category` label
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any, Iterable, Optional

from .records import LayoutBlock

CATEGORIES = (
    "Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header",
    "Picture", "Section-header", "Table", "Text", "Title",
)

# dots.ocr's overlay colours (layout_utils.draw_layout_on_image); any other label falls back to green.
COLOURS = {
    "Text": (0, 128, 0), "Picture": (255, 0, 255), "Caption": (255, 165, 0),
    "Section-header": (0, 255, 255), "Footnote": (0, 128, 0), "Formula": (128, 128, 128),
    "Table": (255, 192, 203), "Title": (255, 0, 0), "List-item": (0, 0, 255),
    "Page-header": (0, 128, 0), "Page-footer": (128, 0, 128), "Other": (165, 42, 42),
    "Unknown": (0, 0, 0),
}
DEFAULT_COLOUR = (0, 128, 0)

# Every label a model gives a block, as a key (lower case, "-" and " " read as "_"), onto the
# schema's categories: the 11 names themselves, dots.ocr's variants, DeepSeek-OCR's grounding
# labels (<|ref|>sub_title<|/ref|>, ...), and what other layout models and Tesseract say.
LABEL_TO_CATEGORY = {
    # the categories' own names, however they are spelled
    **{name.lower().replace("-", "_"): name for name in CATEGORIES},
    "paragraph": "Text", "plain_text": "Text", "abstract": "Text", "reference": "Text", "code": "Text",
    "doc_title": "Title",
    "sub_title": "Section-header", "subtitle": "Section-header", "section_title": "Section-header",
    "heading": "Section-header", "header_text": "Section-header",
    "image_caption": "Caption", "figure_caption": "Caption", "table_caption": "Caption",
    "table_footnote": "Footnote", "image_footnote": "Footnote",
    "image": "Picture", "figure": "Picture", "chart": "Picture", "seal": "Picture",
    "equation": "Formula", "isolate_formula": "Formula", "interline_equation": "Formula",
    "list": "List-item",
    "header": "Page-header", "footer": "Page-footer", "page_number": "Page-footer",
}


def normalize_category(label: Optional[str]) -> str:
    """The schema category of a block's label, for every model that gives blocks.

    One of the 11 categories when the label is one or has a known alias; "Text" when it is
    empty (dots.ocr's own salvage default). Any other label is kept as it is, never turned
    into Text and never dropped: dots.ocr's post-processing treats an unknown category as
    unknown and keeps the cell (reference: dots_ocr.md §7), and DeepSeek-OCR's official
    runners keep every grounding label as written (reference: deepseek_ocr.md §4-5). So a
    label we do not know yet stays visible in the layout JSON instead of being mislabelled.
    """
    if label is None:
        return "Text"
    label = str(label).strip()
    if not label:
        return "Text"
    if label in CATEGORIES or label in COLOURS:
        return label
    return LABEL_TO_CATEGORY.get(label.lower().replace("-", "_").replace(" ", "_"), label)


# --------------------------------------------------------------------------- boxes

def clamp_bbox(bbox: Iterable[float], width: int, height: int) -> Optional[list[int]]:
    """Clamp to the page and truncate to ints (as dots.ocr's post_process_cells does);
    None when the box is not 4 numbers, or empty / inverted after clamping."""
    try:
        x1, y1, x2, y2 = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
    y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
    box = [int(x1), int(y1), int(x2), int(y2)]
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


def scale_bbox(bbox: Iterable[float], from_size: tuple[float, float], to_size: tuple[int, int]) -> list[float]:
    """Map a box from a model's input frame (w, h) onto the page (w, h)."""
    fw, fh = from_size
    tw, th = to_size
    x1, y1, x2, y2 = bbox
    sx, sy = tw / fw, th / fh
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def cells_to_blocks(cells: list[dict[str, Any]], frame_size: tuple[float, float],
                    page_size: tuple[int, int]) -> list[LayoutBlock]:
    """dots-style cells ({bbox, category, text}) in the model frame -> blocks in page pixels.

    Every cell becomes a block, in order. A cell whose bbox is missing, not 4 numbers,
    inverted or outside the page cannot be placed: its block keeps the text with bbox
    None and `problem` saying why (its words still belong in the page's markdown and text).
    """
    blocks: list[LayoutBlock] = []
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        bbox, problem = _place(cell.get("bbox"), frame_size, page_size)
        text = cell.get("text")
        blocks.append(LayoutBlock(bbox=bbox, category=normalize_category(cell.get("category")),
                                  text="" if text is None else str(text), order=len(blocks), problem=problem))
    return blocks


def _place(bbox: Any, frame_size: tuple[float, float], page_size: tuple[int, int]) -> tuple[Optional[list[int]], Optional[str]]:
    """(box in page pixels, None) or (None, what is wrong with the model's box)."""
    if bbox is None:
        return None, "no bbox"
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None, f"bbox is not 4 numbers: {json.dumps(bbox, ensure_ascii=False)[:80]}"
    try:
        mapped = scale_bbox([float(v) for v in bbox], frame_size, page_size)
    except (TypeError, ValueError, ZeroDivisionError):
        return None, f"bbox is not 4 numbers: {json.dumps(bbox, ensure_ascii=False)[:80]}"
    clamped = clamp_bbox(mapped, *page_size)
    if clamped is None:
        return None, f"bbox is empty or off the page: {json.dumps(list(bbox))}"
    return clamped, None


# --------------------------------------------------------------------------- salvage
#
# dots.ocr's own OutputCleaner (output_cleaner.py) keeps the complete cells of a broken
# output with a regex that cannot see a cell whose text holds a brace (every LaTeX
# formula): here the array is walked with a real JSON decoder instead, so every complete
# cell survives whatever its text. The rest follows the official steps: a missing ","
# between cells is tolerated, the unfinished last cell is dropped (unless it is the only
# one: then its bbox, category and the readable start of its text are kept), and the
# anti-loop pass drops a bbox seen before and a (category, text) pair seen 5+ times.
# Like the official cleaner, the anti-loop pass runs only on this salvage path: output
# that parses as JSON is the model's finished answer, and a form's six identical
# "Signature: ____" cells are six real cells.

_CELL_START = re.compile(r'\{\s*"bbox"\s*:')
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*(?:```\s*)?$", re.DOTALL)
REPEAT_PAIR_MIN = 5      # a (category, text) pair this often is a loop: keep the first


def parse_cells(raw: str) -> tuple[list[dict[str, Any]], bool, int]:
    """Parse a model's JSON array of cells, salvaging what a truncated or looping output allows.

    Returns (cells, repaired, dropped): repaired is True when the output was not a clean
    JSON array of cells (malformed or truncated, or holding items that are not cells; a
    ``` fence around valid JSON is not a repair); dropped counts the cells, or broken
    fragments of cells, left out. Repeated cells are dropped only when the JSON had to be
    salvaged (a looping model); a cell's box is judged later, by cells_to_blocks.
    """
    text = (raw or "").strip()
    if not text:
        return [], False, 0
    fenced = _FENCE.match(text) if text.startswith("```") else None
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        data = [data]
    if isinstance(data, list) and data:
        cells, bad = _clean_list(data)      # no anti-loop pass: the JSON is complete
        return cells, bad > 0, bad
    if isinstance(data, list):      # "[]": a page with nothing on it
        return [], False, 0
    cells, dropped = _scan_cells(text)
    if not cells:
        single = _single_partial_cell(text)
        if single is not None:
            cells, dropped = [single], max(0, dropped - 1)
    cleaned, bad = _clean_list(cells)
    cleaned, repeats = _drop_repeats(cleaned)
    return cleaned, True, dropped + bad + repeats


def _scan_cells(text: str) -> tuple[list[dict[str, Any]], int]:
    """Every complete JSON object in a broken array, in order; (cells, broken fragments)."""
    decoder = json.JSONDecoder()
    cells: list[dict[str, Any]] = []
    broken = 0
    start = text.find("{")
    pos = start if start >= 0 else len(text)
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in " \t\r\n,[]":
            pos += 1
        if pos >= n:
            break
        if text[pos] == "{":
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                obj, end = None, pos
            if isinstance(obj, dict):
                cells.append(obj)
                pos = end
                continue
            broken += 1     # an unfinished or mangled cell
        # Skip to the next cell start.
        nxt = _CELL_START.search(text, pos + 1)
        if nxt is None:
            break
        pos = nxt.start()
    return cells, broken


def _single_partial_cell(text: str) -> Optional[dict[str, Any]]:
    """The official last resort for an output that is one unfinished cell: its bbox (4 ints),
    category (default Text) and the start of its text (at most 10,000 characters)."""
    if not re.match(r'\[?\s*\{\s*"bbox"', text):
        return None
    box = re.search(r'"bbox"\s*:\s*\[([^\]]+)\]', text)
    if not box:
        return None
    try:
        coords = [int(float(v)) for v in box.group(1).split(",")]
    except ValueError:
        return None
    if len(coords) != 4:
        return None
    cat = re.search(r'"category"\s*:\s*"([^"]+)"', text)
    cell: dict[str, Any] = {"bbox": coords, "category": cat.group(1) if cat else "Text"}
    body = re.search(r'"text"\s*:\s*"(.{0,10000})', text, re.DOTALL)
    if body:
        partial = _partial_json_string(body.group(1))
        if partial:
            cell["text"] = partial
    return cell


def _partial_json_string(chars: str) -> str:
    """Decode the body of a JSON string that may be cut anywhere (even mid-escape)."""
    end = chars.find('"')
    while end > 0 and chars[end - 1] == "\\" and (len(chars[:end]) - len(chars[:end].rstrip("\\"))) % 2 == 1:
        end = chars.find('"', end + 1)
    body = chars if end < 0 else chars[:end]
    for cut in range(len(body), max(-1, len(body) - 8), -1):
        try:
            return json.loads('"' + body[:cut] + '"')
        except json.JSONDecodeError:
            continue
    return ""


def _clean_list(items: list[Any]) -> tuple[list[dict[str, Any]], int]:
    """Keep the items that are cells: dicts with a category or a text. Unlike the official
    clean-up, a cell with a malformed bbox is kept (its text is real; cells_to_blocks
    notes the box problem) instead of dropped. Returns (cells, dropped)."""
    out = [item for item in items if isinstance(item, dict) and ("category" in item or "text" in item)]
    return out, len(items) - len(out)


def _drop_repeats(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """A looping model repeats blocks: drop a bbox seen before, and a (category, text)
    pair after its first copy when it occurs 5+ times (cells without text have no pair)."""
    def pair_of(cell: dict[str, Any]) -> Optional[tuple[str, str]]:
        if "category" not in cell or "text" not in cell:
            return None
        return str(cell.get("category")), str(cell.get("text"))

    def box_of(cell: dict[str, Any]) -> Optional[tuple]:
        bbox = cell.get("bbox")
        if isinstance(bbox, list) and bbox:
            try:
                return tuple(bbox)
            except TypeError:
                return None
        return None

    totals = Counter(p for p in map(pair_of, cells) if p is not None)
    seen_boxes: set[tuple] = set()
    seen_pairs: set[tuple[str, str]] = set()
    kept = []
    for cell in cells:
        box, pair = box_of(cell), pair_of(cell)
        try:
            if box is not None and box in seen_boxes:
                continue
            if box is not None:
                seen_boxes.add(box)
        except TypeError:   # unhashable values inside the bbox
            box = None
        if pair is not None:
            if pair in seen_pairs and totals[pair] >= REPEAT_PAIR_MIN:
                continue
            seen_pairs.add(pair)
        kept.append(cell)
    return kept, len(cells) - len(kept)


# --------------------------------------------------------------------------- markdown

_LATEX_PATTERNS = (
    r"\$\$.*?\$\$", r"\$[^$\n]+?\$", r"\\begin\{.*?\}.*?\\end\{.*?\}", r"\\[a-zA-Z]+\{.*?\}",
    r"\\[a-zA-Z]+", r"\\\[.*?\\\]", r"\\\(.*?\\\)",
)
_PREAMBLE = re.compile(r"\\documentclass\{[^}]+\}|\\usepackage\[[^\]]*\]\{[^}]+\}|\\usepackage\{[^}]+\}"
                       r"|\\begin\{document\}|\\end\{document\}", re.IGNORECASE)


def _has_latex(text: str) -> bool:
    return any(re.search(p, text, re.DOTALL) for p in _LATEX_PATTERNS)


def formula_markdown(text: str) -> str:
    """LaTeX from a Formula block as a display-math markdown block (dots.ocr's
    get_formula_in_markdown, rule for rule)."""
    t = text.strip()
    if t.startswith("$$") and t.endswith("$$") and len(t) >= 4:
        inner = t[2:-2].strip()
        return f"$$\n{inner}\n$$" if "$" not in inner else t
    if t.startswith("\\[") and t.endswith("\\]"):
        return f"$$\n{t[2:-2].strip()}\n$$"
    if re.search(r"\\\[.*\\\]", t) or re.search(r"\$([^$]+)\$", t):
        return t
    if not _has_latex(t):
        return t
    if "usepackage" in t:
        t = _PREAMBLE.sub("", t).strip()
    if len(t) >= 2 and t.startswith("`") and t.endswith("`"):
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


def picture_crops(image, blocks: list[LayoutBlock], stem: str) -> tuple[dict[int, str], dict[str, Any]]:
    """Crop every Picture block: ({block index: file name}, {file name: PIL image})."""
    names: dict[int, str] = {}
    crops: dict[str, Any] = {}
    if image is None:
        return names, crops
    n = 0
    for i, block in enumerate(blocks):
        if block.category != "Picture" or block.bbox is None:
            continue
        n += 1
        name = f"{stem}-picture-{n}.png"
        names[i] = name
        crops[name] = image.crop(tuple(block.bbox))
    return names, crops


# --------------------------------------------------------------------------- overlay

OVERLAY_FILL_OPACITY = 0.3
OVERLAY_FONT_SIZE = 20


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_overlay(image, blocks: list[LayoutBlock]):
    """The page with every block drawn as dots.ocr draws it: the box filled in its category
    colour at 30 % opacity (no outline), and the label `index_category` in the same colour
    at the box's top-right corner (baseline 20 px below the top, font size 20), kept on
    the page when the box touches its right edge."""
    from PIL import Image, ImageDraw

    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(OVERLAY_FONT_SIZE)
    alpha = round(255 * OVERLAY_FILL_OPACITY)
    for i, block in enumerate(blocks):
        if block.bbox is None:      # no place on the page; its index is kept for the others
            continue
        x1, y1, x2, y2 = block.bbox
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=COLOURS.get(block.category, DEFAULT_COLOUR) + (alpha,))
    page = Image.alpha_composite(base, layer)
    draw = ImageDraw.Draw(page)
    width = page.size[0]
    for i, block in enumerate(blocks):
        if block.bbox is None:
            continue
        colour = COLOURS.get(block.category, DEFAULT_COLOUR)
        x1, y1, x2, y2 = block.bbox
        label = f"{i}_{block.category}"
        text_w = draw.textlength(label, font=font)
        anchor = "ls" if x2 + text_w <= width else "rs"
        draw.text((x2, y1 + OVERLAY_FONT_SIZE), label, fill=colour + (255,), font=font, anchor=anchor)
    return page.convert("RGB")
