"""DeepSeek grounding output -> layout blocks (page pixels), clean markdown; truncated outputs."""

from chatvlm.grounding import parse_grounding, strip_tags, to_pixels
from chatvlm.layout import CATEGORIES

SAMPLE = (
    "<|ref|>title<|/ref|><|det|>[[330, 198, 558, 230]]<|/det|>\n# R&D QUALITY\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 250, 900, 400]]<|/det|>\nWe define $x \\coloneqq 1$.\n\n\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 420, 500, 700], [520, 430, 900, 690]]<|/det|>\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 710, 900, 740]]<|/det|>\n<center>Figure 1: results</center>\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 750, 900, 900]]<|/det|>\n<table><tr><td>a</td><td>1</td></tr></table>\n\n"
    "<|ref|>equation<|/ref|><|det|>[[200, 910, 800, 950]]<|/det|>\n\\[ E = mc^2 \\]\n\n"
    "<|ref|>sub_title<|/ref|><|det|>[[100, 960, 600, 999]]<|/det|>\n## Methods"
)


def test_blocks_categories_and_pixels():
    page = parse_grounding(SAMPLE, 1000, 2000)
    cats = [b.category for b in page.blocks]
    assert cats == ["Title", "Text", "Picture", "Caption", "Table", "Formula", "Section-header"]
    assert all(c in CATEGORIES for c in cats)
    assert [b.order for b in page.blocks] == list(range(7))
    assert page.blocks[0].bbox == [330, 396, 558, 460]           # x/999*W, y/999*H
    assert page.blocks[2].bbox == [100, 840, 900, 1401]          # two boxes -> their union
    assert page.blocks[2].text == ""                             # pictures carry no text
    assert page.blocks[-1].bbox[3] == 2000                       # 999 maps to the page edge
    assert not page.repaired


def test_markdown_has_no_tags_and_official_cleanups():
    page = parse_grounding(SAMPLE, 1000, 2000)
    md = page.markdown
    for tag in ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<center>", "\\coloneqq"):
        assert tag not in md
    assert md.startswith("# R&D QUALITY\n\nWe define $x := 1$.\n\nFigure 1: results")
    assert "\n\n\n" not in md
    assert "<table><tr><td>a</td>" in md and md.endswith("## Methods")
    assert strip_tags(SAMPLE) == md


def test_truncated_inside_box_list_keeps_complete_boxes():
    raw = SAMPLE.split("<|ref|>table")[0] + "<|ref|>table<|/ref|><|det|>[[100, 750, 900, 900], [1"
    page = parse_grounding(raw, 1000, 1000)
    assert page.repaired
    assert page.blocks[-1].category == "Table" and page.blocks[-1].text == ""
    assert page.blocks[-1].bbox == [100, 750, 900, 900]
    assert "<|" not in page.markdown and page.markdown.endswith("Figure 1: results")


def test_truncated_mid_tag_and_mid_label():
    for cut in ("<|ref|>tex", "<|re", "<|ref|>text<|/ref|><|det|>[[12, 3", "<", "<|"):
        raw = "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 100]]<|/det|>\nHello world\n\n" + cut
        page = parse_grounding(raw, 500, 500)
        assert page.markdown == "Hello world", cut
        assert page.blocks[0].text == "Hello world"
        assert page.repaired, cut


def test_truncated_first_header_and_plain_output():
    page = parse_grounding("<|ref|>title<|/ref|><|det|>[[1, 2, 3", 100, 100)
    assert page.blocks == [] and page.markdown == "" and page.repaired
    plain = parse_grounding("Just text, no grounding.", 100, 100)
    assert plain.blocks == [] and plain.markdown == "Just text, no grounding." and not plain.repaired


def test_text_before_the_first_block_is_kept():
    page = parse_grounding("Preamble\n<|ref|>text<|/ref|><|det|>[[0, 0, 10, 10]]<|/det|>\nBody", 999, 999)
    assert page.markdown == "Preamble\n\nBody"
    assert page.blocks[0].bbox == [0, 0, 10, 10]


def test_labels_map_like_every_other_models_and_unknown_ones_are_kept():
    """Grounding labels go through the one label table (layout.normalize_category): known
    labels become the schema's categories; a label nobody knows keeps its name (the
    official runners keep every label as written), with its text."""
    raw = ("<|ref|>sub_title<|/ref|><|det|>[[0, 0, 10, 10]]<|/det|>\n## Head\n"
           "<|ref|>table_caption<|/ref|><|det|>[[0, 10, 10, 20]]<|/det|>\nCap\n"
           "<|ref|>Page-footer<|/ref|><|det|>[[0, 20, 10, 30]]<|/det|>\n3\n"
           "<|ref|>code<|/ref|><|det|>[[0, 30, 10, 40]]<|/det|>\nx = 1\n"
           "<|ref|>seal<|/ref|><|det|>[[0, 40, 10, 50]]<|/det|>\n"
           "<|ref|>stamp_text<|/ref|><|det|>[[0, 50, 10, 60]]<|/det|>\nAPPROVED")
    page = parse_grounding(raw, 999, 999)
    assert [(b.category, b.text) for b in page.blocks] == [
        ("Section-header", "## Head"), ("Caption", "Cap"), ("Page-footer", "3"), ("Text", "x = 1"),
        ("Picture", ""), ("stamp_text", "APPROVED")]


def test_pixel_clamping():
    assert to_pixels((900, 950, 100, 1200), 100, 100) == [10, 95, 90, 100]     # sorted, clamped
