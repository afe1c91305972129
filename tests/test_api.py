"""The Python API on the real tesseract engine and on a tiny random-weight Qwen2-VL."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import chatvlm
from tests.api_helpers import ENGLISH, RUSSIAN, cer, english_interface, render_page, tiny_checkpoint  # noqa: F401
from chatvlm.errors import InputError, UnknownModelError, UsageError
from chatvlm.records import LayoutBlock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tess():
    with chatvlm.load_model("tesseract", workers=1) as model:
        yield model


@pytest.fixture(scope="module")
def page():
    return render_page(ENGLISH)


def test_import_is_light():
    code = "import sys, chatvlm; assert chatvlm.load_model; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", "import sys, chatvlm; print('torch' in sys.modules, 'chatvlm.api' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"   # loading the API module does not pull torch either


def test_ocr_reads_the_known_text(tess, page):
    text = tess.ocr(page)
    assert isinstance(text, str)
    assert cer("\n".join(ENGLISH), text) < 0.05, text


def test_images_as_path_bytes_and_array(tess, page, tmp_path):
    expected = tess.ocr(page)
    path = tmp_path / "page.png"
    page.save(path)
    buffer = io.BytesIO()
    page.save(buffer, "JPEG", quality=95)
    import numpy as np

    assert tess.ocr(path) == expected
    assert tess.ocr(str(path)) == expected
    assert cer(expected, tess.ocr(buffer.getvalue())) < 0.05
    assert tess.ocr(np.asarray(page)) == expected
    assert tess.ocr(page.convert("L")) == expected   # any mode becomes RGB


def test_markdown_and_layout(tess, page):
    markdown = tess.markdown(page)
    assert cer("\n".join(ENGLISH), markdown) < 0.05
    blocks = tess.layout(page)
    assert blocks and all(isinstance(b, LayoutBlock) for b in blocks)
    width, height = page.size
    for block in blocks:
        x1, y1, x2, y2 = block.bbox
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert cer("\n".join(ENGLISH), "\n".join(b.text for b in blocks)) < 0.05


def test_ocr_batch_keeps_order(tess, page):
    other = render_page(["Second page here", "with other words"])
    texts = tess.ocr_batch([page, other, page])
    assert len(texts) == 3
    assert texts[0] == texts[2] == tess.ocr(page)
    assert "Second page" in texts[1]
    assert tess.ocr_batch([]) == []


def test_pdf_path_points_to_pages(tess, page, tmp_path):
    pdf = tmp_path / "doc.pdf"
    second = render_page(["Page two of the document"])
    page.save(pdf, save_all=True, append_images=[second], resolution=100)
    with pytest.raises(UsageError, match=r"chatvlm\.pages"):
        tess.ocr(pdf)
    with pytest.raises(UsageError, match=r"chatvlm\.pages"):
        tess.ocr(pdf.read_bytes())
    images = list(chatvlm.pages(pdf, dpi=100))
    assert len(images) == 2 and all(isinstance(i, Image.Image) and i.mode == "RGB" for i in images)
    assert cer("\n".join(ENGLISH), tess.ocr(images[0])) < 0.05
    only_second = list(chatvlm.pages(pdf, pages=2, dpi=100))
    assert len(only_second) == 1 and "two" in tess.ocr(only_second[0])
    assert len(list(chatvlm.pages(pdf, pages=[1, 2], dpi=100))) == 2


def test_bad_inputs_are_clear(tess, tmp_path):
    junk = tmp_path / "notes.png"
    junk.write_text("not an image at all")
    with pytest.raises(InputError, match="not a PDF or a supported image"):
        tess.ocr(junk)
    with pytest.raises(InputError, match="no such file"):
        tess.ocr(tmp_path / "missing.png")
    with pytest.raises(UsageError, match="unsupported image type"):
        tess.ocr(12345)
    with pytest.raises(InputError, match="no such file"):
        list(chatvlm.pages(tmp_path / "missing.pdf"))


def test_to_image_names_the_file_and_applies_our_limit_to_bytes_too(tmp_path, monkeypatch):
    from chatvlm.api import to_image

    buf = io.BytesIO()
    Image.new("RGB", (200, 200), "white").save(buf, format="PNG")
    png = buf.getvalue()
    path = tmp_path / "square.png"
    path.write_bytes(png)
    broken = tmp_path / "broken.png"
    broken.write_bytes(png[:60])
    junk = tmp_path / "notes.png"
    junk.write_text("not an image at all")

    # A file's errors name it, as chatvlm.pages() does.
    with pytest.raises(InputError, match=r"notes\.png: not a PDF or a supported image"):
        to_image(junk)
    with pytest.raises(InputError, match=r"broken\.png: corrupt"):
        to_image(broken)
    with pytest.raises(InputError, match=r"broken\.png: corrupt"):
        list(chatvlm.pages(broken))
    # Our limit (8x max_pixels) refuses bytes as it refuses the same file.
    with pytest.raises(InputError, match=r"square\.png: image too large \(200x200"):
        to_image(path, max_pixels=1_000)
    with pytest.raises(InputError, match=r"^image too large \(200x200"):
        to_image(png, max_pixels=1_000)
    with pytest.raises(InputError, match="corrupt"):
        to_image(png[:60])
    # Pillow's process-wide limit does not apply: within ours, bytes decode as the file does.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    assert to_image(png).size == to_image(path).size == (200, 200)
    assert to_image(png, max_pixels=10_000).size == to_image(path, max_pixels=10_000).size == (100, 100)


def test_tesseract_cannot_chat(tess, page):
    assert not tess.can_chat
    with pytest.raises(UsageError, match="cannot answer questions") as info:
        tess.ask(page, "What is the total?")
    assert "qwen_vl_2b" in str(info.value)   # says which models can


def test_seed_compatible_names(page):
    model = chatvlm.ModelLoader.load_model("tesseract", model_path=None, workers=1)
    try:
        assert isinstance(model, chatvlm.Model)
        text = model.process_image(page)
        assert cer("\n".join(ENGLISH), text) < 0.05
        parsed = model.parse_document(page, return_json=True)
        assert set(parsed) >= {"blocks", "markdown", "text", "width", "height"}
        assert parsed["width"] == page.size[0] and parsed["blocks"][0]["bbox"]
        assert model.parse_document(page, return_json=False) == parsed["markdown"]
    finally:
        chatvlm.ModelLoader.unload_model(model)


def test_loading_rules():
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        chatvlm.load_model("nope")
    with pytest.raises(chatvlm.ChatVLMError, match="--model-path needs --model"):
        chatvlm.load_model("auto", model_path="/tmp")
    with pytest.raises(UsageError, match="--attn"):
        chatvlm.load_model("tesseract", attn="fast")
    with chatvlm.load_model("tesseract", lang="rus", workers=1) as model:
        assert model.backend.lang == "rus"


def test_russian_interface_reads_russian_first():
    from chatvlm.i18n import set_language

    set_language("ru")
    with chatvlm.load_model("tesseract", workers=1) as model:
        assert model.backend.lang == "rus+eng"
        assert cer("\n".join(RUSSIAN), model.ocr(render_page(RUSSIAN))) < 0.05
        with pytest.raises(UsageError, match="не умеет отвечать на вопросы"):
            model.ask(render_page(RUSSIAN), "Сколько к оплате?")
    set_language("en")
    with chatvlm.load_model("tesseract", workers=1) as model:
        assert model.backend.lang == "eng+rus"


# --------------------------------------------------------------------------- tiny VLM

@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    folder = tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen_vl_2b"))
    with chatvlm.load_model("qwen_vl_2b", model_path=folder, device="cpu", max_new_tokens=6,
                            min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16) as model:
        yield model


def test_tiny_vlm_through_the_api(tiny_qwen):
    small = render_page(["Total 1250"], size=20, width=200)
    other = render_page(["Invoice 7"], size=20, width=160)
    assert tiny_qwen.name == "qwen_vl_2b" and tiny_qwen.can_chat
    assert tiny_qwen.backend.describe().get("device") == "cpu"
    text = tiny_qwen.ocr(small)
    assert isinstance(text, str) and text
    assert isinstance(tiny_qwen.markdown(small), str)
    # Batched through generate_batch, same tokens as one at a time (fp32, greedy), in order.
    assert tiny_qwen.ocr_batch([small, other]) == [text, tiny_qwen.ocr(other)]
    result = tiny_qwen.recognize(small, task="text")
    assert result.output_tokens and result.finish_reason in ("stop", "length", "loop")
    parsed = tiny_qwen.parse_document(small)
    assert parsed["blocks"] == [] and isinstance(parsed["markdown"], str)
    with pytest.raises(UsageError, match="no layout boxes"):
        tiny_qwen.layout(small)


def test_tiny_vlm_answers_with_history(tiny_qwen):
    small = render_page(["Total 1250"], size=20, width=200)
    first = tiny_qwen.ask(small, "What is the total?")
    assert isinstance(first, str)
    history = [("What is the total?", first)]
    second = tiny_qwen.ask(small, "And the currency?", history=history)
    assert isinstance(second, str)
    assert history == [("What is the total?", first)]   # the caller's history is not changed
    assert tiny_qwen.ask(small, "What is the total?") == first   # greedy: reproducible


def test_blank_page_is_empty_text_not_an_error(tess):
    blank = Image.new("RGB", (800, 1000), "white")
    assert tess.ocr(blank) == ""
    assert tess.ocr_batch([blank, render_page(ENGLISH)])[0] == ""
    assert tess.recognize(blank).empty is True


# --------------------------------------------------------------------------- the API streams

STREAM_SIZES = [(120, 90), (64, 200), (300, 160), (90, 90), (200, 64), (150, 150), (70, 110)]


@pytest.fixture(scope="module")
def eos_checkpoint(tmp_path_factory):
    """A tiny Qwen2-VL pushed slightly towards EOS: pages stop at different points."""
    from chatvlm.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen_eos"), eos_boost=1.5)


@pytest.fixture(scope="module")
def noise_pages():
    from tests.conftest import noise_page

    return [noise_page(w, h, seed=i) for i, (w, h) in enumerate(STREAM_SIZES)]


@pytest.fixture(scope="module")
def alone(eos_checkpoint, noise_pages):
    """Each page alone through transformers' generate, one at a time."""
    with chatvlm.load_model("qwen_vl_2b", model_path=eos_checkpoint, device="cpu", max_new_tokens=24,
                            batch_size=1, decode="hf") as model:
        texts = [model.ocr(page) for page in noise_pages]
    assert len(set(texts)) == len(texts)     # different pages, different texts: the order is checked
    return texts


