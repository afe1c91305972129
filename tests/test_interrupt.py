"""Stopping a real `chatvlm ocr` run on the Tesseract engine: SIGTERM, Ctrl-C (SIGINT), kill -9.

Each test starts the command as a user would (a subprocess), waits until the first page is
written (the worker processes are up), then signals it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, text_page

PAGES = 12


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pages")
    lines = "\n".join(f"Line {i} of a page that takes Tesseract a while" for i in range(24))
    for i in range(PAGES):
        text_page(lines, size=(1000, 1400), font_size=22).save(folder / f"page{i:02d}.png")
    return folder


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (workers, the resource tracker), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for PID 1 to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def start_run(pages: Path, out: Path) -> subprocess.Popen:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the worker processes")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHATVLM_LANG": "en", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "chatvlm", "ocr", str(pages), "-o", str(out), "--model", "tesseract",
                             "--lang", "eng", "--workers", "2", "--batch-size", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    manifest = out / "manifest.jsonl"
    while not (manifest.exists() and manifest.read_text().strip()):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first page: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no page written in 120 s")
        time.sleep(0.05)
    return proc


def wait_gone(pids: set[int], seconds: float = 5.0) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = {pid for pid in pids if alive(pid)}
        if not left:
            return set()
        time.sleep(0.1)
    return {pid for pid in pids if alive(pid)}


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_cleanly(pages, tmp_path, sig, code):
    out = tmp_path / "out"
    proc = start_run(pages, out)
    workers = descendants(proc.pid)
    assert len(workers) >= 2           # two Tesseract workers (and the resource tracker)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "stopping" in stderr and "interrupted" in stderr and "Traceback" not in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["stopped"] == "interrupted"
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert 1 <= len(entries) < PAGES and {e["status"] for e in entries} == {"ok"}
    for entry in entries:               # every page the manifest calls done has its files
        assert all((out / name).exists() for name in entry["outputs"])
    assert wait_gone(workers) == set()


def test_workers_die_with_a_killed_parent(pages, tmp_path):
    proc = start_run(pages, tmp_path / "out")
    workers = descendants(proc.pid)
    assert len(workers) >= 2
    proc.kill()                        # kill -9: no handler runs in the parent
    proc.communicate(timeout=30)
    assert wait_gone(workers) == set()
