"""Qwen3-VL-2B-Instruct through transformers' native Qwen3VLForConditionalGeneration.

Same mechanics as Qwen2-VL (chat template, left padding, explicit pixel budget, stop on
<|im_end|> / <|endoftext|>); 32-px merged patches, no default system turn, and the
official "qwenvl markdown" document-parsing prompt for markdown.

"qwenvl markdown" answers are markdown with LaTeX tables and math, and announce each
picture and table with its box, `<!-- Image (x1, y1, x2, y2) -->`, in Qwen3-VL's relative
0-1000 frame (x_px = x / 1000 * width). Postprocessing converts the LaTeX (chatvlm.latex:
tables to markdown/HTML tables, math kept as `$…$` in markdown and written out in text),
drops the comments from markdown and text, and maps them to layout blocks: a Picture or
Table block with its box in page pixels for each comment, the text between them as
blocks without a box (the model gives none), in reading order.
"""

from __future__ import annotations

from typing import Optional

from ..latex import coordinate_comments, latex_markdown, latex_text
from ..layout import clamp_bbox, normalize_category, scale_bbox
from ..records import LayoutBlock, Page, PageResult, RawOutput
from ..textnorm import markdown_to_text
from .hf import strip_code_fence
from .qwen2_vl import Qwen2VLBackend

QWEN3_BOX_FRAME = (1000, 1000)      # document-parsing coordinates are relative, 0-1000
PICTURE_KINDS = {"image", "figure", "picture", "chart", "photo", "seal", "logo"}


class Qwen3VLBackend(Qwen2VLBackend):
    auto_class = "Qwen3VLForConditionalGeneration"

    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        answer = strip_code_fence(raw.text).strip()
        if task == "text":
            return self.page_result(page, raw, text=answer)
        result = self.page_result(page, raw, markdown=latex_markdown(answer),
                                  text=markdown_to_text(latex_text(answer)))
        result.layout = qwenvl_blocks(answer, page.size) if coordinate_comments(answer) else None
        return result


def qwenvl_blocks(answer: str, page_size: tuple[int, int]) -> list[LayoutBlock]:
    """Layout blocks of a "qwenvl markdown" answer: each `<!-- Kind (box) -->` comment with
    the element it announces (a picture: nothing; a table: the text up to the next blank
    line), boxes mapped from 0-1000 to page pixels; text between them without a box."""
    blocks: list[LayoutBlock] = []

    def add_text(segment: str) -> None:
        markdown = latex_markdown(segment)
        if markdown:
            blocks.append(LayoutBlock(bbox=None, category="Text", text=markdown, order=len(blocks)))

    comments = coordinate_comments(answer)
    add_text(answer[:comments[0][2]] if comments else answer)
    for k, (kind, box, _start, end) in enumerate(comments):
        stop = comments[k + 1][2] if k + 1 < len(comments) else len(answer)
        region = answer[end:stop]
        if kind.lower() in PICTURE_KINDS:
            element, rest = "", region
        else:
            body = region.lstrip("\n")
            cut = body.find("\n\n")
            element, rest = (body, "") if cut < 0 else (body[:cut], body[cut:])
        bbox = clamp_bbox(scale_bbox(box, QWEN3_BOX_FRAME, page_size), *page_size) if all(page_size) else None
        problem: Optional[str] = None if bbox else f"bbox is empty or off the page: {[int(v) for v in box]}"
        blocks.append(LayoutBlock(bbox=bbox, category=normalize_category(kind),
                                  text=latex_markdown(element), order=len(blocks), problem=problem))
        add_text(rest)
    return blocks
