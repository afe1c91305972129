"""User-facing message translation.

Every message shown to a user goes through `_()`; catalogues live in
chatvlm/locale/<lang>/LC_MESSAGES/chatvlm.po and are read with the standard gettext
machinery. The language is chosen by --ui-lang, CHATVLM_LANG, or the locale.
"""

from __future__ import annotations

import gettext as _gettext
import os
from pathlib import Path

LOCALE_DIR = Path(__file__).with_name("locale")
SUPPORTED = ("en", "ru")

_translation: _gettext.NullTranslations = _gettext.NullTranslations()
_current = "en"


def detect_language(explicit: str | None = None) -> str:
    """--ui-lang beats CHATVLM_LANG beats the locale (LC_ALL, LC_MESSAGES, LANG)."""
    for value in (explicit, os.environ.get("CHATVLM_LANG"), os.environ.get("LC_ALL"),
                  os.environ.get("LC_MESSAGES"), os.environ.get("LANG")):
        if value:
            code = value.split(".")[0].split("_")[0].lower()
            if code in SUPPORTED:
                return code
            if explicit and value is explicit:
                return "en"
    return "en"


def set_language(lang: str | None = None) -> str:
    global _translation, _current
    _current = detect_language(lang)
    _translation = _gettext.translation("chatvlm", localedir=str(LOCALE_DIR), languages=[_current], fallback=True)
    return _current


def current_language() -> str:
    return _current


def _(message: str) -> str:
    return _translation.gettext(message)
