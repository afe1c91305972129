"""The tesseract engine on pages the test renders itself from known text."""

from pathlib import Path

from chatvlm.backends.base import create_backend
from chatvlm.backends.tesseract import upscale_factor
from chatvlm.config import BackendOptions, GenerationParams
from chatvlm.records import Page
from chatvlm.registry import get_spec
from tests.conftest import text_page


def recognise(images, lang="eng"):
    backend = create_backend(get_spec("tesseract"), BackendOptions(lang=lang, extra={"workers": 2}))
    backend.load()
    try:
        pages = [Page(source=Path(f"p{i}.png"), doc_key=f"p{i}", page=1, image=img) for i, img in enumerate(images)]
        raws = backend.generate_batch(pages, "layout", GenerationParams())
        return [backend.postprocess(p, r, "layout") for p, r in zip(pages, raws)]
    finally:
        backend.close()


def test_small_page_is_upscaled_but_boxes_stay_in_page_pixels():
    image = text_page("Invoice 2024\nTotal due 1250 EUR", size=(500, 160))
    assert upscale_factor(image.size) == 2 and upscale_factor((2480, 3508)) == 1
    (result,) = recognise([image])
    assert "Invoice 2024" in result.text and "1250" in result.text
    assert (result.width, result.height) == (500, 160)
    assert result.layout
    for block in result.layout:
        x1, y1, x2, y2 = block.bbox
        assert 0 <= x1 < x2 <= 500 and 0 <= y1 < y2 <= 160
    # the text block sits where the text was drawn (x from 20 px, first line at y 20)
    first = result.layout[0]
    assert first.bbox[0] < 40 and first.bbox[1] < 40


def test_rotated_page_is_turned_upright():
    image = text_page("The quick brown fox jumps over the lazy dog.\n" * 6, size=(1300, 700), font_size=34)
    (result,) = recognise([image.rotate(90, expand=True)])
    assert "quick brown fox" in result.text
    assert result.width > result.height


def test_russian_and_parallel_pages_keep_their_order():
    texts = ["Первая страница", "Вторая страница", "Третья страница", "Четвёртая страница"]
    results = recognise([text_page(t, size=(700, 120)) for t in texts], lang="rus")
    assert [r.text.strip() for r in results] == texts


def test_a_crashed_worker_costs_no_page(tmp_path):
    """Kill a Tesseract worker process: the pool is restarted, the batch split and retried."""
    import json
    import os
    import signal

    from chatvlm.config import RunConfig
    from chatvlm.pipeline import run

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        text_page(f"Page number {i}", size=(700, 140)).save(src / f"p{i}.png")
    backend = create_backend(get_spec("tesseract"), BackendOptions(lang="eng", extra={"workers": 2}))
    backend.load()
    victim = next(iter(backend._pool._processes.values()))
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    outcome = run(RunConfig(inputs=[str(src)], out=tmp_path / "out", model="tesseract", formats=("text",), task="text"),
                  backend=backend)
    backend.close()
    entries = [json.loads(l) for l in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert outcome.exit_code == 0 and [e["status"] for e in entries] == ["ok"] * 4
    for i, entry in enumerate(entries):
        assert f"Page number {i}" in (tmp_path / "out" / entry["outputs"][0]).read_text()


def blank_like_pages():
    """Pages with nothing to read: blank paper, a gradient photo, noise, a ruled form without words."""
    import numpy as np
    from PIL import Image, ImageDraw

    from tests.conftest import noise_page

    blank = Image.new("RGB", (800, 1000), "white")
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 800), (600, 1)).astype("uint8")).convert("RGB")
    form = Image.new("RGB", (800, 1000), "white")
    draw = ImageDraw.Draw(form)
    draw.rectangle([40, 90, 760, 910], outline="black", width=3)
    for y in range(150, 900, 50):
        draw.line([(50, y), (750, y)], fill="black", width=2)
    return [blank, gradient, noise_page(800, 600, seed=0), form]


def test_pages_without_text_are_empty_not_failures():
    from chatvlm.page_steps import has_no_text

    results = recognise(blank_like_pages())
    assert [r.status for r in results] == ["ok"] * 4
    assert [r.text for r in results] == [""] * 4
    assert all(has_no_text(r) for r in results)
