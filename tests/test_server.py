"""`chatvlm serve`: the HTTP API with FastAPI's test client and on a real uvicorn on 127.0.0.1,
over the real tesseract engine and a tiny random-weight Qwen2-VL."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed (pip install -e '.[serve]')")
import httpx  # noqa: E402  (comes with the serve extra's test client)
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import chatvlm  # noqa: E402
from chatvlm.server.app import ServerSettings, create_app  # noqa: E402
from chatvlm.server.uploads import Limits  # noqa: E402
from tests.api_helpers import ENGLISH, cer, english_interface, render_page, tiny_checkpoint  # noqa: E402,F401
from tests.conftest import CORPUS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def pdf_bytes(*images: Image.Image) -> bytes:
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", save_all=True, append_images=list(images[1:]), resolution=100)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextmanager
def real_server(app):
    """The app on a real uvicorn on 127.0.0.1 (a free port), in a thread; always stopped."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "uvicorn did not stop"


@contextmanager
def counted_generation(model, gate: threading.Event | None = None):
    """Record how many pages each call hands `model`'s real backend: every generate_batch
    call, or every stream (a backend with a continuous engine takes each recognize call's
    pages as one stream); with `gate`, each call waits for it first (to hold the device
    busy while requests arrive)."""
    backend = model.backend
    real, real_stream = backend.generate_batch, backend.generate_stream
    calls: list[int] = []

    def taken(pages) -> None:
        calls.append(len(pages))
        if gate is not None:
            assert gate.wait(60), "gate never opened"

    def generate_batch(pages, task, params):
        taken(pages)
        return real(pages, task, params)

    def generate_stream(pages, task, params, **kwargs):
        pages = list(pages)
        taken(pages)
        return real_stream(iter(pages), task, params, **kwargs)

    backend.generate_batch, backend.generate_stream = generate_batch, generate_stream
    try:
        yield calls
    finally:
        del backend.generate_batch, backend.generate_stream


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert "Traceback" not in error["message"]
    for word in words:
        assert word in error["message"], error["message"]
    return error


# --------------------------------------------------------------------------- tesseract

@pytest.fixture(scope="module")
def tess():
    with chatvlm.load_model("tesseract", workers=1) as model:
        yield model


