"""The layout toolkit on literal model outputs: salvage, box mapping, categories, markdown,
picture crops and overlays (dots.ocr reference §7-§10)."""

from __future__ import annotations

import json

import pytest
import numpy as np
from PIL import Image

from chatvlm import layout
from chatvlm.records import LayoutBlock
from chatvlm.textnorm import markdown_to_text

# A well-formed dots.ocr answer (prompt_layout_all_en), as the model writes it: one JSON
# array, keys in the order bbox, category, text; formula text with braces; table HTML.
WELL_FORMED = (
    '[{"bbox": [100, 50, 900, 110], "category": "Title", "text": "# Annual Report"}, '
    '{"bbox": [100, 130, 900, 400], "category": "Text", "text": "Revenue grew by **12%** in 2024."}, '
    '{"bbox": [300, 420, 700, 480], "category": "Formula", "text": "E = \\\\frac{m c^{2}}{\\\\sqrt{1-v^{2}}}"}, '
    '{"bbox": [100, 500, 900, 800], "category": "Table", "text": "<table><tr><td>a</td><td>b</td></tr></table>"}, '
    '{"bbox": [100, 820, 500, 1000], "category": "Picture"}, '
    '{"bbox": [100, 1010, 900, 1040], "category": "Caption", "text": "Figure 1: growth."}, '
    '{"bbox": [450, 1100, 550, 1120], "category": "Page-footer", "text": "3"}]'
)


def cell(i: int, category: str = "Text", text: str | None = None) -> dict:
    c = {"bbox": [10, 10 + 40 * i, 500, 40 + 40 * i], "category": category}
    if text is not None:
        c["text"] = text
    return c


# ------------------------------------------------------------------ salvage


def test_well_formed_output_parses_untouched():
    cells, repaired, dropped = layout.parse_cells(WELL_FORMED)
    assert (repaired, dropped) == (False, 0)
    assert [c["category"] for c in cells] == ["Title", "Text", "Formula", "Table", "Picture", "Caption", "Page-footer"]
    assert cells[2]["text"] == "E = \\frac{m c^{2}}{\\sqrt{1-v^{2}}}"
    assert "text" not in cells[4]


def test_fenced_json_is_not_a_repair():
    cells, repaired, dropped = layout.parse_cells("```json\n" + WELL_FORMED + "\n```")
    assert len(cells) == 7 and (repaired, dropped) == (False, 0)


def test_truncated_mid_block_keeps_every_complete_block():
    # max_new_tokens hit inside the 4th cell's text, and inside a cell after a formula
    # whose braces defeat dots.ocr's own regex salvage.
    cut = WELL_FORMED.index('"<table>') + 20
    cells, repaired, dropped = layout.parse_cells(WELL_FORMED[:cut])
    assert repaired and dropped == 1
    assert [c["category"] for c in cells] == ["Title", "Text", "Formula"]
    assert cells[2]["text"].startswith("E = \\frac{m c^{2}}")


def test_truncated_between_blocks_and_inside_bbox():
    end_of_second = WELL_FORMED.index(', {"bbox": [300')
    cells, repaired, dropped = layout.parse_cells(WELL_FORMED[:end_of_second] + ", ")
    assert repaired and dropped == 0 and len(cells) == 2
    cells, repaired, dropped = layout.parse_cells(WELL_FORMED[:end_of_second] + ', {"bbox": [300, 4')
    assert repaired and dropped == 1 and len(cells) == 2


def test_single_unfinished_block_keeps_its_start():
    raw = '[{"bbox": [12, 30, 800, 900], "category": "Table", "text": "<table><tr><td>Q1 \\"net\\"</td><td>4'
    cells, repaired, dropped = layout.parse_cells(raw)
    assert repaired and dropped == 0
    assert cells == [{"bbox": [12, 30, 800, 900], "category": "Table", "text": '<table><tr><td>Q1 "net"</td><td>4'}]


def test_missing_commas_and_garbage_between_blocks():
    raw = '[{"bbox": [1, 2, 30, 40], "category": "Text", "text": "a"}{"bbox": [1, 50, 30, 90], "category": "Text", "text": "b"}'
    raw += ', {"bbox": [1, 100, 30, 1 "oops", {"bbox": [1, 150, 30, 190], "category": "Title", "text": "c"}]'
    cells, repaired, dropped = layout.parse_cells(raw)
    assert repaired and dropped == 1
    assert [c["text"] for c in cells] == ["a", "b", "c"]


