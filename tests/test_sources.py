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


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares `width` x `height` pixels but holds none (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_large_images_leave_pillows_global_limit_alone(tmp_path, monkeypatch):
    """Our limit is checked per call: Pillow's process-wide MAX_IMAGE_PIXELS is neither
    changed (it would leak into the caller's code and race between render threads) nor
    in the way of a page our own limit allows."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("1", (4000, 3000), 1).save(big)          # 12 MP, 1 bit: a small file
    default = Image.MAX_IMAGE_PIXELS
    open_document(big, "big").render(1)
    assert Image.MAX_IMAGE_PIXELS == default
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)   # Pillow alone refuses 12 MP now
    img = open_document(big, "big", max_pixels=20_000_000).render(1, max_pixels=20_000_000)
    assert img.size == (4000, 3000) and img.mode == "RGB"
    assert Image.MAX_IMAGE_PIXELS == 1_000_000


def test_too_large_image_is_refused_before_decoding_and_named(tmp_path):
    from chatvlm.api import pages
    from chatvlm.sources import plan_pages

    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 100_000, 100_000)           # 10 gigapixels declared, none there
    [(page, doc)] = list(plan_pages([str(bomb)]))
    assert doc is None and page.source == bomb
    assert "too large (100000x100000 = 10000 MP, limit 400 MP)" in page.error
    with pytest.raises(InputError, match=r"bomb\.png: image too large"):
        next(pages(bomb))


def test_transparent_png_becomes_white_paper(tmp_path):
    from PIL import Image

    img = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    path = tmp_path / "t.png"
    img.save(path)
    out = open_document(path, "t").render(1)
    assert out.mode == "RGB" and out.getpixel((10, 10)) == (255, 255, 255)


def test_existing_file_with_brackets_is_itself_not_a_glob(tmp_path):
    text_page("one").save(tmp_path / "scan [1].png")
    text_page("two").save(tmp_path / "scan1.png")           # what the glob [1] would match
    (tmp_path / "list.txt").write_text("scan [1].png\n")
    for arg in (str(tmp_path / "scan [1].png"), f"@{tmp_path / 'list.txt'}"):
        (item,) = expand_inputs([arg])
        assert item.error is None and item.path.name == "scan [1].png" and item.doc_key == "scan [1]"
    # a pattern that names no existing file is still a glob
    assert [i.path.name for i in expand_inputs([str(tmp_path / "scan[1].png")])] == ["scan1.png"]


def test_folders_reserved_by_earlier_runs_and_the_output_folder(tmp_path):
    from chatvlm.paths import source_id

    for folder in ("A", "B"):
        (tmp_path / folder).mkdir()
        text_page(folder).save(tmp_path / folder / "x.png")
    a, b = tmp_path / "A" / "x.png", tmp_path / "B" / "x.png"
    assert [i.doc_key for i in expand_inputs([str(a), str(b)])] == ["x", "x-2"]
    # an earlier run gave B's x.png the folder x: it keeps it, A's gets another
    assert [i.doc_key for i in expand_inputs([str(a), str(b)], reserved={source_id(b): "x"})] == ["x-2", "x"]
    out = tmp_path / "A" / "out"
    (out / "x").mkdir(parents=True)
    text_page("overlay").save(out / "x" / "page-0001.layout.png")
    assert [i.path for i in expand_inputs([str(tmp_path / "A")], exclude=(out,))] == [a]
    assert [i.path for i in expand_inputs([str(tmp_path / "**" / "*.png")], exclude=(out,))] == [a, b]


def test_pdf_with_only_an_owner_password_opens(tmp_path):
    pypdf = pytest.importorskip("pypdf", reason="pypdf makes the owner-password PDF (pip install -e .[test])")
    plain = tmp_path / "plain.pdf"
    text_page("restricted").save(plain, resolution=100)
    writer = pypdf.PdfWriter(clone_from=str(plain))
    # no user password: anyone may open it; the owner password only restricts printing and copying
    writer.encrypt(user_password="", owner_password="owner secret", algorithm="RC4-128", permissions_flag=0)
    locked = tmp_path / "locked.pdf"
    writer.write(str(locked))
    doc = open_document(locked, "locked")
    assert doc.page_count == 1 and doc.render(1, dpi=100).size[0] > 500
    writer = pypdf.PdfWriter(clone_from=str(plain))
    writer.encrypt(user_password="user secret", owner_password="owner secret", algorithm="RC4-128")
    writer.write(str(tmp_path / "needs-password.pdf"))
    with pytest.raises(InputError, match="password protected"):
        open_document(tmp_path / "needs-password.pdf", "needs-password")


def test_names_that_are_not_utf8_read_as_russian_code_pages():
    import os

    from chatvlm.paths import path_text, readable_name

    for word in ("Пример", "Отчёт 1", "обмен", "Счёт-фактура №5", "ИТОГИ 2023"):
        for encoding in ("cp1251", "cp866"):
            name = os.fsdecode(word.encode(encoding))
            assert readable_name(name) == word, (word, encoding)
    assert path_text(os.fsdecode(b"in/\xcf\xf0.png")) == "in/\\xcf\\xf0.png"
    assert readable_name("plain.png") == "plain.png" and path_text("Пример.png") == "Пример.png"
