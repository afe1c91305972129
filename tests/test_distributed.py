"""Runs on a Ray cluster: the same files and manifest as on one machine, whatever dies.

One local two-CPU cluster serves the whole module (starting one costs seconds); its
workers find this checkout (tesseract, the fake backend, tiny checkpoints) through
PYTHONPATH, which the cluster's processes inherit from this one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.out_lock import LOCK_NAME
from chatvlm.pipeline import run
from chatvlm.records import Reporter
from tests.conftest import ROOT, text_page, write_noise_pages
from tests.fake_backend import NAME as FAKE

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'chatvlm[ray]'; scripts/setup.sh --test installs it)")

pytestmark = pytest.mark.usefixtures("fake_backend")   # the fake model, registered per test


@pytest.fixture(scope="module")
def cluster():
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), before) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


# --------------------------------------------------------------------------- helpers

def output_files(out: Path) -> dict[str, bytes]:
    """Every page file the run wrote (not the manifest or report, which carry timings, nor the
    output lock, which names the process that held it)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("manifest.jsonl", "report.json", LOCK_NAME)}


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def page_records(out: Path) -> list[dict]:
    """The manifest's page records without their timings, which differ run to run."""
    return [{k: v for k, v in entry.items() if k != "timings"} for entry in manifest_lines(out)]


def fake_config(inputs, out: Path, ray_address="local", batch_size=None, **extra) -> RunConfig:
    return RunConfig(inputs=[str(i) for i in inputs], out=out, model=FAKE, formats=("text", "markdown", "json"),
                     task="layout", backend=BackendOptions(extra=extra), generation=GenerationParams(batch_size=batch_size),
                     ray=ray_address)


class Watch(Reporter):
    """Keeps what the pipeline reports; `on_page` runs after each page is written."""

    def __init__(self, on_page=None):
        self.rows: list[dict] = []
        self.pages = 0
        self.on_page = on_page
        self.messages: list[tuple[str, str]] = []

    def workers(self, rows):
        self.rows = rows

    def advance(self, result):
        self.pages += 1
        if self.on_page:
            self.on_page(self)

    def message(self, text, level="info"):
        self.messages.append((level, text))


# --------------------------------------------------------------------------- same outputs as one machine

