"""Stopping a run on Ctrl-C (SIGINT) or SIGTERM (`docker stop`, systemd, `timeout`).

Both signals stop a run the same way: a "stopping…" message at once, work in flight
abandoned (worker processes killed), pages already written kept, the report written, and
the exit status a shell expects from a process stopped by that signal (128 + its number:
130 for SIGINT, 143 for SIGTERM). A second signal while stopping ends the process at once.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop. A KeyboardInterrupt, so `except Exception` never swallows it."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)
        self.outcome = None        # pipeline.RunOutcome of the pages done before the stop, when there is one

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_for(exc: BaseException) -> int:
    """128 + signal number; a plain KeyboardInterrupt is a SIGINT."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


@contextmanager
def stop_on_signals(on_stop: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise Interrupted in the main thread (after on_stop(signum)).

    Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"stopping": False}

    def handler(signum, _frame):
        if state["stopping"]:
            # Asked twice: no more waiting. Workers die with this process (see tesseract.py).
            os._exit(128 + signum)
        state["stopping"] = True
        on_stop(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
