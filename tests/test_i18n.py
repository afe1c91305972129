"""The Russian interface: a complete, compiled catalogue; language choice; Russian help."""

from __future__ import annotations

import gettext
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.api_helpers import english_interface  # noqa: F401
from chatvlm import i18n

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("chatvlm_i18n_tool", ROOT / "tools" / "i18n.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tool = _tool()


def flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- the catalogue

def test_every_message_is_translated_and_compiled():
    """Every _("...") in the package (found with ast) has a Russian translation with the same
    placeholders, no entry is stale, and the committed .mo is the .po compiled."""
    problems = tool.check("ru")
    assert not problems, "\n".join(f"{p.where}: {p.text}" for p in problems) + \
        "\n(fix: python tools/i18n.py update, translate, python tools/i18n.py compile)"


def test_extraction_finds_the_messages():
    messages, problems = tool.extract()
    assert not problems
    assert len(messages) > 100
    assert "Show this message and exit." in messages              # N_() markers count
    assert any(ref.startswith("chatvlm/cli.py") for m in messages.values() for ref in m.refs)
    assert "--attn must be flash_attention_2, sdpa or eager" in messages


def test_extraction_flags_formatted_strings(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text('name = "x"\n_(f"hello {name}")\n_("a" + name)\n_("ok {n}").format(n=1)\n_("ok")\n')
    messages, problems = tool.extract(package)
    assert list(messages) == ["ok {n}", "ok"]
    assert [p.where for p in problems] == ["pkg/m.py:2", "pkg/m.py:3"]


def test_mo_compiler_round_trips():
    catalogue = tool.read_po(tool.po_path("ru"))
    catalogue_file = gettext.GNUTranslations(io.BytesIO(tool.compile_mo(catalogue)))
    translated = tool.translations(catalogue)[1]
    assert len(translated) > 100
    for msgid, msgstr in translated.items():
        assert catalogue_file.gettext(msgid) == msgstr
    assert catalogue_file.info()["content-type"] == "text/plain; charset=UTF-8"


@pytest.fixture()
def locale_copy(tmp_path, monkeypatch):
    """The tool working on a copy of the catalogues."""
    shutil.copytree(tool.LOCALE, tmp_path / "locale")
    monkeypatch.setattr(tool, "LOCALE", tmp_path / "locale")
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    return tmp_path / "locale"


def test_update_keeps_translations_adds_new_and_drops_stale(locale_copy):
    path = tool.po_path("ru")
    before = tool.read_po(path)
    gone = before.find("Output folder.")
    before.remove(gone)                                     # as if the message were new in the code
    before.append(tool.polib.POEntry(msgid="a message the code no longer has", msgstr="старое"))
    before.find("pages/s").tcomment = "a translator's note"
    tool.write_po(path, before)

    assert tool.update("ru") == (1, 1)
    after = tool.read_po(path)
    assert after.find("Output folder.").msgstr == "" and after.find("a message the code no longer has") is None
    assert after.find("pages/s").tcomment == "a translator's note" and after.find("pages/s").msgstr == "стр./с"
    assert after.metadata["Plural-Forms"].startswith("nplurals=3")
    assert "python-brace-format" in after.find("{path}: no such file or folder").flags
    written = path.read_bytes()
    assert tool.update("ru") == (0, 0) and path.read_bytes() == written    # a second update changes nothing


def test_check_and_compile_from_the_command_line(locale_copy, capsys):
    assert tool.main(["check"]) == 0
    path = tool.po_path("ru")
    catalogue = tool.read_po(path)
    catalogue.find("pages/s").msgstr = "страниц/с"
    tool.write_po(path, catalogue)
    assert tool.main(["check"]) == 1
    assert "chatvlm.mo: out of date" in capsys.readouterr().out
    assert tool.main(["compile"]) == 0 and tool.main(["check"]) == 0
    with open(tool.mo_path("ru"), "rb") as fh:
        assert gettext.GNUTranslations(fh).gettext("pages/s") == "страниц/с"


# --------------------------------------------------------------------------- language choice

@pytest.mark.parametrize("explicit, env, expected", [
    (None, {}, "en"),
    (None, {"LANG": "ru_RU.UTF-8"}, "ru"),
    (None, {"LANG": "ru_RU.UTF-8", "LC_ALL": "en_US.UTF-8"}, "en"),
    (None, {"LANG": "en_US.UTF-8", "CHATVLM_LANG": "ru"}, "ru"),
    (None, {"LC_ALL": "C.UTF-8", "LANG": "ru_RU.UTF-8"}, "ru"),
    ("en", {"CHATVLM_LANG": "ru"}, "en"),
    ("ru", {}, "ru"),
    ("ru_RU", {}, "ru"),
    ("de", {"CHATVLM_LANG": "ru"}, "en"),
    # LANGUAGE, as gettext reads it: first, and a colon-separated list of preferences
    (None, {"LANGUAGE": "ru", "LANG": "en_US.UTF-8"}, "ru"),
    (None, {"LANGUAGE": "en", "LC_ALL": "ru_RU.UTF-8"}, "en"),
    (None, {"LANGUAGE": "de:ru_RU:en", "LANG": "en_US.UTF-8"}, "ru"),
    (None, {"LANGUAGE": "de:fr", "LANG": "ru_RU.UTF-8"}, "en"),
    (None, {"LANGUAGE": "", "LANG": "ru_RU.UTF-8"}, "ru"),
    (None, {"LANGUAGE": "ru", "CHATVLM_LANG": "en"}, "en"),
    (None, {"LC_MESSAGES": "ru_RU.UTF-8", "LANG": "en_US.UTF-8"}, "ru"),
    (None, {"LC_ALL": "POSIX", "LC_MESSAGES": "ru_RU.UTF-8"}, "ru"),
])
def test_language_precedence(monkeypatch, explicit, env, expected):
    for key in ("CHATVLM_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert i18n.detect_language(explicit) == expected


def test_messages_and_ocr_languages_follow():
    assert i18n.set_language("ru") == "ru"
    assert i18n._("pages/s") == "стр./с"
    assert i18n.default_ocr_languages() == "rus+eng"
    assert i18n.retranslate("Output folder.") == "Папка для результатов."
    i18n.set_language("en")
    assert i18n._("pages/s") == "pages/s"
    assert i18n.default_ocr_languages() == "eng+rus"
    assert i18n.retranslate("Папка для результатов.") == "Output folder."


def test_language_from_argv():
    assert i18n.language_from_argv(["ocr", "x.png", "--ui-lang", "ru"]) == "ru"
    assert i18n.language_from_argv(["--ui-lang=en", "models"]) == "en"
    assert i18n.language_from_argv(["ocr", "--", "--ui-lang", "ru"]) is None


# --------------------------------------------------------------------------- the CLI in Russian

@pytest.fixture()
def runner():
    return CliRunner()


def test_help_in_russian_with_ui_lang(runner):
    from chatvlm.cli import app

    result = runner.invoke(app, ["--ui-lang", "ru", "--help"])
    assert result.exit_code == 0
    out = flat(result.output)
    assert "Использование:" in out and "Параметры" in out and "Команды" in out
    assert "Пакетное распознавание текста (OCR)" in out
    assert "Задать вопрос о странице" in out                   # the ask command's summary
    assert "Показать эту справку и выйти." in out
    assert "Show this message" not in out and "Options" not in out


def test_help_in_russian_with_env(runner):
    from chatvlm.cli import app

    result = runner.invoke(app, ["ocr", "--help"], env={"CHATVLM_LANG": "ru"})
    assert result.exit_code == 0
    out = flat(result.output)
    assert "Папка для результатов." in out and "Аргументы" in out and "[по умолчанию: 200]" in out
    # ... and back in English when asked, in the same process (help texts are retranslated).
    result = runner.invoke(app, ["--ui-lang", "en", "ocr", "--help"], env={"CHATVLM_LANG": "ru"})
    out = flat(result.output)
    assert "Output folder." in out and "Папка" not in out


def test_errors_in_russian(runner, tmp_path):
    from chatvlm.cli import app

    result = runner.invoke(app, ["--ui-lang", "ru", "ask", str(tmp_path / "x.png"), "Что это?", "--model", "tesseract"])
    assert result.exit_code == 2
    assert "ошибка: модель «tesseract» не умеет отвечать на вопросы" in flat(result.output)
    result = runner.invoke(app, ["--ui-lang", "ru", "ocr", "x.png", "--pages", "3-1"])
    assert result.exit_code == 2 and "неверный диапазон страниц «3-1»" in flat(result.output)
    result = runner.invoke(app, ["--ui-lang", "fr", "models"])
    assert result.exit_code == 2 and "--ui-lang must be en or ru" in flat(result.output)


@pytest.mark.parametrize("locale", [{"LANG": "ru_RU.UTF-8"}, {"LANGUAGE": "de:ru", "LANG": "C.UTF-8"}])
def test_russian_help_as_a_user_runs_it(locale):
    """A real process, in a Russian locale (LANG, or gettext's LANGUAGE list)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("CHATVLM_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")}
    env.update(locale, PYTHONPATH=str(ROOT))
    env["COLUMNS"] = "200"
    out = subprocess.run([sys.executable, "-m", "chatvlm", "ask", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "Изображение или PDF." in out and "Вопрос; без него начнётся интерактивный диалог." in out