@pytest.mark.usefixtures("one_torch_thread")
def test_ocr_batch_streams_pages_through_one_engine(eos_checkpoint, noise_pages, alone):
    """Seven pages of uneven size and length, three rows: one engine takes them all as a
    stream (no generate_batch window), each page gets what it gets alone, in input order."""
    with chatvlm.load_model("qwen_vl_2b", model_path=eos_checkpoint, device="cpu", max_new_tokens=24,
                            batch_size=3) as model:
        windows = []
        generate_batch = model.backend.generate_batch
        model.backend.generate_batch = lambda pages, *a: (windows.append(len(pages)), generate_batch(pages, *a))[1]
        assert model.ocr_batch(noise_pages) == alone
        facts = model.backend.describe()
    assert windows == []
    assert facts["decode_continuous"] and facts["decode_slots"] == 3 and facts["continuous_engines"] == 1
    assert facts["continuous_prefills"] > 1          # finished rows were refilled from the stream


@pytest.mark.usefixtures("one_torch_thread")
def test_a_bad_page_in_the_api_stream_fails_alone(eos_checkpoint, noise_pages, alone, tmp_path):
    """Page 3 cannot be read, page 5 the processor cannot take: RecognitionError names both,
    and its results keep every other page as alone, in order; the engine stays on."""
    unreadable = tmp_path / "notes.png"
    unreadable.write_text("not an image at all")
    images = list(noise_pages)
    images[2] = unreadable
    with chatvlm.load_model("qwen_vl_2b", model_path=eos_checkpoint, device="cpu", max_new_tokens=24,
                            batch_size=3) as model:
        build = model.backend.build_inputs
        fifth = noise_pages[4]

        def build_inputs(pages, task, params):
            if any(page.image.size == fifth.size for page in pages):
                raise ValueError("image file is truncated")
            return build(pages, task, params)
        model.backend.build_inputs = build_inputs
        with pytest.raises(chatvlm.RecognitionError) as info:
            model.ocr_batch(images)
        facts = model.backend.describe()
    error = info.value
    assert sorted(error.errors) == [2, 4]
    assert "notes.png" in error.errors[2] and "not a PDF or a supported image" in error.errors[2]
    assert "image file is truncated" in error.errors[4]
    assert "image 3" in str(error) and "image 5" in str(error)
    assert [r is None for r in error.results] == [False, False, True, False, True, False, False]
    kept = [r.text for r in error.results if r is not None]
    assert kept == [text for i, text in enumerate(alone) if i not in (2, 4)]
    assert facts["decode_continuous"] and facts["continuous_engines"] == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_out_of_memory_in_the_api_stream_loses_no_page(eos_checkpoint, noise_pages, alone, monkeypatch):
    """From the fourth decode step on, a step of more than two rows runs out of memory (as a
    full card would): the rows are halved to two, the unfinished pages go on in the stream,
    and every page still gets what it gets alone, in order."""
    torch = pytest.importorskip("torch")
    from chatvlm.engine import StaticDecoder

    card = {"steps": 0, "raised": 0}
    step = StaticDecoder._run_step

    def step_on_a_full_card(self, b, *args, **kwargs):
        card["steps"] += 1
        if card["steps"] >= 4 and b > 2:
            card["raised"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return step(self, b, *args, **kwargs)
    monkeypatch.setattr(StaticDecoder, "_run_step", step_on_a_full_card)
    with chatvlm.load_model("qwen_vl_2b", model_path=eos_checkpoint, device="cpu", max_new_tokens=24,
                            batch_size=4) as model:
        assert model.ocr_batch(noise_pages) == alone
        facts = model.backend.describe()
    assert card["raised"] == 1
    assert facts["decode_continuous"] and facts["decode_slots_lowered_to"] == 2 and facts["continuous_engines"] == 2