@pytest.fixture(scope="module")
def client(tess):
    settings = ServerSettings(limits=Limits(max_upload_bytes=400_000, max_pixels=2_000_000, max_pages=3, dpi=100))
    with TestClient(create_app(tess, settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def page_png():
    return png_bytes(render_page(ENGLISH))


def test_ocr_of_a_page_in_three_formats(client, page_png):
    expected = "\n".join(ENGLISH)
    text = client.post("/v1/ocr", files={"file": ("invoice.png", page_png, "image/png")})
    assert text.status_code == 200, text.text
    body = text.json()
    assert body["model"] == "tesseract" and body["file"] == "invoice.png" and body["page_count"] == 1 and body["failed"] == 0
    (page,) = body["pages"]
    assert page["page"] == 1 and page["status"] == "ok" and cer(expected, page["text"]) < 0.05
    assert page["finish_reason"] == "stop" and set(page["tokens"]) == {"input", "output"}
    assert {"recognise", "queue"} <= set(page["timings"])
    markdown = client.post("/v1/ocr", files={"file": ("invoice.png", page_png)}, data={"format": "markdown"}).json()["pages"][0]
    assert cer(expected, markdown["markdown"]) < 0.05 and "text" not in markdown
    layout = client.post("/v1/ocr", files={"file": ("invoice.png", page_png)}, data={"format": "json"}).json()["pages"][0]
    assert layout["blocks"] and cer(expected, "\n".join(b["text"] for b in layout["blocks"])) < 0.05
    for block in layout["blocks"]:
        x1, y1, x2, y2 = block["bbox"]
        assert 0 <= x1 < x2 <= layout["width"] and 0 <= y1 < y2 <= layout["height"]


def test_layout_endpoint_and_pdf_pages(client):
    pdf = pdf_bytes(render_page(ENGLISH), render_page(["Page two of the document"]))
    both = client.post("/v1/layout", files={"file": ("doc.pdf", pdf, "application/pdf")})
    assert both.status_code == 200, both.text
    assert [p["page"] for p in both.json()["pages"]] == [1, 2] and both.json()["page_count"] == 2
    assert all(p["blocks"] for p in both.json()["pages"])
    second = client.post("/v1/ocr", files={"file": ("doc.pdf", pdf)}, data={"pages": "2"}).json()
    assert [p["page"] for p in second["pages"]] == [2] and "two" in second["pages"][0]["text"]


def test_models_health_and_docs(client):
    models = client.get("/v1/models").json()
    assert models["model"] == "tesseract" and not models["can_chat"]
    names = {m["name"]: m for m in models["models"]}
    assert names["tesseract"]["loaded"] and not names["qwen_vl_2b"]["loaded"] and names["qwen_vl_2b"]["can_chat"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queue_pages"] == 0
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/ocr", "/v1/layout", "/v1/ask", "/v1/models", "/health"} <= set(paths)


def test_bad_requests_get_clear_4xx(client, page_png):
    assert_error(client.post("/v1/ocr", files={"file": ("notes.png", b"just some text, no picture")}), 415, "notes.png", "not a PDF")
    assert_error(client.post("/v1/ocr", files={"file": ("cut.png", page_png[: len(page_png) // 3])}), 422, "cut.png", "truncated")
    pdf = pdf_bytes(render_page(ENGLISH))
    assert_error(client.post("/v1/ocr", files={"file": ("cut.pdf", pdf[: len(pdf) // 2])}), 422, "cut.pdf")
    assert_error(client.post("/v1/ocr", files={"file": ("empty.png", b"")}), 400, "empty")
    assert_error(client.post("/v1/ocr", data={"format": "text"}), 400, "'file' is missing")
    assert_error(client.post("/v1/ocr", files={"file": ("a.png", page_png)}, data={"format": "docx"}), 400, "docx")
    assert_error(client.post("/v1/ocr", files={"file": ("a.png", page_png)}, data={"pages": "3-1"}), 400, "3-1")
    assert_error(client.post("/v1/ocr", files={"file": ("a.png", page_png)}, data={"pages": "5"}), 400, "no pages")
    assert_error(client.post("/v1/ocr", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=xyz"}), 400)
    assert_error(client.post("/v1/ask", files={"file": ("a.png", page_png)}, data={"question": "Total?"}), 400, "cannot answer")
    assert_error(client.get("/v1/nothing"), 404, "/v1/nothing")
    assert_error(client.get("/v1/ocr"), 405)
    assert client.get("/health").status_code == 200   # still serving


def test_corpus_bad_files(client):
    bad = CORPUS / "bad"
    if not bad.is_dir():
        pytest.skip(f"../shared/corpus is absent (looked in {CORPUS}); CI provides it beside the clone")
    expected = {"encrypted_aes128.pdf": (422, "encrypted"), "truncated_ghostscript.pdf": (422, "truncated"),
                "broken_header.png": (422, "corrupt"), "not_an_image.png": (415, "not a PDF"),
                "empty.pdf": (400, "empty"), "huge_dims_decompression_bomb.gif": (413, "pixels"),
                "huge_mono_35000px.pdf": (413, "MP")}
    for name, (status, word) in expected.items():
        assert_error(client.post("/v1/ocr", files={"file": (name, (bad / name).read_bytes())}), status, name, word)


def test_size_limits_give_413(client):
    big = Image.effect_noise((700, 700), 80).convert("RGB")     # noise does not compress: ~1.4 MB of PNG
    assert_error(client.post("/v1/ocr", files={"file": ("big.png", png_bytes(big))}), 413, "MB")
    wide = png_bytes(Image.new("RGB", (2000, 1100), "white"))    # 2.2 MP, small file
    assert_error(client.post("/v1/ocr", files={"file": ("wide.png", wide)}), 413, "wide.png", "MP")
    four = pdf_bytes(*[render_page([f"Page {n}"], width=300) for n in range(1, 5)])
    assert_error(client.post("/v1/ocr", files={"file": ("four.pdf", four)}), 413, "4", "3")
    ok = client.post("/v1/ocr", files={"file": ("four.pdf", four)}, data={"pages": "2-4"})
    assert ok.status_code == 200 and [p["page"] for p in ok.json()["pages"]] == [2, 3, 4]


def test_api_key(tess, page_png, monkeypatch):
    settings = ServerSettings(api_key="s3cret")
    with TestClient(create_app(tess, settings)) as c:
        assert c.get("/health").status_code == 200
        assert_error(c.get("/v1/models"), 401, "API key")
        assert c.get("/v1/models").headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(c.get("/v1/models", headers={"X-API-Key": "s3cret2"}), 401)
        assert_error(c.get("/docs"), 401)
        assert_error(c.post("/v1/ocr", files={"file": ("a.png", page_png)}), 401)
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = c.post("/v1/ocr", files={"file": ("a.png", page_png)}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200 and cer("\n".join(ENGLISH), ok.json()["pages"][0]["text"]) < 0.05


def test_messages_follow_the_interface_language(client):
    from chatvlm.i18n import set_language

    set_language("ru")
    error = assert_error(client.post("/v1/ocr", files={"file": ("заметки.png", b"plain text")}), 415, "заметки.png")
    assert "не PDF" in error["message"], error["message"]
    assert_error(client.post("/v1/ocr", data={}), 400, "нет поля")


def test_batcher_skips_requests_whose_client_gave_up(tess):
    from chatvlm.server.batcher import Batcher, Work

    batcher = Batcher(tess, queue_pages=4)
    page = render_page(ENGLISH)
    gone = batcher.submit(Work(task="text", images=[page]))
    kept = batcher.submit(Work(task="text", images=[page]))
    assert batcher.waiting_pages == 2
    assert gone.cancel()
    with counted_generation(tess) as calls:
        batcher.start()
        try:
            (outcome,) = kept.result(60)
        finally:
            batcher.stop()
    assert calls == [1] and outcome.error is None
    assert cer("\n".join(ENGLISH), outcome.result.text) < 0.05
    assert batcher.waiting_pages == 0


# --------------------------------------------------------------------------- real uvicorn

def test_real_uvicorn_ocr_limits_and_queue_full(tess, page_png):
    settings = ServerSettings(limits=Limits(max_upload_bytes=300_000), queue_pages=2)
    app = create_app(tess, settings)
    gate = threading.Event()
    with real_server(app) as url, counted_generation(tess, gate) as calls, ThreadPoolExecutor(4) as pool:
        def post():
            return httpx.post(f"{url}/v1/ocr", files={"file": ("p.png", page_png)}, timeout=60)

        gate.set()
        first = post()
        assert first.status_code == 200 and cer("\n".join(ENGLISH), first.json()["pages"][0]["text"]) < 0.05

        # A body streamed without Content-Length is cut off at the limit too.
        def chunks():
            yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
            for _ in range(40):
                yield b"\0" * 16384
            yield b"\r\n--b--\r\n"
        streamed = httpx.post(f"{url}/v1/ocr", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}, timeout=60)
        assert_error(streamed, 413, "MB")

        gate.clear()
        running = pool.submit(post)                          # taken by the worker, held at the gate
        wait_until(lambda: len(calls) == 2, "the held batch")
        waiting = [pool.submit(post), pool.submit(post)]     # fill the queue (2 pages)
        wait_until(lambda: app.state.batcher.waiting_pages == 2, "two queued pages")
        refused = post()
        error = assert_error(refused, 503, "busy")
        assert int(refused.headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/health", timeout=10).json()["queue_pages"] == 2
        gate.set()
        for future in [running, *waiting]:
            response = future.result(60)
            assert response.status_code == 200 and response.json()["pages"][0]["status"] == "ok"
        assert error["code"] == "busy"


def test_serve_command_starts_and_answers(tmp_path, page_png):
    """`chatvlm serve` as a user runs it: loads the model, listens on 127.0.0.1, stops on SIGTERM."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), CHATVLM_API_KEY="k1")
    process = subprocess.Popen([sys.executable, "-m", "chatvlm", "serve", "--model", "tesseract", "--port", str(port)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "chatvlm serve did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        ok = httpx.post(f"{url}/v1/ocr", files={"file": ("p.png", page_png)}, headers={"Authorization": "Bearer k1"}, timeout=60)
        assert ok.status_code == 200 and cer("\n".join(ENGLISH), ok.json()["pages"][0]["text"]) < 0.05
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("lang, words", [("en", "pip install 'chatvlm[serve]'"), ("ru", "pip install 'chatvlm[serve]'")])
def test_without_the_extra_the_commands_say_what_to_install(lang, words):
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['streamlit'] = None; "
            "from chatvlm.cli import main; sys.argv = ['chatvlm', '--ui-lang', sys.argv[1], sys.argv[2]]; main()")
    for command in ("serve", "ui"):
        run = subprocess.run([sys.executable, "-c", code, lang, command], cwd=ROOT, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300"), timeout=60)
        assert run.returncode == 2, run.stderr
        assert words in run.stderr and command in run.stderr
        if lang == "ru":
            assert "нужен" in run.stderr, run.stderr


# --------------------------------------------------------------------------- tiny VLM

@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    folder = tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen_vl_2b"))
    with chatvlm.load_model("qwen_vl_2b", model_path=folder, device="cpu", max_new_tokens=4, batch_size=8,
                            min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16) as model:
        yield model


def test_tiny_vlm_twenty_concurrent_requests_are_batched(tiny_qwen):
    pages = [render_page([f"Total {n}"], size=20, width=160 + 8 * n) for n in range(20)]
    expected = tiny_qwen.ocr_batch(pages)     # the same pages straight through the Python API
    app = create_app(tiny_qwen, ServerSettings(queue_pages=64))
    gate = threading.Event()
    with real_server(app) as url, counted_generation(tiny_qwen, gate) as calls, ThreadPoolExecutor(20) as pool:
        def post(n):
            return httpx.post(f"{url}/v1/ocr", files={"file": (f"p{n}.png", png_bytes(pages[n]))}, timeout=120)

        futures = [pool.submit(post, n) for n in range(20)]
        # Hold the device on the first batch until every other request waits in the queue.
        wait_until(lambda: len(calls) >= 1 and len(calls) + app.state.batcher.waiting_pages + sum(calls) >= 20 + len(calls),
                   "twenty requests queued")
        gate.set()
        responses = [f.result(120) for f in futures]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    texts = [r.json()["pages"][0]["text"] for r in responses]
    assert texts == expected                   # each client got its own page's result, batched or not
    assert sum(calls) == 20 and len(calls) < 20 and max(calls) > 1, calls
    assert all(r.json()["pages"][0]["tokens"]["output"] for r in responses)


def test_tiny_vlm_ask_and_markdown(tiny_qwen):
    small = png_bytes(render_page(["Total 1250"], size=20, width=200))
    with TestClient(create_app(tiny_qwen)) as c:
        first = c.post("/v1/ask", files={"file": ("p.png", small)}, data={"question": "What is the total?"})
        assert first.status_code == 200, first.text
        answer = first.json()["answer"]
        assert isinstance(answer, str) and answer == tiny_qwen.ask(render_page(["Total 1250"], size=20, width=200), "What is the total?")
        history = json.dumps([["What is the total?", answer]])
        second = c.post("/v1/ask", files={"file": ("p.png", small)}, data={"question": "Currency?", "history": history})
        assert second.status_code == 200 and isinstance(second.json()["answer"], str)
        assert_error(c.post("/v1/ask", files={"file": ("p.png", small)}, data={"question": "x", "history": "[1, 2"}), 400, "history")
        assert_error(c.post("/v1/ask", files={"file": ("p.png", small)}, data={"question": "x", "page": "2"}), 400, "page 2")
        assert_error(c.post("/v1/ask", files={"file": ("p.png", small)}, data={"question": "  "}), 400)
        assert_error(c.post("/v1/layout", files={"file": ("p.png", small)}), 400, "no layout boxes")
        markdown = c.post("/v1/ocr", files={"file": ("p.png", small)}, data={"format": "markdown"})
        assert markdown.status_code == 200 and isinstance(markdown.json()["pages"][0]["markdown"], str)