def test_tesseract_on_ray_writes_what_one_machine_writes(cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    text_page("Ray cluster page one\nsecond line here").save(src / "a.png")
    text_page("Another page\nwith words", size=(640, 320)).save(src / "b.png")
    sheets = [text_page(f"PDF sheet {n}\nlorem ipsum", size=(500, 400)).convert("RGB") for n in (1, 2)]
    sheets[0].save(src / "c.pdf", "PDF", save_all=True, append_images=sheets[1:], resolution=100)
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")

    def config(out, ray_address):
        return RunConfig(inputs=[str(src)], out=out, model="tesseract", formats=("text", "markdown", "json"),
                         task="layout", dpi=100, overlay=True, backend=BackendOptions(lang="eng"),
                         ray=ray_address)

    single = run(config(tmp_path / "one", None))
    watch = Watch()
    clustered = run(config(tmp_path / "ray", "local"), watch)
    assert single.exit_code == clustered.exit_code == 1          # broken.pdf, on both
    assert output_files(tmp_path / "ray") == output_files(tmp_path / "one")
    assert any(name.endswith(".layout.png") for name in output_files(tmp_path / "ray"))   # pixels made on a worker
    assert page_records(tmp_path / "ray") == page_records(tmp_path / "one")
    assert [r["status"] for r in page_records(tmp_path / "ray")].count("ok") == 4
    cluster_report = clustered.report["cluster"]
    assert sum(w["pages"] for w in cluster_report["workers"]) == 4
    assert all(w["pages_per_s"] > 0 for w in cluster_report["workers"])   # the pages were spread over both
    assert cluster_report["retried_pages"] == 0
    assert watch.rows and len(watch.rows) == len(cluster_report["workers"])


def test_tiny_vlm_on_ray_writes_what_one_machine_writes(cluster, tmp_path, one_torch_thread):
    from chatvlm.testing import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint("qwen_vl_2b", tmp_path / "ckpt")
    src = tmp_path / "in"
    src.mkdir()
    write_noise_pages(src, [(120, 90), (90, 120), (150, 100)])

    def config(out, ray_address):
        return RunConfig(inputs=[str(src)], out=out, model="qwen_vl_2b", formats=("text", "markdown"), task="markdown",
                         backend=BackendOptions(model_path=checkpoint, device="cpu", dtype="float32"),
                         generation=GenerationParams(max_new_tokens=6), ray=ray_address)

    single = run(config(tmp_path / "one", None))
    clustered = run(config(tmp_path / "ray", "local"))
    assert single.exit_code == clustered.exit_code == 0
    assert output_files(tmp_path / "ray") == output_files(tmp_path / "one")
    assert page_records(tmp_path / "ray") == page_records(tmp_path / "one")
    assert all(r["status"] == "ok" and r["output_tokens"] for r in page_records(tmp_path / "ray"))
    assert clustered.report["engine"]["device"] == "cpu"
    assert clustered.report["output_tokens"] == single.report["output_tokens"]


# --------------------------------------------------------------------------- workers that die

def test_killed_worker_loses_and_duplicates_nothing(cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sizes = [(100 + 10 * i, 80) for i in range(16)]
    write_noise_pages(src, sizes)
    killed: list[int] = []

    def kill_a_worker(watch: Watch) -> None:
        if not killed:
            pid = watch.rows[0]["pid"]
            os.kill(pid, signal.SIGKILL)   # the worker's process dies with pages in hand
            killed.append(pid)

    outcome = run(fake_config([src], tmp_path / "out", batch_size=2, sleep=0.25), Watch(on_page=kill_a_worker))
    assert killed and outcome.exit_code == 0
    entries = manifest_lines(tmp_path / "out")
    assert len(entries) == 16 and len({(e["source"], e["page"]) for e in entries}) == 16
    assert all(e["status"] == "ok" for e in entries)
    assert [e["source"] for e in entries] == sorted(e["source"] for e in entries)   # input order
    for i, (w, h) in enumerate(sizes):
        assert (tmp_path / "out" / f"scan{i + 1}" / "page-0001.txt").read_text() == f"scan{i + 1}.png p1 {w}x{h}\n"
    assert outcome.report["cluster"]["retried_pages"] >= 1


def test_page_that_kills_every_worker_it_meets_is_recorded_failed(cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_noise_pages(src, [(100, 80), (111, 80), (120, 80), (130, 80)])
    watch = Watch()
    outcome = run(fake_config([src], tmp_path / "out", batch_size=2, crash_width=111), watch)
    assert outcome.exit_code == 1
    entries = {e["source"].rsplit("/", 1)[-1]: e for e in manifest_lines(tmp_path / "out")}
    assert len(entries) == 4
    assert entries["scan2.png"]["status"] == "error"
    assert "3 times" in entries["scan2.png"]["error"] and "worker process died" in entries["scan2.png"]["error"]
    assert [entries[f"scan{i}.png"]["status"] for i in (1, 3, 4)] == ["ok"] * 3
    assert (tmp_path / "out" / "scan1" / "page-0001.txt").read_text() == "scan1.png p1 100x80\n"
    assert any(level == "warning" and "stopped" in text for level, text in watch.messages)


def test_model_that_cannot_load_on_the_workers_is_one_clear_error(cluster, tmp_path):
    from chatvlm.errors import ModelUnavailableError

    src = tmp_path / "in"
    src.mkdir()
    write_noise_pages(src, [(100, 80)])
    with pytest.raises(ModelUnavailableError, match="told to fail"):
        run(fake_config([src], tmp_path / "out", fail_load=True))


def test_more_workers_than_the_cluster_fits_still_finishes(cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_noise_pages(src, [(100 + i, 80) for i in range(6)])
    config = fake_config([src], tmp_path / "out", batch_size=1)
    config.workers = 3                         # the cluster has CPUs for two
    outcome = run(config)
    assert outcome.exit_code == 0 and outcome.report["pages"]["ok"] == 6
    rows = outcome.report["cluster"]["workers"]
    assert len(rows) == 3 and sum(r["pages"] for r in rows) == 6
    assert 1 <= [r["alive"] for r in rows].count(True) <= 2   # the third never got a CPU; the run did not wait for it


# --------------------------------------------------------------------------- Ctrl-C and resume

def test_interrupted_ray_run_resumes_where_it_stopped(cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sizes = [(100 + 10 * i, 80) for i in range(8)]
    write_noise_pages(src, sizes)

    def interrupt(watch: Watch) -> None:
        if watch.pages == 3:
            raise KeyboardInterrupt   # what Ctrl-C raises in the driver

    def config(out, ray_address="local"):
        return fake_config([src], out, ray_address=ray_address, batch_size=1, sleep=0.05)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(config(out), Watch(on_page=interrupt))
    done = manifest_lines(out)
    assert len(done) == 3 and all(e["status"] == "ok" for e in done)
    assert not list(out.rglob("*.tmp"))

    again = run(config(out))
    assert again.exit_code == 0
    assert (again.report["pages"]["ok"], again.report["pages"]["skipped"], again.report["pages"]["failed"]) == (5, 3, 0)
    entries = manifest_lines(out)
    assert len(entries) == 8 and len({e["source"] for e in entries}) == 8
    assert run(config(tmp_path / "one", None)).exit_code == 0
    assert output_files(out) == output_files(tmp_path / "one")
    resumed = [{**r, "status": "ok" if r["status"] == "skipped" else r["status"]} for r in page_records(out)]
    assert resumed == page_records(tmp_path / "one")


def test_bench_on_ray_scores_the_pages_its_workers_recognised(cluster, tmp_path):
    from chatvlm import bench

    src = tmp_path / "in"
    src.mkdir()
    for name, text in (("a", "Hello bench"), ("b", "Second page")):
        text_page(text).save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(text + "\n")
    base = RunConfig(inputs=[str(src)], out=tmp_path / "out", formats=("text", "markdown"),
                     backend=BackendOptions(lang="eng"), command="bench", ray="local")
    outcome = bench.run_bench(bench.BenchConfig(base=base, command_line=["chatvlm", "bench"]), ["tesseract", FAKE])
    assert outcome.exit_code == 0
    rows = {row["model"]: row for row in outcome.report["models"]}
    for name in ("tesseract", FAKE):
        assert rows[name]["status"] == "ok" and rows[name]["pages"]["ok"] == 2
        assert sum(w["pages"] for w in rows[name]["cluster"]["workers"]) == 2
        assert rows[name]["load_s"] is not None
    assert rows["tesseract"]["accuracy"]["cer"] < 0.2
    assert (tmp_path / "out" / "tesseract" / "a" / "page-0001.txt").read_text().startswith("Hello")


# --------------------------------------------------------------------------- the command line

def test_cli_ray_alone_starts_a_local_cluster_for_the_run(tmp_path):
    text_page("hello cluster").save(tmp_path / "p.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHATVLM_LANG": "en"}
    proc = subprocess.run([sys.executable, "-m", "chatvlm", "ocr", "--ray", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"),
                           "-m", "tesseract", "--lang", "eng", "--workers", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "hello" in (tmp_path / "out" / "p" / "page-0001.txt").read_text().lower()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["cluster"]["address"] == "local" and len(report["cluster"]["workers"]) == 1
    assert "Ray workers" in proc.stdout


@pytest.mark.parametrize("lang,needle", [("en", "pip install 'chatvlm[ray]'"), ("ru", "не установлен")])
def test_cli_ray_without_ray_installed_says_how_to_install(tmp_path, monkeypatch, lang, needle):
    from typer.testing import CliRunner

    from chatvlm.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)   # import ray now fails, as where it is not installed
    text_page("x").save(tmp_path / "p.png")
    result = CliRunner().invoke(app, ["--ui-lang", lang, "ocr", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--ray"])
    assert result.exit_code == 2
    assert needle in result.output and "chatvlm[ray]" in result.output
    assert not (tmp_path / "out").exists()


def test_ray_flag_takes_an_address_only_when_one_follows():
    from chatvlm.cli import normalize_ray_flag

    assert normalize_ray_flag(["ocr", "--ray", "a.pdf"]) == ["ocr", "--ray", "local", "a.pdf"]
    assert normalize_ray_flag(["ocr", "a.pdf", "--ray"]) == ["ocr", "a.pdf", "--ray", "local"]
    assert normalize_ray_flag(["ocr", "--ray", "auto", "a.pdf"]) == ["ocr", "--ray", "auto", "a.pdf"]
    assert normalize_ray_flag(["ocr", "--ray", "ray://head:10001", "a"]) == ["ocr", "--ray", "ray://head:10001", "a"]
    assert normalize_ray_flag(["ocr", "--ray", "10.0.0.5:6379", "a"]) == ["ocr", "--ray", "10.0.0.5:6379", "a"]
    assert normalize_ray_flag(["ocr", "--ray", "-o", "x"]) == ["ocr", "--ray", "local", "-o", "x"]
    assert normalize_ray_flag(["ocr", "--", "--ray"]) == ["ocr", "--", "--ray"]
