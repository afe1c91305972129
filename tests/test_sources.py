from pathlib import Path

import pytest

from chatvlm.errors import InputError, UsageError
from chatvlm.sources import (expand_inputs, open_document, parse_page_ranges, select_pages, sniff)
from tests.conftest import text_page


def make_tree(tmp_path: Path) -> Path:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    text_page("one").save(tmp_path / "a" / "scan.png")
    text_page("two").save(tmp_path / "a" / "deep" / "scan.png")
    text_page("three").save(tmp_path / "b" / "scan.png")
    text_page("four").save(tmp_path / "b" / "scan.jpg")
    (tmp_path / "b" / "notes.txt").write_text("ground truth beside the scan")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"x")
    return tmp_path


def test_folder_is_recursive_and_keys_mirror_paths(tmp_path):
    root = make_tree(tmp_path)
    items = expand_inputs([str(root / "a"), str(root / "b")])
    keys = [i.doc_key for i in items]
    # same-named files in different folders never collide; .txt beside scans is not an input
    # b/scan.jpg sorts before b/scan.png; both collide with a/scan.png: the JPEG keeps its
    # extension, the other PNG named scan gets a number
    assert keys == ["deep/scan", "scan", "scan_jpg", "scan-2"]
    assert not any(i.path.name == "notes.txt" or i.path.name.startswith(".") for i in items)


def test_glob_double_star_and_dedupe(tmp_path):
    root = make_tree(tmp_path)
    items = expand_inputs([str(root / "**" / "*.png"), str(root / "a" / "scan.png")])
    names = sorted(str(i.path.relative_to(root)) for i in items)
    assert names == ["a/deep/scan.png", "a/scan.png", "b/scan.png"]
    keys = {i.doc_key for i in items}
    assert keys == {"a/scan", "a/deep/scan", "b/scan"}


def test_list_file_relative_to_itself(tmp_path):
    root = make_tree(tmp_path)
    lst = root / "list.txt"
    lst.write_text("# pages to do\na/scan.png\n\nb/scan.jpg\n")
    items = expand_inputs([f"@{lst}"])
    assert [i.path.name for i in items] == ["scan.png", "scan.jpg"]
    assert all(i.error is None for i in items)


def test_missing_inputs_become_error_records(tmp_path):
    items = expand_inputs([str(tmp_path / "nope.pdf"), str(tmp_path / "*.tiff")])
    assert [bool(i.error) for i in items] == [True, True]
    with pytest.raises(UsageError):
        expand_inputs([f"@{tmp_path / 'missing-list.txt'}"])


def test_sniff_by_content_not_extension(tmp_path):
    assert sniff(b"%PDF-1.7 ...") == "pdf"
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff(b"II*\x00") == "tiff"
    assert sniff(b"hello world") is None
    fake = tmp_path / "photo.png"
    fake.write_text("this is text, not an image")
    with pytest.raises(InputError, match="not a PDF or a supported image"):
        open_document(fake, "photo")
    real_jpeg_named_pdf = tmp_path / "scan.pdf"
    text_page("jpeg inside").save(real_jpeg_named_pdf, format="JPEG")
    assert open_document(real_jpeg_named_pdf, "scan").kind == "jpeg"


def test_page_ranges():
    assert parse_page_ranges("1-3,7") == [(1, 3), (7, 7)]
    assert parse_page_ranges("5-") == [(5, None)]
    assert parse_page_ranges(None) is None
    assert select_pages(10, parse_page_ranges("1-3,7,9-")) == [1, 2, 3, 7, 9, 10]
    assert select_pages(2, parse_page_ranges("3-5")) == []
    for bad in ("0", "3-1", "a-b", "1,,x"):
        with pytest.raises(UsageError):
            parse_page_ranges(bad)


def test_multipage_tiff_and_pdf(tmp_path):
    pages = [text_page(f"page {n}") for n in (1, 2, 3)]
    tiff = tmp_path / "multi.tif"
    pages[0].save(tiff, save_all=True, append_images=pages[1:])
    doc = open_document(tiff, "multi")
    assert doc.page_count == 3
    assert doc.render(2).size == pages[1].size
    pdf = tmp_path / "multi.pdf"
    pages[0].save(pdf, save_all=True, append_images=pages[1:], resolution=100)
    doc = open_document(pdf, "multi")
    assert doc.kind == "pdf" and doc.page_count == 3
    img = doc.render(3, dpi=100)
    assert img.mode == "RGB" and abs(img.size[0] - 600) <= 2


def test_large_pages_are_downscaled_and_bombs_refused(tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (3000, 2000), 255).save(big)
    doc = open_document(big, "big", max_pixels=1_000_000)
    img = doc.render(1, max_pixels=1_000_000)
    assert img.size[0] * img.size[1] <= 1_000_000
    with pytest.raises(InputError, match="too large"):
        open_document(big, "big", max_pixels=500_000)   # 6 MP > 8 x 0.5 MP: refused


def test_transparent_png_becomes_white_paper(tmp_path):
    from PIL import Image

    img = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    path = tmp_path / "t.png"
    img.save(path)
    out = open_document(path, "t").render(1)
    assert out.mode == "RGB" and out.getpixel((10, 10)) == (255, 255, 255)