def looping_cells() -> list[dict]:
    # A looping page: the same row re-emitted with the same box, then the same text
    # with new boxes again and again until max_new_tokens.
    cells_in = [cell(0, "Title", "# Items"), cell(1, "Text", "first")]
    cells_in += [dict(cell(1, "Text", "first"))] * 3                     # same bbox again
    cells_in += [cell(i, "Text", "....") for i in range(2, 12)]          # 10x same text
    return cells_in


def test_loop_of_repeated_blocks_is_cut_when_the_json_needed_salvage():
    raw = json.dumps(looping_cells())
    cut_raw = raw[:-30]                                                  # ran out of tokens mid-cell
    cells, repaired, dropped = layout.parse_cells(cut_raw)
    assert repaired and dropped == 1 + 3 + 8                             # broken tail, 3 boxes, 8 texts
    assert [c["text"] for c in cells] == ["# Items", "first", "...."]


def test_complete_json_keeps_repeated_blocks():
    # The model finished its answer: repeats are the page's own (dots.ocr de-duplicates
    # only output it had to repair).
    cells, repaired, dropped = layout.parse_cells(json.dumps(looping_cells()))
    assert (len(cells), repaired, dropped) == (15, False, 0)


def test_six_identical_signature_cells_stay_six():
    # A form, as dots.ocr writes it: six signature lines, same text, different boxes.
    raw = ('[{"bbox": [120, 80, 1500, 140], "category": "Title", "text": "# Approval sheet"}, '
           + ", ".join(f'{{"bbox": [120, {300 + 150 * i}, 900, {340 + 150 * i}], "category": "Text", '
                       f'"text": "Signature: ____________"}}' for i in range(6))
           + ', {"bbox": [120, 1300, 900, 1340], "category": "Text", "text": "Date: ____"}]')
    cells, repaired, dropped = layout.parse_cells(raw)
    assert (len(cells), repaired, dropped) == (8, False, 0)
    blocks = layout.cells_to_blocks(cells, (1652, 2324), (1654, 2339))
    md = layout.blocks_to_markdown(blocks)
    assert md.count("Signature: ____________") == 6
    assert markdown_to_text(md).count("Signature:") == 6


def test_repeated_text_under_five_and_layout_only_cells_are_kept():
    cells_in = [cell(i, "Text", "same") for i in range(4)]            # 4 < 5: legitimate
    cells_in += [cell(i, "Text") for i in range(4, 12)]                 # layout-only: no text
    cells, repaired, dropped = layout.parse_cells(json.dumps(cells_in))
    assert (len(cells), repaired, dropped) == (12, False, 0)


def test_cells_without_a_usable_box_keep_their_text():
    raw = json.dumps([
        {"bbox": [1, 2, 30], "category": "Text", "text": "three numbers"},
        {"bbox": [1, 2], "category": "Text", "text": "two numbers"},
        {"bbox": "nope", "category": "Text", "text": "a string"},
        {"category": "Section-header", "text": "## no bbox"},
        {"text": "no bbox, no category"},
        "not a dict",
        {"bbox": [5, 5, 9, 9]},                                       # neither category nor text
        cell(3, "Text", "fine"),
    ])
    cells, repaired, dropped = layout.parse_cells(raw)
    assert repaired and dropped == 2
    blocks = layout.cells_to_blocks(cells, (1000, 1000), (1000, 1000))
    assert [b.text for b in blocks] == ["three numbers", "two numbers", "a string", "## no bbox",
                                        "no bbox, no category", "fine"]
    assert [b.bbox is None for b in blocks] == [True] * 5 + [False]
    assert blocks[0].problem.startswith("bbox is not 4 numbers") and blocks[3].problem == "no bbox"
    assert blocks[5].problem is None and blocks[5].bbox == [10, 130, 500, 160]
    assert [b.order for b in blocks] == list(range(6))
    # JSON: the block stays with bbox null and its problem; markdown and text keep the words.
    assert blocks[3].to_dict() == {"bbox": None, "category": "Section-header", "text": "## no bbox",
                                   "order": 3, "problem": "no bbox"}
    assert "problem" not in blocks[5].to_dict()
    assert LayoutBlock.from_dict(blocks[3].to_dict()) == blocks[3]
    md = layout.blocks_to_markdown(blocks)
    for text in ("three numbers", "## no bbox", "fine"):
        assert text in md
    assert "no bbox" in markdown_to_text(md)


@pytest.mark.parametrize("raw", ["", "   ", "[]"])
def test_empty_outputs(raw):
    assert layout.parse_cells(raw) == ([], False, 0)


