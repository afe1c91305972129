"""The output folder: its lock, file permissions, and folders that cannot take files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatvlm.cli import app
from chatvlm.out_lock import LOCK_NAME, OutputLock
from tests.conftest import text_page
from tests.fake_backend import NAME

pytestmark = pytest.mark.usefixtures("fake_backend")   # the fake model, registered per test

runner = CliRunner()


@pytest.fixture()
def src(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        text_page(f"page {i}", size=(200 + 10 * i, 100)).save(folder / f"p{i}.png")
    return folder


def ocr(src: Path, out: Path, *more: str):
    return runner.invoke(app, ["--ui-lang", "en", "ocr", str(src), "-o", str(out), "--model", NAME, *more])


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def statuses(out: Path) -> dict[str, str]:
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {Path(e["source"]).name: e["status"] for e in entries}


# --------------------------------------------------------------------------- the lock

def test_a_second_run_into_a_busy_folder_says_who_has_it(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):              # another run, here in this process, holds the folder
        busy = ocr(src, out)
        assert busy.exit_code == 2, busy.output
        assert "in use by another chatvlm run" in flat(busy.output) and f"pid {os.getpid()}" in flat(busy.output)
        assert not (out / "manifest.jsonl").exists()
    free = ocr(src, out)
    assert free.exit_code == 0, free.output
    assert set(statuses(out).values()) == {"ok"}


def test_a_lock_left_by_a_dead_run_does_not_block(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # A run killed with -9 leaves its lock file; the kernel dropped its flock with the process.
    holder = subprocess.Popen(["python3", "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
                               " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(out / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert ocr(src, out).exit_code == 2
    holder.kill()
    holder.wait()
    result = ocr(src, out)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- permissions

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_output_files_follow_the_umask(src, tmp_path, umask, mode):
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        assert ocr(src, out).exit_code == 0
    finally:
        os.umask(old)
    for path in (out / "p0" / "page-0001.txt", out / "p0" / "page-0001.md", out / "manifest.jsonl", out / "report.json"):
        assert path.stat().st_mode & 0o777 == mode, path


# --------------------------------------------------------------------------- unwritable output

def test_output_naming_a_file_is_one_clear_error(src, tmp_path):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    result = ocr(src, out)
    assert result.exit_code == 3
    assert f"cannot write to {out}" in flat(result.output) and "not a folder" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_folder_that_refuses_files_stops_the_run_with_one_error(src, tmp_path, monkeypatch):
    """A read-only file system, injected where the writer creates its files (tests run as root)."""
    import chatvlm.writers as writers

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(writers.tempfile, "mkstemp", read_only)
    out = tmp_path / "out"
    result = ocr(src, out)
    assert result.exit_code == 3, result.output          # nothing could be written
    text = flat(result.output)
    assert "Read-only file system" in text and "page-0001" in text
    assert text.count("Read-only file system") == 1      # one error, not one per page
    assert not isinstance(result.exception, OSError)
    monkeypatch.undo()
    again = ocr(src, out)
    assert again.exit_code == 0 and set(statuses(out).values()) == {"ok"}


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {done.stderr.strip()}")


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_a_full_disk_keeps_what_was_done_and_a_rerun_resumes(src, tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=64k")
    try:
        out = disk / "out"
        filler = disk / "filler"
        # Leave room for the lock, the manifest and about one page's files (tmpfs counts 4 KiB blocks).
        filler.write_bytes(b"\0" * (64 - 24) * 1024)
        full = ocr(src, out, "--format", "text,markdown,json")
        assert full.exit_code in (1, 3), full.output
        text = flat(full.output)
        assert "No space left on device" in text and "Traceback" not in text
        assert not isinstance(full.exception, OSError)
        done_before = {k for k, v in statuses(out).items() if v == "ok"} if (out / "manifest.jsonl").exists() else set()
        assert len(done_before) < 4
        filler.unlink()
        again = ocr(src, out, "--format", "text,markdown,json")
        assert again.exit_code == 0, again.output
        final = statuses(out)
        assert set(final) == {f"p{i}.png" for i in range(4)}
        assert {name for name, status in final.items() if status == "skipped"} == done_before
    finally:
        _umount(disk)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_a_read_only_file_system_is_one_clear_error(src, tmp_path):
    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "size=64k,ro")
    try:
        result = ocr(src, disk / "out")
        assert result.exit_code == 3
        assert "Read-only file system" in flat(result.output)
        assert not isinstance(result.exception, OSError)
    finally:
        _umount(disk)
