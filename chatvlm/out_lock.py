"""One run at a time per output folder: OUT/.chatvlm.lock.

Two runs writing one manifest would each keep their own view of it and the last to
finish would drop the other's lines. The lock is an flock on OUT/.chatvlm.lock, which
also holds who took it (pid, host, command, time) so a second run can say who has it.
The kernel releases an flock when its process dies, however it dies, so a lock left by a
killed run never blocks the next one; the file itself stays (removing it would race).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from .errors import OutputBusyError
from .i18n import _

LOCK_NAME = ".chatvlm.lock"


class OutputLock:
    def __init__(self, out: Path):
        self.path = out / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputLock":
        """Take the lock or raise OutputBusyError naming the holder. OSError if OUT is unwritable."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            if not _try_lock(fd):
                holder = _read_holder(fd)
                raise OutputBusyError(_("{out} is in use by another chatvlm run ({holder}); wait for it to finish or use another -o folder").format(
                    out=self.path.parent, holder=holder))
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info, ensure_ascii=False) + "\n").encode("utf-8", "replace"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _command_line() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    # `python -m chatvlm` has .../chatvlm/__main__.py as argv[0]: name the package
    program = Path(argv0).parent.name if Path(argv0).name == "__main__.py" else Path(argv0).name
    return " ".join([program, *sys.argv[1:]])


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:   # no flock (Windows): one run at a time is then the user's business
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return _("holder unknown")
    return _("pid {pid} on {host}, started {started}: {command}").format(
        pid=info.get("pid", "?"), host=info.get("host", "?"), started=info.get("started", "?"), command=info.get("command", "?"))