def test_plain_text_is_not_json():
    cells, repaired, dropped = layout.parse_cells("The quick brown fox.")
    assert cells == [] and repaired


# ------------------------------------------------------------------ boxes and categories


def test_boxes_map_from_model_frame_to_page_like_post_process_cells():
    # Model saw 1652x2324 (smart_resize of a 1654x2339 page); the official mapping is
    # int(x / (input_w / original_w)).
    frame, page = (1652, 2324), (1654, 2339)
    cells = [{"bbox": [163, 241, 1536, 705], "category": "Text", "text": "x"}]
    (block,) = layout.cells_to_blocks(cells, frame, page)
    sx, sy = frame[0] / page[0], frame[1] / page[1]
    assert block.bbox == [int(163 / sx), int(241 / sy), int(1536 / sx), int(705 / sy)]


def test_boxes_are_clamped_and_bad_ones_noted():
    cells = [
        {"bbox": [-20, -5, 120, 60], "category": "Text", "text": "clamped"},
        {"bbox": [50, 50, 5000, 5000], "category": "Text", "text": "clamped far"},
        {"bbox": [80, 80, 40, 90], "category": "Text", "text": "inverted"},
        {"bbox": [300, 300, 400, 400], "category": "Text", "text": "outside"},
        {"bbox": [10, 10, 10, 50], "category": "Text", "text": "zero width"},
        {"bbox": [1, "a", 3, 4], "category": "Text", "text": "not numbers"},
        {"bbox": [1, 2, 30, float("nan")], "category": "Text", "text": "nan"},
        {"bbox": ["5", "6", "70", "80"], "category": "Text", "text": "numeric strings"},
    ]
    blocks = layout.cells_to_blocks(cells, (200, 200), (200, 200))
    assert [(b.text, b.bbox) for b in blocks if b.bbox] == [
        ("clamped", [0, 0, 120, 60]), ("clamped far", [50, 50, 200, 200]), ("numeric strings", [5, 6, 70, 80])]
    problems = {b.text: b.problem for b in blocks if b.bbox is None}
    assert problems["inverted"].startswith("bbox is empty or off the page")
    assert problems["outside"].startswith("bbox is empty or off the page")
    assert problems["not numbers"].startswith("bbox is not 4 numbers")
    assert set(problems) == {"inverted", "outside", "zero width", "not numbers", "nan"}
    assert [b.order for b in blocks] == list(range(8))


def test_categories():
    for name in layout.CATEGORIES:
        assert layout.normalize_category(name) == name
    assert len(layout.CATEGORIES) == 11
    assert layout.normalize_category(None) == "Text"
    assert layout.normalize_category("") == "Text"
    assert layout.normalize_category("figure") == "Picture"          # other models' labels
    assert layout.normalize_category("Page header") == "Page-header"
    assert layout.normalize_category("equation") == "Formula"
    assert layout.normalize_category("Other") == "Other"
    assert layout.normalize_category("Stamp") == "Stamp"               # unknown: kept, never dropped
    # one table for every model: dots.ocr's spellings and DeepSeek-OCR's grounding labels alike
    assert layout.normalize_category("section-header") == "Section-header"
    assert layout.normalize_category("LIST ITEM") == "List-item"
    assert layout.normalize_category("sub_title") == "Section-header"
    assert layout.normalize_category("seal") == "Picture" and layout.normalize_category("code") == "Text"
    assert layout.normalize_category("image_footnote") == "Footnote"
    assert layout.normalize_category("  something new ") == "something new"
    blocks = layout.cells_to_blocks([{"bbox": [0, 0, 5, 5], "category": "Stamp", "text": "ok"}], (10, 10), (10, 10))
    assert blocks[0].category == "Stamp"


# ------------------------------------------------------------------ markdown


def page_blocks() -> list[LayoutBlock]:
    cells, _, _ = layout.parse_cells(WELL_FORMED)
    return layout.cells_to_blocks(cells, (1000, 1200), (1000, 1200))


def test_markdown_rendering_rules():
    md = layout.blocks_to_markdown(page_blocks())
    assert md == (
        "# Annual Report\n\n"
        "Revenue grew by **12%** in 2024.\n\n"
        "$$\nE = \\frac{m c^{2}}{\\sqrt{1-v^{2}}}\n$$\n\n"
        "<table><tr><td>a</td><td>b</td></tr></table>\n\n"
        "Figure 1: growth.\n\n"
        "3\n"
    )
    nohf = layout.blocks_to_markdown(page_blocks(), skip_headers=True)
    assert "3\n" not in nohf.split("growth.")[1]


