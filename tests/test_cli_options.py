"""Options checked before anything runs, the same options on every command, layout's default model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chatvlm.cli import app
from chatvlm.errors import UsageError
from chatvlm.pipeline import check_model_options
from chatvlm.registry import get_spec
from tests.conftest import text_page

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture()
def page(tmp_path):
    path = tmp_path / "x.png"
    text_page("Hello options").save(path)
    return path


@pytest.mark.parametrize("args, says", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be at least 1"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "-2"], "--workers must be at least 1"),
    (["--device", "banana"], "--device must be cpu, cuda or cuda:N, got 'banana'"),
    (["--dtype", "int3"], "--dtype must be bfloat16, float16 or float32, got 'int3'"),
    (["-O", "foo=bar"], "unknown model option 'foo' for tesseract"),
    (["--max-image-pixels", "0"], "--max-image-pixels must be at least"),
])
@pytest.mark.parametrize("command", ["ocr", "layout"])
def test_nonsense_is_a_usage_error(page, tmp_path, command, args, says):
    out = tmp_path / "out"
    result = runner.invoke(app, ["--ui-lang", "en", command, str(page), "-o", str(out), "--model", "tesseract", *args])
    assert result.exit_code == 2, result.output
    assert says in flat(result.output)
    assert not isinstance(result.exception, (TypeError, ValueError, OSError))
    assert not out.exists()            # refused before anything ran


def test_each_backend_declares_its_model_options():
    check_model_options(get_spec("deepseek_ocr"), ["mode", "decode"])
    check_model_options(get_spec("phi3_vision"), ["num_crops"])
    # settings documented elsewhere: GOT's n-gram rule, the decoder's length cap, the batch probe
    check_model_options(get_spec("got_ocr_hf"), ["no_repeat_ngram_size"])
    check_model_options(get_spec("qwen_vl_2b"), ["decode_max_len", "decode_slots", "decode_refill_chunk",
                                                 "probe_pages", "probe_tokens", "probe_margin"])
    with pytest.raises(UsageError, match="num_crops"):
        check_model_options(get_spec("deepseek_ocr"), ["num_crops"])
    with pytest.raises(UsageError, match="'mode'"):
        check_model_options(get_spec("tesseract"), ["mode"])


def test_valid_spellings_pass(page, tmp_path):
    result = runner.invoke(app, ["--ui-lang", "en", "ocr", str(page), "-o", str(tmp_path / "out"), "--model", "tesseract",
                                 "--lang", "eng", "--device", "cpu", "--dtype", "bf16", "--workers", "1",
                                 "--max-new-tokens", "16"])
    assert result.exit_code == 0, result.output


def test_layout_defaults_to_the_best_layout_model_here(page, tmp_path, monkeypatch):
    from chatvlm import weights

    monkeypatch.setattr(weights, "weights_available", lambda spec, *a, **k: False)
    out = tmp_path / "out"
    result = runner.invoke(app, ["--ui-lang", "en", "layout", str(page), "-o", str(out), "--lang", "eng", "--workers", "1"])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "using tesseract" in text and "--model dots_ocr" in text   # says so, and names the best layout VLM
    assert json.loads((out / "report.json").read_text())["model"] == "tesseract"
    assert (out / "x" / "page-0001.json").exists()


def test_layout_picks_a_layout_model_whose_weights_are_here(monkeypatch):
    from chatvlm import weights
    from chatvlm.pipeline import resolve_model
    from chatvlm.records import Reporter

    # qwen_vl_2b ranks first for `ocr` but gives no boxes; deepseek_ocr2 does.
    monkeypatch.setattr(weights, "weights_available", lambda spec, *a, **k: spec.name in ("qwen_vl_2b", "deepseek_ocr2"))
    assert resolve_model("auto", Reporter(), task="layout").name == "deepseek_ocr2"
    assert resolve_model("auto", Reporter()).name == "qwen_vl_2b"


@pytest.mark.parametrize("command, options", [
    ("ask", ["--max-new-tokens", "--dtype", "--attn", "--device", "--model-path", "--dpi"]),
    ("layout", ["--workers", "--max-new-tokens", "--dtype", "--attn", "--device", "--batch-size"]),
    ("ocr", ["--workers", "--max-new-tokens", "--dtype", "--attn", "--device", "--batch-size"]),
])
def test_shared_options_exist_on_every_command(command, options):
    result = runner.invoke(app, ["--ui-lang", "en", command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in options:
        assert option in result.output, (command, option)


@pytest.mark.parametrize("args, says", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--dtype", "int3"], "--dtype must be"),
    (["--attn", "fast"], "--attn must be"),
])
def test_ask_checks_the_shared_options_too(page, args, says):
    result = runner.invoke(app, ["--ui-lang", "en", "ask", str(page), "what?", "--model", "qwen_vl_2b", *args])
    assert result.exit_code == 2 and says in flat(result.output)


def test_shared_options_read_the_same_on_every_command():
    """An option several commands take has one declaration: the same help and default."""
    import typer.main

    group = typer.main.get_command(app)
    seen: dict[str, tuple] = {}
    shared = 0
    for command in ("ocr", "layout", "bench", "ask", "serve"):
        for param in group.commands[command].params:
            name = max(param.opts, key=len)
            if name in ("--out", "--model", "--model-path", "--model-option", "--max-image-pixels", "--max-pages") \
                    and command in ("bench", "ask", "serve", "layout"):
                continue   # these say something else on purpose (NAME=DIR, a chat model, a server limit...)
            facts = (getattr(param, "help", None), param.default, type(param.default).__name__)
            if name in seen:
                shared += 1
                assert seen[name] == facts, (command, name)
            seen[name] = facts
    assert shared >= 30
