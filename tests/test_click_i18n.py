"""Click's own usage errors and the report's units in the Russian interface."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.api_helpers import english_interface  # noqa: F401
from chatvlm.cli import app
from chatvlm.click_i18n import translate_message
from chatvlm.i18n import _, set_language

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("english, russian", [
    # Typer's copy of Click (f-strings)
    ("Missing argument 'inputs'.", "Не указан аргумент 'inputs'."),
    ("No such option: --foo (Possible options: --force, --format)", "Нет такого параметра: --foo (Возможные параметры: --force, --format)"),
    ("Invalid value for '--dpi': Input should be a valid integer, unable to parse string as an integer",
     "Недопустимое значение '--dpi': нужно целое число, а это не целое число"),
    ("Option '--dpi' requires an argument.", "Параметру '--dpi' нужно значение."),
    # Click 8.x through gettext
    ("No such option '--foo'. Did you mean '--force'?", "Нет такого параметра '--foo'. Может быть, '--force'?"),
    ("'abc' is not a valid integer.", "'abc' — не целое число."),
    ("Invalid value for '--dpi': 'abc' is not a valid integer.", "Недопустимое значение '--dpi': 'abc' — не целое число."),
    ("Got unexpected extra argument (x)", "Лишний аргумент (x)"),
    ("Something Click added later", "Something Click added later"),   # unknown: left as it is
])
def test_click_messages_translate(english, russian):
    set_language("ru")
    assert translate_message(english, _) == russian
    set_language("en")
    assert translate_message(english, _) == english


@pytest.mark.parametrize("args, says", [
    (["ocr"], "Использование: chatvlm ocr"),
    (["ocr"], "Не указан аргумент"),
    (["ocr", "x.png", "--frobnicate"], "Нет такого параметра: --frobnicate"),
    (["ocr", "x.png", "--dpi", "abc"], "Недопустимое значение '--dpi'"),
    (["ocr", "x.png", "--dpi"], "Параметру '--dpi' нужно значение"),
    (["bogus"], "Нет такой команды 'bogus'"),
])
def test_usage_errors_in_russian(args, says):
    result = runner.invoke(app, ["--ui-lang", "ru", *args])
    assert result.exit_code == 2
    text = flat(result.output)
    assert says in text
    assert "Ошибка" in text
    for english in ("Missing argument", "No such option", "Invalid value", "requires an argument", "No such command", "Usage:"):
        assert english not in text


def test_report_units_in_russian(tmp_path):
    from rich.console import Console

    from chatvlm.ui import print_report

    set_language("ru")
    console = Console(record=True, width=200)
    report = {"model": "m", "engine": {"peak_gpu_memory_gb": 1.5}, "wall_s": 2.5, "model_load_s": 1.0,
              "time_to_first_page_s": 0.5, "pages_per_s": 1.0, "output_tokens": 0,
              "pages": {k: 0 for k in ("ok", "failed", "skipped", "looped", "truncated", "repaired")}, "stages": {}}
    print_report(report, console)
    text = console.export_text()
    assert "2.500 с" in text and "1.500 ГБ" in text
    assert " s " not in text and "GB" not in text
