"""`chatvlm ask`: one-shot answers, a scripted interactive chat, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import chatvlm
from tests.api_helpers import ENGLISH, english_interface, render_page, tiny_checkpoint  # noqa: F401
from chatvlm.chat import ChatSession, choose_chat_model
from chatvlm.cli import app
from chatvlm.errors import EXIT_USAGE, ModelUnavailableError, UsageError

def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def page_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pages") / "invoice.png"
    render_page(ENGLISH[:1], size=20, width=240).save(path)
    return path


@pytest.fixture(scope="module")
def two_page_pdf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pdf") / "two.pdf"
    first, second = render_page(["Page one"], size=20, width=200), render_page(["Page two"], size=20, width=200)
    first.save(path, save_all=True, append_images=[second], resolution=72)
    return path


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("name", ["tesseract", "got_ocr_hf"])
def test_models_that_cannot_chat_say_so(runner, page_png, name):
    result = runner.invoke(app, ["ask", str(page_png), "What is this?", "--model", name])
    assert result.exit_code == EXIT_USAGE
    assert f"model '{name}' cannot answer questions" in flat(result.output)
    assert "qwen_vl_2b" in flat(result.output)          # names the models that can
    assert "Traceback" not in flat(result.output)


def test_no_chat_weights_is_a_clear_error(runner, page_png, monkeypatch):
    import chatvlm.weights as weights

    monkeypatch.setattr(weights, "weights_available", lambda spec, *a, **k: False)
    result = runner.invoke(app, ["ask", str(page_png), "What is this?"])
    assert result.exit_code == ModelUnavailableError.exit_code
    assert "no chat-capable model has its weights here" in flat(result.output)
    assert "--model qwen_vl_2b" in flat(result.output) and "--model-path" in flat(result.output)


def test_choosing_the_chat_model(monkeypatch, tmp_path):
    import chatvlm.weights as weights

    monkeypatch.setattr(weights, "weights_available", lambda spec, *a, **k: spec.name == "qwen3_vl_2b")
    assert choose_chat_model(None).name == "qwen3_vl_2b"          # best chat model with weights here
    assert choose_chat_model("phi3_vision").name == "phi3_vision"  # a named one is taken as asked
    with pytest.raises(UsageError, match="--model-path needs --model"):
        choose_chat_model(None, tmp_path)
    with pytest.raises(UsageError, match="cannot answer questions"):
        choose_chat_model("deepseek_ocr2")


# --------------------------------------------------------------------------- a tiny chat model

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen_vl_2b"))


@pytest.fixture()
def small_pixels(monkeypatch):
    """Keep the tiny model's image small: the CLI loads through load_model, with these budgets."""
    import chatvlm.api as api

    original = api.load_model
    monkeypatch.setattr(api, "load_model", lambda *a, **k: original(*a, **{**PIXELS, "max_new_tokens": 5, **k}))


def test_one_shot_answer(runner, page_png, tiny, small_pixels):
    result = runner.invoke(app, ["ask", str(page_png), "What is the invoice number?",
                                 "--model", "qwen_vl_2b", "--model-path", str(tiny), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()                      # the answer, rendered as markdown


def test_ask_takes_the_generation_options_ocr_has(runner, page_png, tiny, small_pixels, monkeypatch):
    import torch
    import chatvlm.api as api

    loaded = []
    sized = api.load_model
    monkeypatch.setattr(api, "load_model", lambda *a, **k: loaded.append(sized(*a, **k)) or loaded[-1])
    result = runner.invoke(app, ["ask", str(page_png), "What is the invoice number?", "--model", "qwen_vl_2b",
                                 "--model-path", str(tiny), "--device", "cpu", "--max-new-tokens", "3",
                                 "--dtype", "float32", "--attn", "eager"])
    assert result.exit_code == 0, result.output
    model = loaded[0]
    assert model.params.max_new_tokens == 3
    assert model.backend.attn == "eager" and model.backend.dtype == torch.float32


def test_page_out_of_range(runner, two_page_pdf, tiny, small_pixels):
    result = runner.invoke(app, ["ask", str(two_page_pdf), "Hi?", "--page", "3",
                                 "--model", "qwen_vl_2b", "--model-path", str(tiny)])
    assert result.exit_code == EXIT_USAGE
    assert "has 2 page(s); page 3 does not exist" in flat(result.output)


def test_scripted_chat(runner, two_page_pdf, tiny, small_pixels):
    script = "\n".join([
        "What is on this page?",
        "/model tesseract",          # refused, the chat goes on with the same model
        "/page 9",                   # no such page: an error, the chat goes on
        "/nonsense",
        "",
        "And below it?",
        "/page 2",
        "What about this one?",
        "/exit",
        "Never asked",
    ]) + "\n"
    result = runner.invoke(app, ["ask", str(two_page_pdf), "--model", "qwen_vl_2b", "--model-path", str(tiny)],
                           input=script)
    assert result.exit_code == 0, result.output
    out = flat(result.stdout)
    assert "> What is on this page?" in out and "> And below it?" in out and "> What about this one?" in out
    assert "Never asked" not in out
    err = flat(result.stderr)
    assert "Chatting with qwen_vl_2b" in err and "page 1 of 2" in err
    assert "cannot answer questions" in err
    assert "page 9 does not exist" in err
    assert "unknown command '/nonsense'" in err
    assert "Now on page 2 of 2; new conversation." in err


def test_chat_keeps_the_conversation(two_page_pdf, tiny):
    """History is kept between questions, reset by /page, kept across /model."""
    from io import StringIO

    from rich.console import Console

    quiet = Console(file=StringIO())
    session = ChatSession(two_page_pdf, 1, "qwen_vl_2b", tiny, "cpu", 72, console=quiet, errors=quiet)
    session.load("qwen_vl_2b", tiny)
    try:
        session.model.params.max_new_tokens = 5
        session.model.params.min_pixels, session.model.params.max_pixels = PIXELS["min_pixels"], PIXELS["max_pixels"]
        session.interact(StringIO("first question\nsecond question\n"))
        assert [q for q, _a in session.history] == ["first question", "second question"]
        # The second answer was asked with the first turn as history: the same call through the API agrees.
        first_answer = session.history[0][1]
        again = session.model.ask(session.image, "second question", [("first question", first_answer)])
        assert session.history[1][1] == again
        session.interact(StringIO(f"/model qwen_vl_2b {tiny}\n"))
        assert len(session.history) == 2 and session.model_name == "qwen_vl_2b"
        session.interact(StringIO("/page 2\n"))
        assert session.page == 2 and session.history == []
        session.interact(StringIO("/reset\n"))
    finally:
        session.close()
