"""User-facing message translation.

Every message shown to a user goes through `_()`; catalogues live in
chatvlm/locale/<lang>/LC_MESSAGES/chatvlm.po (compiled to .mo) and are read with the
standard gettext machinery. English is the source language (the msgids). The language
is chosen by --ui-lang, CHATVLM_LANG, or the locale as gettext reads it (LANGUAGE,
LC_ALL, LC_MESSAGES, LANG).

`N_()` marks a string for the catalogue without translating it (for names translated
later, e.g. report stage names). `python tools/i18n.py check|update|compile` keeps the
catalogues in step with the code.
"""

from __future__ import annotations

import gettext as _gettext
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

LOCALE_DIR = Path(__file__).with_name("locale")
SUPPORTED = ("en", "ru")

_translation: _gettext.NullTranslations = _gettext.NullTranslations()
_current = "en"
_on_switch: list[Callable[[], None]] = []


def _code(value: str) -> str:
    return value.split(".")[0].split("@")[0].replace("-", "_").split("_")[0].lower()


# Where gettext looks for the language, in its order; LANGUAGE is a colon-separated list
# of preferences (`LANGUAGE=de:ru`: German if there is a catalogue, else Russian).
LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def _is_c_locale(value: str) -> bool:
    return value.split(".")[0] in ("C", "POSIX")


def detect_language(explicit: Optional[str] = None) -> str:
    """--ui-lang beats CHATVLM_LANG beats the locale, read as gettext reads it (LANGUAGE,
    LC_ALL, LC_MESSAGES, LANG). The first variable naming a real language decides: its
    first language we have a catalogue for, else English. C and POSIX name none."""
    if explicit:
        code = _code(explicit)
        return code if code in SUPPORTED else "en"
    for variable in ("CHATVLM_LANG", *LOCALE_VARIABLES):
        value = os.environ.get(variable, "")
        wanted = [v for v in (value.split(":") if variable == "LANGUAGE" else [value]) if v and not _is_c_locale(v)]
        if not wanted:
            continue
        return next((_code(v) for v in wanted if _code(v) in SUPPORTED), "en")
    return "en"


def set_language(lang: Optional[str] = None) -> str:
    """Switch every later `_()` to `lang` (or the detected language); returns the code."""
    global _translation, _current
    _current = detect_language(lang)
    _translation = _gettext.translation("chatvlm", localedir=str(LOCALE_DIR), languages=[_current], fallback=True)
    for callback in _on_switch:
        callback()
    return _current


def on_language_switch(callback: Callable[[], None]) -> None:
    """Call `callback` after every later `set_language` (chatvlm.click_i18n uses it to
    re-translate Click's and Typer's own words; this module knows nothing of the CLI)."""
    _on_switch.append(callback)


def current_language() -> str:
    return _current


def _(message: str) -> str:
    return _translation.gettext(message)


def N_(message: str) -> str:
    """Mark `message` for the catalogue; translate it later with `_()`."""
    return message


def language_from_argv(argv: Sequence[str]) -> Optional[str]:
    """The value of --ui-lang in a command line, if any (read before the CLI is built)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--ui-lang" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--ui-lang="):
            return arg.split("=", 1)[1]
    return None


def default_ocr_languages() -> str:
    """Tesseract languages when --lang is not given: the interface language first."""
    return "rus+eng" if _current == "ru" else "eng+rus"


# --------------------------------------------------------------------------- help texts

_reverse: dict[str, str] = {}


def retranslate(text: Optional[str]) -> Optional[str]:
    """`text` (a message in any supported language) in the current language.

    Typer builds help texts when the CLI module is imported; this lets the CLI show them
    in the language chosen when it runs (--ui-lang, or CHATVLM_LANG set later).
    """
    if not text:
        return text
    if not _reverse:
        for lang in SUPPORTED:
            try:
                catalogue = _gettext.translation("chatvlm", localedir=str(LOCALE_DIR), languages=[lang])
            except OSError:
                continue
            for msgid, msgstr in getattr(catalogue, "_catalog", {}).items():
                if isinstance(msgid, str) and msgid:
                    _reverse[msgstr] = msgid
    return _(_reverse.get(text, text))


# Click's words that chatvlm's CLI writes itself (help option, usage line).
HELP_OPTION_TEXT = N_("Show this message and exit.")
USAGE_PREFIX = N_("Usage:")
