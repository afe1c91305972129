"""Click's own usage-error messages (`Missing argument ...`, `No such option ...`) in our language.

Click builds these messages in English: real Click through `gettext` in its own modules,
the copy of Click that newer Typer versions ship with f-strings (no gettext at all). One
way serves both: the finished message is matched against the English templates below and
rebuilt from our catalogue's translation of the template, with the parts that were
filled in (names, values) kept as they are. The hook wraps `format_message` of Click's
exception classes, which is what both Typer's rich error panel and Click's plain output
print. Typer's panel titles and hints are module attributes of `typer.rich_utils`, set
here in the current language. Both follow every `i18n.set_language` once this module is
imported (the CLI imports it), through `i18n.on_language_switch`.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from typing import Callable

from .i18n import N_, _, on_language_switch

# English templates as Click (8.1-8.3, and Typer's copy) writes them, most specific first.
CLICK_MESSAGES = (
    N_("Missing argument {name}."),
    N_("Missing option {name}."),
    N_("Missing parameter: {name}"),
    N_("No such option: {name}"),
    N_("No such option {name}."),
    N_("No such command {name}."),
    N_("Invalid value for {name}: {message}"),
    N_("Invalid value: {message}"),
    N_("Option {name} requires an argument."),
    N_("Option {name} does not take a value."),
    N_("Option {name} requires {count} arguments."),
    N_("Argument {name} takes {count} values."),
    N_("Got unexpected extra argument ({args})"),
    N_("Got unexpected extra arguments ({args})"),
    N_("Error: {message}"),
    # value checks inside "Invalid value for ...": Click's types, and pydantic's under newer Typer
    N_("{value} is not a valid integer."),
    N_("{value} is not a valid float."),
    N_("{value} is not one of {choices}."),
    N_("{value} is not a valid boolean."),
    N_("Input should be a valid integer, unable to parse string as an integer"),
    N_("Input should be a valid number, unable to parse string as a number"),
    N_("Input should be a valid boolean, unable to interpret input"),
)
# Suggestions Click appends to "No such option/command" messages.
CLICK_SUGGESTIONS = (
    N_("(Possible options: {options})"),
    N_("Did you mean {possibility}?"),
    N_("(Did you mean one of: {possibilities}?)"),
)
_SUGGESTION_STARTS = (" (Possible options: ", " Did you mean ", " (Did you mean one of: ")
# Filled-in parts that are themselves messages (and get translated in turn).
_NESTED = ("message",)

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@lru_cache(maxsize=None)
def _pattern(template: str) -> "re.Pattern[str]":
    parts = _PLACEHOLDER.split(template)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)" for i, part in enumerate(parts))
    return re.compile(regex + r"\Z", re.DOTALL)


def _translate_one(text: str, templates, translate: Callable[[str], str]) -> str:
    for template in templates:
        match = _pattern(template).match(text)
        if match is None:
            continue
        values = {key: (translate_message(value, translate) if key in _NESTED else value)
                  for key, value in match.groupdict().items()}
        return translate(template).format(**values)
    return text


def translate_message(text: str, translate: Callable[[str], str]) -> str:
    """`text` (an English Click message) in the language of `translate` (our `_`)."""
    head, suggestion = text, ""
    for start in _SUGGESTION_STARTS:
        at = text.find(start)
        if at > 0:
            head, suggestion = text[:at], text[at + 1:]
            break
    result = _translate_one(head, CLICK_MESSAGES, translate)
    if suggestion:
        result += " " + _translate_one(suggestion, CLICK_SUGGESTIONS, translate)
    return result


def install(translate: Callable[[str], str]) -> None:
    """Route the messages of every loaded Click (real, or Typer's copy) through `translate`."""
    for name in ("click.exceptions", "typer._click.exceptions"):
        module = sys.modules.get(name)
        base = getattr(module, "ClickException", None)
        if base is None:
            continue
        # Typer's copy defines format_message on a base class above ClickException, too.
        for cls in [*base.__mro__, *_subclasses(base)]:
            original = cls.__dict__.get("format_message")
            if original is None or getattr(original, "_chatvlm_wrapped", False):
                continue
            cls.format_message = _wrapped(original, translate)


def _subclasses(cls) -> list:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def _wrapped(original, translate: Callable[[str], str]):
    def format_message(self) -> str:
        return translate_message(original(self), translate)

    format_message._chatvlm_wrapped = True
    return format_message


# Typer's own words in help screens (they use gettext's default domain, which has no
# Russian catalogue); ours translate them.
TYPER_STRINGS = {
    "ARGUMENTS_PANEL_TITLE": N_("Arguments"),
    "OPTIONS_PANEL_TITLE": N_("Options"),
    "COMMANDS_PANEL_TITLE": N_("Commands"),
    "ERRORS_PANEL_TITLE": N_("Error"),
    "ABORTED_TEXT": N_("Aborted."),
    "DEFAULT_STRING": N_("[default: {}]"),
    "REQUIRED_LONG_STRING": N_("[required]"),
    "ENVVAR_STRING": N_("[env var: {}]"),
    "DEPRECATED_STRING": N_("(deprecated) "),
    "RICH_HELP": N_("Try [blue]'{command_path} {help_option}'[/] for help."),
}


def localize_click_and_typer() -> None:
    """Click's usage errors and Typer's help-screen words in the current language."""
    install(_)
    rich_utils = sys.modules.get("typer.rich_utils")
    if rich_utils is None:
        return
    for name, msgid in TYPER_STRINGS.items():
        setattr(rich_utils, name, _(msgid))


on_language_switch(localize_click_and_typer)
