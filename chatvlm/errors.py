"""Errors and exit codes.

Exit codes: 0 every page ok, 1 some pages or files failed (the rest still ran),
2 usage error (or the output folder is locked by another run), 3 nothing could run
(model failed to load, no inputs, output not writable), 128 + signal number when stopped
by a signal (130 Ctrl-C, 143 SIGTERM; see interrupt.py).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PAGES_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3


class ChatVLMError(Exception):
    """Base class: a message meant for the user, never a stack trace."""

    exit_code = EXIT_ABORTED


class UsageError(ChatVLMError):
    exit_code = EXIT_USAGE


class UnknownModelError(UsageError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = known
        from .i18n import _
        super().__init__(_("unknown model '{name}'; known models: {known}").format(name=name, known=", ".join(known)))


class ModelUnavailableError(ChatVLMError):
    """Weights missing, a dependency missing, or the engine cannot start here."""

    exit_code = EXIT_ABORTED


class InputError(ChatVLMError):
    """A file or page that cannot be read; becomes a failed page record, never a crash."""


class OutputError(ChatVLMError):
    """The output folder cannot be written (not a folder, read-only, full): the run stops.

    exit_code is 3 when nothing could be written, 1 when pages written before are kept.
    """

    exit_code = EXIT_ABORTED


class OutputBusyError(UsageError):
    """Another run holds the output folder's lock."""
