"""`chatvlm ui`: the Streamlit page through Streamlit's AppTest harness, its work functions
on their own, and one screenshot of the running page in headless Chromium."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the 'serve' extra is not installed (pip install -e '.[serve]')")
from PIL import Image  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import chatvlm  # noqa: E402
from chatvlm.web import ENV_MODEL, ENV_MODEL_PATH, PAGE, page_environment, streamlit_command, work  # noqa: E402
from tests.headless_browser import HeadlessBrowser  # noqa: E402
from tests.api_helpers import ENGLISH, RUSSIAN, cer, english_interface, render_page, tiny_checkpoint  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def two_page_pdf() -> bytes:
    buffer = io.BytesIO()
    render_page(ENGLISH).save(buffer, "PDF", save_all=True, append_images=[render_page(["Page two of the document"])],
                              resolution=100)
    return buffer.getvalue()


@pytest.fixture
def page(monkeypatch):
    """The page as a user opens it after `chatvlm ui --model tesseract`."""
    monkeypatch.setenv(ENV_MODEL, "tesseract")
    monkeypatch.delenv(ENV_MODEL_PATH, raising=False)
    monkeypatch.setenv("CHATVLM_LANG", "en")
    app = AppTest.from_file(str(PAGE), default_timeout=60)
    app.run()
    assert not app.exception, app.exception
    return app


def run_button(app: AppTest):
    return app.button(key="run")


# --------------------------------------------------------------------------- the page

def test_page_opens_with_its_widgets(page):
    assert page.title[0].value == "chatvlm: try a model on your pages"
    assert page.file_uploader(key="files").label == "Images or PDFs"
    assert page.selectbox(key="model").value == "tesseract"
    assert page.radio(key="task").options == ["Text", "Markdown", "Layout"]   # tesseract cannot chat
    assert run_button(page).disabled   # nothing uploaded yet


def test_text_of_an_uploaded_page_beside_it(page):
    page.file_uploader(key="files").upload("invoice.png", png(render_page(ENGLISH)), "image/png").run()
    run_button(page).click().run()
    assert not page.exception and not page.error
    assert [s.value for s in page.subheader] == ["invoice.png page 1"]
    assert len(page.get("image")) == 1                  # the page, beside its result
    (text,) = page.text
    assert cer("\n".join(ENGLISH), text.value) < 0.05
    assert page.success[0].value == "1 of 1 pages done"
    assert len(page.get("download_button")) == 2


def test_layout_boxes_and_pages_of_a_pdf(page):
    page.file_uploader(key="files").upload("doc.pdf", two_page_pdf(), "application/pdf").run()
    page.radio(key="task").set_value("layout").run()
    page.text_input(key="pages").input("2").run()
    run_button(page).click().run()
    assert not page.exception and not page.error
    assert [s.value for s in page.subheader] == ["doc.pdf page 2"]
    assert "two" in page.markdown[-1].value or any("two" in m.value for m in page.markdown)
    (blocks,) = page.expander
    assert "layout blocks" in blocks.label and page.json[0].value


def test_bad_upload_is_named_and_good_one_goes_on(page):
    uploader = page.file_uploader(key="files")
    uploader.set_value([("notes.png", b"not a picture", "image/png"), ("invoice.png", png(render_page(ENGLISH)), "image/png")]).run()
    run_button(page).click().run()
    assert not page.exception
    assert "notes.png" in page.error[0].value and "not a PDF" in page.error[0].value
    assert [s.value for s in page.subheader] == ["invoice.png page 1"]


def test_russian_interface(page):
    page.radio(key="lang").set_value("ru").run()
    assert page.title[0].value == "chatvlm: попробуйте модель на своих страницах"
    assert page.file_uploader(key="files").label == "Изображения или PDF"
    page.file_uploader(key="files").upload("счёт.png", png(render_page(RUSSIAN)), "image/png").run()
    run_button(page).click().run()
    assert page.subheader[0].value == "счёт.png, страница 1"
    assert cer("\n".join(RUSSIAN), page.text[0].value) < 0.05


def test_ask_about_a_page_with_a_tiny_vlm(monkeypatch, tmp_path_factory):
    folder = tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen_vl_2b"))
    monkeypatch.setenv(ENV_MODEL, "qwen_vl_2b")
    monkeypatch.setenv(ENV_MODEL_PATH, str(folder))
    app = AppTest.from_file(str(PAGE), default_timeout=120)
    app.run()
    assert "Ask a question" in app.radio(key="task").options
    app.radio(key="task").set_value("ask").run()
    app.file_uploader(key="files").upload("p.png", png(render_page(["Total 1250"], size=20, width=200)), "image/png").run()
    assert run_button(app).disabled          # no question yet
    app.text_input(key="question").input("What is the total?").run()
    run_button(app).click().run()
    assert not app.exception and not app.error
    assert app.markdown[-1].value == "**What is the total?**" or any(m.value == "**What is the total?**" for m in app.markdown)
    assert len(app.info) == 1 and app.info[0].value


# --------------------------------------------------------------------------- the work, without Streamlit

def test_work_progress_results_and_downloads():
    with chatvlm.load_model("tesseract", workers=1, batch_size=2) as model:
        files = [("doc.pdf", two_page_pdf()), ("one.png", png(render_page(["Invoice 7"]))), ("junk.png", b"junk")]
        items, problems = work.read_pages(files, None)
        assert [(i.file, i.page) for i in items] == [("doc.pdf", 1), ("doc.pdf", 2), ("one.png", 1)]
        assert len(problems) == 1 and "junk.png" in problems[0]
        seen: list[tuple[int, int]] = []
        answers = work.run_task(model, items, "text", progress=lambda done, total: seen.append((done, total)))
        assert seen == [(2, 3), (3, 3)]           # batches of two pages
        assert cer("\n".join(ENGLISH), answers[0].text) < 0.05 and "Invoice 7" in answers[2].text
        (label, name, data, mime), (_, json_name, json_data, _) = work.downloads(answers, "text")
        assert name == "chatvlm.txt" and mime == "text/plain" and b"Invoice 7" in data
        records = json.loads(json_data)["pages"]
        assert [(r["file"], r["page"], r["status"]) for r in records] == [("doc.pdf", 1, "ok"), ("doc.pdf", 2, "ok"), ("one.png", 1, "ok")]
        layout = work.run_task(model, items[:1], "layout")
        assert layout[0].blocks and layout[0].image.size == items[0].image.size
        assert work.downloads(layout, "layout")[0][1] == "chatvlm.md"


def test_tasks_offered_per_model():
    from chatvlm.registry import get_spec

    assert work.tasks_for(get_spec("tesseract")) == ["text", "markdown", "layout"]
    assert work.tasks_for(get_spec("qwen_vl_2b")) == ["text", "markdown", "ask"]
    assert work.tasks_for(get_spec("dots_ocr")) == ["text", "markdown", "layout"]


# --------------------------------------------------------------------------- the running page

def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (apt-get install chromium; scripts/setup.sh --test does it)")


def test_running_page_in_headless_chromium(tmp_path):
    chrome = browser()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = page_environment("tesseract")
    env.update(CHATVLM_LANG="en", HOME=str(tmp_path))   # Streamlit and Chromium keep their state in HOME
    process = subprocess.Popen(streamlit_command("127.0.0.1", port), cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    tab = None
    try:
        deadline = time.monotonic() + 40
        while True:
            assert process.poll() is None, process.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "streamlit did not come up"
            try:
                with urllib.request.urlopen(f"{url}_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.2)
        # The page is built over a websocket after load (and the first session warms Streamlit
        # up), so wait in the tab itself until the uploader and the title are drawn, then
        # shoot that same tab.
        tab = HeadlessBrowser(chrome, tmp_path / "chromium")
        tab.open(url)
        drawn = ('!!document.querySelector(\'[data-testid="stFileUploader"]\') && '
                 'document.body.innerText.includes("chatvlm: try a model on your pages")')
        assert tab.wait_for(drawn, timeout=90), tab.evaluate("document.body.innerText")
        assert tab.wait_for('document.fonts.status === "loaded"', timeout=10)
        time.sleep(1)                                    # let the last frame paint
        image = Image.open(io.BytesIO(tab.screenshot())).convert("L")
        assert image.size == (1280, 900)
        low, high = image.getextrema()
        assert high - low > 100                          # not one flat colour
        dark = sum(image.histogram()[:128])
        assert dark > 500                                # text and widgets were drawn
    finally:
        if tab is not None:
            tab.close()
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
