"""Headless Chromium driven over its DevTools pipe, for tests that must see a page as a user does.

`--screenshot` and `--dump-dom` each open a fresh session and shoot when Chromium's virtual
time runs out, which does not wait for pages built over a websocket (Streamlit): on a slow
machine the shot shows the blank loading screen. Driving one tab over the DevTools protocol
lets a test wait until the page really shows what it checks, then shoot that same tab.
`--remote-debugging-pipe` speaks the protocol over file descriptors 3 (commands in) and 4
(replies out), NUL-separated JSON, so no websocket client is needed.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path


class BrowserError(RuntimeError):
    pass


class HeadlessBrowser:
    def __init__(self, executable: str, profile: Path, width: int = 1280, height: int = 900):
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def wire_pipes() -> None:   # runs in the child: the pipes become fds 3 and 4
            # Duplicate first: a plain dup2 could overwrite one pipe end with the other.
            commands, replies = os.dup(commands_read), os.dup(replies_write)
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            close_fds=False, preexec_fn=wire_pipes, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(replies_write)
        self._pending = b""
        self._last_id = 0
        self._size = (width, height)
        self.session = ""

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                    raise BrowserError(f"no reply to {method} within {timeout:.0f} s")
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise BrowserError(f"Chromium exited while running {method}")
                self._pending += chunk
            raw, self._pending = self._pending.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._last_id:   # events and other replies are not ours
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        """One tab at `url`, with the viewport pinned to the window size."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        width, height = self._size
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float) -> bool:
        """Poll a JavaScript condition until it is true or the time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(0.5)
        return False

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self.session = ""
            self.call("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._commands, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass
