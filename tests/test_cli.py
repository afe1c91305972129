"""The command line as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from chatvlm.cli import app, hoist_global_options
from tests.conftest import ROOT, text_page

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ocr", "layout", "models"):
        assert command in result.output
    ocr_help = runner.invoke(app, ["ocr", "--help"])
    assert ocr_help.exit_code == 0 and "--pages" in ocr_help.output and "--format" in ocr_help.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("chatvlm ")


def test_unknown_model_is_usage_error_listing_known_names(tmp_path):
    text_page("x").save(tmp_path / "x.png")
    result = runner.invoke(app, ["ocr", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--model", "gpt-9"])
    assert result.exit_code == 2
    assert "gpt-9" in result.output and "tesseract" in result.output and "qwen_vl_2b" in result.output


def test_bad_page_range_and_format_are_usage_errors(tmp_path):
    text_page("x").save(tmp_path / "x.png")
    assert runner.invoke(app, ["ocr", str(tmp_path), "--pages", "3-1", "-o", str(tmp_path / "o")]).exit_code == 2
    assert runner.invoke(app, ["ocr", str(tmp_path), "--format", "docx", "-o", str(tmp_path / "o")]).exit_code == 2


def test_ocr_exit_codes_and_outputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    text_page("Hello chatvlm").save(src / "hello.png")
    good = runner.invoke(app, ["ocr", str(src), "-o", str(tmp_path / "out"), "--model", "tesseract", "--lang", "eng"])
    assert good.exit_code == 0, good.output
    assert "Hello" in (tmp_path / "out" / "hello" / "page-0001.txt").read_text()
    (src / "bad.png").write_text("text pretending to be a PNG")
    partial = runner.invoke(app, ["ocr", str(src), "-o", str(tmp_path / "out"), "--model", "tesseract", "--lang", "eng"])
    assert partial.exit_code == 1
    entries = [json.loads(l) for l in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {Path(e["source"]).name: e["status"] for e in entries} == {"hello.png": "skipped", "bad.png": "error"}


def test_global_flags_anywhere():
    assert hoist_global_options(["ocr", "in", "-q", "--ui-lang", "ru"]) == ["-q", "--ui-lang", "ru", "ocr", "in"]
    assert hoist_global_options(["ocr", "--", "-q"]) == ["ocr", "--", "-q"]


def test_importing_the_cli_sets_nothing_up():
    """A program that imports the CLI (tests, a wrapper script) keeps its own language, Click
    and logging: the interface is set up when a command line runs, not at import."""
    code = """
import logging, sys
handlers = list(logging.getLogger().handlers)
import chatvlm.cli
from chatvlm import i18n
assert i18n.current_language() == "en" and i18n._("Output folder.") == "Output folder.", i18n.current_language()
for name in ("click.exceptions", "typer._click.exceptions"):
    module = sys.modules.get(name)
    if module is not None:
        assert not getattr(module.ClickException.format_message, "_chatvlm_wrapped", False), name
rich_utils = sys.modules.get("typer.rich_utils")
assert rich_utils is None or rich_utils.OPTIONS_PANEL_TITLE == "Options"
assert logging.getLogger().handlers == handlers
print("untouched")
"""
    env = {**os.environ, "CHATVLM_LANG": "ru", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code, "--ui-lang", "ru"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0 and "untouched" in result.stdout, result.stderr


def test_models_lists_every_model():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("tesseract", "qwen_vl_2b", "qwen3_vl_2b", "got_ocr_hf", "dots_ocr", "phi3_vision", "deepseek_ocr", "deepseek_ocr2"):
        assert name in result.output


def test_console_script_and_module_entry(tmp_path):
    result = subprocess.run([sys.executable, "-m", "chatvlm", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "chatvlm" in result.stdout


def test_model_options_parse_to_backend_extra():
    from chatvlm.cli import parse_model_options
    from chatvlm.errors import UsageError
    import pytest

    assert parse_model_options(["mode=gundam", "num_crops=4", "scale=0.5"]) == {"mode": "gundam", "num_crops": 4, "scale": 0.5}
    assert parse_model_options(None) == {}
    with pytest.raises(UsageError):
        parse_model_options(["gundam"])
