"""DeepSeek-OCR grounding output -> layout blocks in page pixels, and clean markdown.

With `<|grounding|>` in the prompt, DeepSeek-OCR (v1 and 2) emits each block as

    <|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>
    CONTENT

with coordinates normalised to 0-999 over the page (the official code maps back with
`int(x / 999 * W)`). This module is pure string work (no torch, no PIL): it parses
the blocks (labels mapped onto dots.ocr's 11 layout categories by layout.normalize_category), strips the tags from
the text, applies the official clean-ups, and survives truncated output (a generation
cut mid-tag by the token budget or the loop guard): complete blocks are kept, a
partial trailing tag is dropped, and `repaired` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .layout import normalize_category
from .records import LayoutBlock

REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE = "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"
GROUNDING = "<|grounding|>"
_BLOCK = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>\s*<\|det\|>(.*?)<\|/det\|>", re.S)
_BOX = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")
_ANY_TAG = re.compile(r"<\|/?(?:ref|det|grounding)\|>")
# a tag cut at the very end: "<", "<|", "<|re", "<|/de", ...
_PARTIAL_TAG_END = re.compile(r"<(?:\|(?:/?(?:r(?:e(?:f)?)?|d(?:e(?:t)?)?|g[a-z]*)?(?:\|)?)?)?$")
NORMALISER = 999


@dataclass
class GroundedPage:
    blocks: list[LayoutBlock] = field(default_factory=list)
    markdown: str = ""
    text: str = ""
    repaired: bool = False       # the output was truncated or malformed and salvaged


def parse_boxes(det: str) -> list[tuple[float, float, float, float]]:
    """All complete [x1, y1, x2, y2] boxes in a <|det|> payload (tolerates a truncated list)."""
    return [tuple(float(v) for v in m.groups()) for m in _BOX.finditer(det)]


def to_pixels(box, width: int, height: int, normaliser: int = NORMALISER) -> list[int]:
    x1, y1, x2, y2 = box
    xs = sorted((x1, x2))
    ys = sorted((y1, y2))

    def sx(v):
        return max(0, min(width, int(v / normaliser * width)))

    def sy(v):
        return max(0, min(height, int(v / normaliser * height)))

    return [sx(xs[0]), sy(ys[0]), sx(xs[1]), sy(ys[1])]


def clean_content(text: str) -> str:
    """The official clean-ups applied to block content and to the whole markdown."""
    text = text.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")
    text = text.replace("<center>", "").replace("</center>", "")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text


def strip_tags(text: str) -> str:
    """Text with every grounding block header removed (the official tag removal) plus partial tags."""
    out = _BLOCK.sub("", text)
    # an unfinished header at the end: "<|ref|>text<|/ref|><|det|>[[1, 2" -> drop from <|ref|> on
    cut = out.rfind(REF_OPEN)
    if cut >= 0:
        out = out[:cut]
    out = _ANY_TAG.sub("", out)
    out = _PARTIAL_TAG_END.sub("", out)
    return clean_content(out).strip()


def parse_grounding(raw: str, width: int, height: int, normaliser: int = NORMALISER) -> GroundedPage:
    """Blocks (page pixels, reading order), markdown and plain-ish text from grounded output."""
    page = GroundedPage()
    text = raw or ""
    matches = list(_BLOCK.finditer(text))
    pieces: list[str] = []
    salvaged: Optional[LayoutBlock] = None

    lead = text[: matches[0].start()] if matches else text
    if not matches:
        # no complete block: maybe a truncated first header, maybe plain output
        cut = lead.find(REF_OPEN)
        if cut >= 0:
            page.repaired = True
            salvaged = _salvage_header(lead[cut:], width, height, normaliser)
            lead = lead[:cut]
    lead_clean = _PARTIAL_TAG_END.sub("", _ANY_TAG.sub("", lead)).strip() if lead.strip() else ""
    if lead_clean:
        pieces.append(clean_content(lead_clean))

    for i, m in enumerate(matches):
        label = m.group(1).strip()
        boxes = parse_boxes(m.group(2))
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        content = text[m.end():end]
        if i + 1 == len(matches):
            cut = content.find(REF_OPEN)
            if cut >= 0:                      # a header cut off by the token budget
                page.repaired = True
                salvaged = _salvage_header(content[cut:], width, height, normaliser)
                content = content[:cut]
            stripped = _PARTIAL_TAG_END.sub("", content)
            if stripped != content:
                page.repaired = True
                content = stripped
        content = clean_content(_ANY_TAG.sub("", content)).strip()
        category = normalize_category(label)
        if boxes:
            bbox = _union([to_pixels(b, width, height, normaliser) for b in boxes])
            page.blocks.append(LayoutBlock(bbox=bbox, category=category,
                                           text="" if category == "Picture" else content))
        else:
            page.repaired = True
        if content and category != "Picture":
            pieces.append(content)

    if salvaged is not None:
        page.blocks.append(salvaged)
    for order, block in enumerate(page.blocks):
        block.order = order
    page.markdown = clean_content("\n\n".join(pieces)).strip()
    page.text = page.markdown
    return page


def _salvage_header(tail: str, width: int, height: int, normaliser: int) -> Optional[LayoutBlock]:
    """A truncated `<|ref|>label<|/ref|><|det|>[[...` at the end: keep its complete boxes (no text)."""
    m = re.match(r"<\|ref\|>(.*?)<\|/ref\|>\s*<\|det\|>(.*)$", tail, re.S)
    if not m:
        return None
    boxes = parse_boxes(m.group(2))
    if not boxes:
        return None
    return LayoutBlock(bbox=_union([to_pixels(b, width, height, normaliser) for b in boxes]),
                       category=normalize_category(m.group(1)), text="")


def _union(boxes: list[list[int]]) -> list[int]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def has_grounding(text: Optional[str]) -> bool:
    return bool(text) and (REF_OPEN in text or DET_OPEN in text)
