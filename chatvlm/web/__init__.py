"""`chatvlm ui`: a Streamlit page to try models on your own pages.

`page.py` is the Streamlit script (widgets only); `work.py` does the work (uploads to
pages, recognition, downloads) and needs no Streamlit, so it is tested on its own.
The page learns its starting model and language from the environment, because
Streamlit runs the script in its own process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..i18n import current_language

PAGE = Path(__file__).with_name("page.py")

# How `chatvlm ui` tells the page what to start with.
ENV_MODEL = "CHATVLM_UI_MODEL"
ENV_MODEL_PATH = "CHATVLM_UI_MODEL_PATH"
ENV_DEVICE = "CHATVLM_UI_DEVICE"


def streamlit_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(PAGE), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
            "--client.toolbarMode", "viewer", "--server.maxUploadSize", "50"]


def page_environment(model: str, model_path: Optional[Path] = None, device: Optional[str] = None) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_MODEL] = model
    env["CHATVLM_LANG"] = current_language()
    if model_path is not None:
        env[ENV_MODEL_PATH] = str(Path(model_path).expanduser().resolve())
    if device:
        env[ENV_DEVICE] = device
    # The page imports chatvlm from wherever this process found it.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def run_ui(model: str = "auto", model_path: Optional[Path] = None, host: str = "127.0.0.1", port: int = 8501,
           device: Optional[str] = None) -> int:
    """Run the page until Ctrl-C; returns Streamlit's exit code."""
    process = subprocess.Popen(streamlit_command(host, port), env=page_environment(model, model_path, device))
    # A service manager stops us with SIGTERM: the page must not outlive this process.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.terminate())
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
