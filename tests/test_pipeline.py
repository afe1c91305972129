"""The page pipeline with a small fake backend registered through the real registry."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.pipeline import run
from tests.conftest import ROOT, text_page
from tests.fake_backend import NAME

pytestmark = pytest.mark.usefixtures("fake_backend")   # the fake model, registered per test


def make_inputs(tmp_path: Path, n: int = 5) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n):
        text_page(f"page {i}", size=(300 + 10 * i, 200)).save(src / f"p{i}.png")
    return src


def config(src, out, **extra) -> RunConfig:
    batch = extra.pop("batch_size", None)
    return RunConfig(inputs=[str(src)], out=out, model=NAME, formats=("text", "markdown", "json"),
                     task="layout", backend=BackendOptions(extra=extra), generation=GenerationParams(batch_size=batch))


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_run_writes_files_manifest_and_report(tmp_path):
    src = make_inputs(tmp_path, 3)
    out = tmp_path / "out"
    outcome = run(config(src, out))
    assert outcome.exit_code == 0
    entries = manifest(out)
    assert [e["status"] for e in entries] == ["ok"] * 3
    keys = {"source", "page", "sha256", "model", "status", "error", "outputs", "finish_reason",
            "input_tokens", "output_tokens", "timings"}
    assert keys <= set(entries[0])
    assert entries[0]["outputs"] == ["p0/page-0001.txt", "p0/page-0001.md", "p0/page-0001.json"]
    assert (out / "p1" / "page-0001.txt").read_text() == "p1.png p1 310x200\n"
    layout = json.loads((out / "p2" / "page-0001.json").read_text())
    assert layout["width"] == 320 and layout["blocks"][0]["bbox"] == [0, 0, 320, 200]
    report = json.loads((out / "report.json").read_text())
    for key in ("model", "engine", "pages", "wall_s", "model_load_s", "time_to_first_page_s", "pages_per_s", "stages"):
        assert key in report
    assert report["pages"]["ok"] == 3
    assert set(report["stages"]) == {"render", "preprocess", "recognise", "postprocess", "write"}
    assert report["stages"]["render"]["p50_s"] is not None
    # no temp files left behind by the atomic writes
    assert not list(out.rglob("*.tmp"))


def test_resume_skips_done_pages_and_force_redoes(tmp_path):
    src = make_inputs(tmp_path, 3)
    out = tmp_path / "out"
    run(config(src, out))
    second = run(config(src, out))
    assert second.report["pages"] == {"ok": 0, "failed": 0, "skipped": 3, "looped": 0, "truncated": 0, "repaired": 0}
    entries = manifest(out)
    assert len(entries) == 3 and {e["status"] for e in entries} == {"skipped"}
    assert all(e["outputs"] for e in entries)
    # a changed input is redone; the others stay skipped
    text_page("changed", size=(300, 200)).save(src / "p0.png")
    third = run(config(src, out))
    assert third.report["pages"]["ok"] == 1 and third.report["pages"]["skipped"] == 2
    cfg = config(src, out)
    cfg.force = True
    assert run(cfg).report["pages"]["ok"] == 3
    assert len(manifest(out)) == 3


def test_changed_options_are_not_trusted(tmp_path):
    src = make_inputs(tmp_path, 2)
    out = tmp_path / "out"
    run(config(src, out))
    cfg = config(src, out)
    cfg.dpi = 300
    assert run(cfg).report["pages"]["ok"] == 2


def test_failing_page_does_not_stop_the_batch(tmp_path):
    src = make_inputs(tmp_path, 4)
    (src / "broken.png").write_text("not an image at all")
    out = tmp_path / "out"
    outcome = run(config(src, out, fail_width=310, batch_size=4))
    assert outcome.exit_code == 1
    by_source = {Path(e["source"]).name: e for e in manifest(out)}
    assert by_source["broken.png"]["status"] == "error" and by_source["broken.png"]["page"] is None
    assert "not a PDF or a supported image" in by_source["broken.png"]["error"]
    assert by_source["p1.png"]["status"] == "error" and "width 310" in by_source["p1.png"]["error"]
    assert [by_source[f"p{i}.png"]["status"] for i in (0, 2, 3)] == ["ok"] * 3
    report = outcome.report
    expected = 3 / (report["wall_s"] - report["model_load_s"])      # only pages recognised without error
    assert abs(report["pages_per_s"] - expected) <= 0.05 * expected


def test_out_of_memory_splits_the_batch_and_loses_no_page(tmp_path):
    src = make_inputs(tmp_path, 8)
    out = tmp_path / "out"
    from chatvlm.backends.base import create_backend
    from chatvlm.registry import get_spec

    cfg = config(src, out, oom_above=2, batch_size=8)
    backend = create_backend(get_spec(NAME), cfg.backend)
    backend.load()
    outcome = run(cfg, backend=backend)
    assert outcome.exit_code == 0
    assert [e["status"] for e in manifest(out)] == ["ok"] * 8
    assert max(backend.calls[-2:]) <= 2          # the smaller size is remembered
    assert [Path(e["source"]).name for e in manifest(out)] == [f"p{i}.png" for i in range(8)]


def test_model_that_cannot_load_is_exit_3(tmp_path):
    from chatvlm.errors import ModelUnavailableError

    src = make_inputs(tmp_path, 1)
    with pytest.raises(ModelUnavailableError):
        run(config(src, tmp_path / "out", fail_load=True))


KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.fake_backend import register_fake
register_fake()
from chatvlm.cli import main
sys.argv = ["chatvlm"] + sys.argv[1:]
main()
"""


def test_kill_9_mid_run_then_resume(tmp_path):
    src = make_inputs(tmp_path, 12)
    out = tmp_path / "out"
    script = tmp_path / "run_chatvlm.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT)))
    args = [sys.executable, str(script), "ocr", str(src), "-o", str(out), "--model", NAME, "-q", "--batch-size", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # slow the fake model down through a tiny wrapper: 0.3 s a page
    args_slow = args[:]
    proc = subprocess.Popen(args_slow + ["--format", "text"], env=dict(env, CHATVLM_FAKE_SLEEP="0.3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        m = out / "manifest.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = manifest(out)
    assert 3 <= len(done_before) < 12, "the run must be killed part-way"
    for entry in done_before:   # every page the manifest trusts is complete on disk
        assert (out / entry["outputs"][0]).read_text().endswith("\n")
    subprocess.run(args + ["--format", "text"], env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    entries = manifest(out)
    assert len(entries) == 12
    assert len({(e["source"], e["page"]) for e in entries}) == 12
    statuses = [e["status"] for e in entries]
    assert statuses.count("skipped") >= len(done_before) and set(statuses) <= {"ok", "skipped"}