@pytest.mark.parametrize("text, expected", [
    ("$$x^2$$", "$$\nx^2\n$$"),
    ("$$ a $ b $$", "$$ a $ b $$"),
    ("\\[ \\alpha + 1 \\]", "$$\n\\alpha + 1\n$$"),
    ("where \\[ y \\] holds", "where \\[ y \\] holds"),
    ("inline $x$ here", "inline $x$ here"),
    ("plain words", "plain words"),
    ("\\sum_{i=1}^{n} i", "$$\n\\sum_{i=1}^{n} i\n$$"),
    ("`\\alpha`", "$$\n\\alpha\n$$"),
    ("\\documentclass{article}\\usepackage[utf8]{inputenc}\\begin{document}\\beta\\end{document}", "$$\n\\beta\n$$"),
])
def test_formula_rules(text, expected):
    assert layout.formula_markdown(text) == expected


def test_clean_text_backticked_math():
    block = LayoutBlock(bbox=[0, 0, 1, 1], category="Text", text="  `$x+1$`  ")
    assert layout.blocks_to_markdown([block]) == "$x+1$\n"


def test_picture_crops_linked_from_markdown():
    image = Image.new("RGB", (1000, 1200), "white")
    image.paste((10, 200, 30), (100, 820, 500, 1000))
    blocks = page_blocks()
    names, crops = layout.picture_crops(image, blocks, "page-0001")
    assert names == {4: "page-0001-picture-1.png"}
    crop = crops["page-0001-picture-1.png"]
    assert crop.size == (400, 180) and crop.getpixel((200, 90)) == (10, 200, 30)
    md = layout.blocks_to_markdown(blocks, picture_names=names)
    assert "![](page-0001-picture-1.png)\n\nFigure 1: growth." in md
    assert "base64" not in md


def test_markdown_to_text():
    text = markdown_to_text(layout.blocks_to_markdown(page_blocks()))
    assert text.startswith("Annual Report\n\nRevenue grew by 12% in 2024.")
    assert "a\tb" in text and "<td>" not in text


# ------------------------------------------------------------------ overlay


def test_overlay_colours_inside_boxes():
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    blocks = [
        LayoutBlock(bbox=[20, 40, 150, 120], category="Title", order=0),
        LayoutBlock(bbox=[20, 150, 150, 280], category="Table", order=1),
        LayoutBlock(bbox=[200, 40, 390, 280], category="Section-header", order=2),
        LayoutBlock(bbox=[170, 200, 190, 220], category="Stamp", order=3),
    ]
    out = layout.draw_overlay(image, blocks)
    assert out.size == image.size and out.mode == "RGB"

    def blended(rgb):
        return tuple(round(255 * 0.7 + c * 0.3) for c in rgb)

    def close(a, b):
        return all(abs(x - y) <= 2 for x, y in zip(a, b))

    assert close(out.getpixel((60, 100)), blended((255, 0, 0)))            # Title red
    assert close(out.getpixel((60, 260)), blended((255, 192, 203)))        # Table pink
    assert close(out.getpixel((300, 250)), blended((0, 255, 255)))         # Section-header cyan
    assert close(out.getpixel((180, 215)), blended((0, 128, 0)))           # unknown: green
    assert out.getpixel((10, 10)) == (255, 255, 255)                       # outside: untouched
    # The label `0_Title` is drawn in full colour at the box's top-right corner.
    label = out.crop((150, 40, 260, 62))
    assert any(tuple(px) == (255, 0, 0) for px in np.asarray(label).reshape(-1, 3))
    # A box on the right edge gets its label inside the page, left of the corner.
    label = out.crop((250, 40, 390, 62))
    assert any(close(px, (0, 255, 255)) for px in np.asarray(label).reshape(-1, 3).tolist())


def test_unplaced_blocks_stay_out_of_overlay_and_crops():
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    blocks = [LayoutBlock(bbox=None, category="Picture", text="", order=0, problem="no bbox"),
              LayoutBlock(bbox=[10, 10, 60, 60], category="Title", text="# T", order=1)]
    out = layout.draw_overlay(image, blocks)
    assert out.getpixel((30, 30)) != (255, 255, 255) and out.getpixel((150, 80)) == (255, 255, 255)
    assert layout.picture_crops(image, blocks, "page-0001") == ({}, {})
