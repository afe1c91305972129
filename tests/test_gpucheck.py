"""The GPU check's runner on CPU: the plan, process isolation and time caps, the rows and
tables, and one smoke run of scripts/gpu_check.sh with a tiny model (its own pages, three
bench processes, one gpu_check.json and one table), with pdf2image and tesserocr made
unimportable, as on the GPU machine."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatvlm import gpucheck
from chatvlm.gpucheck import Run, Settings
from tests.conftest import ROOT

TINY_QWEN2_VL = {
    "model_type": "qwen2_vl", "tie_word_embeddings": True,
    "text_config": {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1000000.0},
                    "tie_word_embeddings": True},
    "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
}


def test_plan_covers_every_vlm_and_the_two_baselines(tmp_path):
    settings = Settings(out=tmp_path)
    runs = gpucheck.plan_runs(settings)
    assert [r.id for r in runs] == ["qwen_vl_2b", "qwen_vl_2b-generate", "qwen_vl_2b-batch1", "qwen3_vl_2b",
                                    "got_ocr_hf", "dots_ocr", "phi3_vision", "deepseek_ocr2", "deepseek_ocr"]
    from chatvlm.registry import all_specs
    assert set(gpucheck.VLMS) == {s.name for s in all_specs() if s.repo_id}
    cmd = {r.id: gpucheck.bench_command(settings, r, tmp_path / "pages", tmp_path / r.id) for r in runs}
    assert cmd["qwen_vl_2b"][1:5] == ["-m", "chatvlm", "bench", str(tmp_path / "pages")]
    assert "--synthetic" in cmd["qwen_vl_2b"] and "-O" not in cmd["qwen_vl_2b"]
    assert _arg(cmd["qwen_vl_2b"], "--batch-size") == "auto" and _arg(cmd["qwen_vl_2b"], "--tokens") == "512"
    assert _arg(cmd["qwen_vl_2b-generate"], "-O") == "decode=hf"
    assert _arg(cmd["qwen_vl_2b-batch1"], "--batch-size") == "1" and _arg(cmd["qwen_vl_2b-batch1"], "--max-pages") == "4"
    assert _arg(cmd["qwen3_vl_2b"], "--max-pages") == "64" and _arg(cmd["dots_ocr"], "--max-pages") == "64"
    assert _arg(cmd["deepseek_ocr"], "--max-pages") == "32" and "--device" not in cmd["deepseek_ocr"]
    assert [r.id for r in gpucheck.plan_runs(Settings(out=tmp_path, models=["got_ocr_hf"]))] == ["got_ocr_hf"]


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_time_caps_share_one_budget():
    assert gpucheck.run_cap(420, 9, 150, 30) == 150          # plenty left: the per-run cap
    assert gpucheck.run_cap(200, 5, 150, 30) == 80           # keep 30 s for each of the 4 after it
    assert gpucheck.run_cap(100, 1, 150, 30) == 100          # the last run takes what is left
    assert gpucheck.run_cap(40, 3, 150, 30) == 0             # nothing left for this one


def test_pages_are_a4_at_200_dpi_by_default(tmp_path):
    from PIL import Image

    assert gpucheck.A4_200DPI == (1654, 2339)
    paths = gpucheck.make_pages(tmp_path, 3, size=(165, 233), distinct=2)
    assert [p.name for p in paths] == ["page-001.png", "page-002.png", "page-003.png"]
    assert all(Image.open(p).size == (165, 233) for p in paths)
    assert paths[2].read_bytes() == paths[0].read_bytes() != paths[1].read_bytes()


def test_out_folder_defaults_to_OUT(monkeypatch):
    monkeypatch.setenv("OUT", "/tmp/somewhere")
    assert gpucheck.parse_args([]).out == Path("/tmp/somewhere")
    monkeypatch.delenv("OUT")
    settings = gpucheck.parse_args(["--device", "cpu", "--tokens", "4", "--pages", "2", "--page-size", "100x200"])
    assert settings.out == Path("gpu-check-out") and settings.page_size == (100, 200) and settings.tokens == 4
    with pytest.raises(SystemExit):
        gpucheck.parse_args(["--models", "nope"])


def test_token_range_goes_to_every_bench_run(tmp_path):
    settings = gpucheck.parse_args(["--out", str(tmp_path), "--tokens", "256-1024"])
    assert settings.tokens == "256-1024"
    run = gpucheck.plan_runs(settings)[0]
    assert _arg(gpucheck.bench_command(settings, run, tmp_path / "pages", tmp_path / "o"), "--tokens") == "256-1024"
    for bad in ("0", "9-3", "x"):
        with pytest.raises(SystemExit):
            gpucheck.parse_args(["--tokens", bad])


# A bench that hangs (with a child of its own), one that crashes, one that finishes.
HANG = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
print("loading the model", flush=True)
time.sleep(120)
"""
CRASH = "import os; print('building the vision tower', flush=True); os.abort()"
FINISH = """
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); (out / "m").mkdir(parents=True, exist_ok=True)
row = {"model": "m", "status": "ok", "error": None, "pages": {"total": 2, "ok": 2, "failed": 0},
       "pages_per_s": 4.5, "output_tokens_per_s": 2300.0, "time_to_first_page_s": 12.25,
       "peak_gpu_memory_gb": 31.5, "load_s": 3.0, "attention": "sdpa", "dtype": "bfloat16",
       "engine": {"decode": "chatvlm-static", "decode_continuous": True, "auto_batch_size": 64, "decode_steps": 511}, "pages_detail": []}
(out / "bench.json").write_text(json.dumps({"models": [row], "hardware": {"gpu": "Test GPU", "cuda": "13.0",
    "python": "3.12.3", "versions": {"torch": "2.11.0", "transformers": "5.25.0"}}}))
"""


def test_a_hang_and_a_crash_cost_one_row_each(tmp_path):
    pidfile = tmp_path / "child.pid"

    def command_for(settings, run, pages_dir, out):
        script = {"qwen_vl_2b": HANG, "got_ocr_hf": CRASH, "dots_ocr": FINISH}[run.model]
        arg = pidfile if run.model == "qwen_vl_2b" else out
        return [sys.executable, "-c", script, str(arg)]

    settings = Settings(out=tmp_path / "check", pages=2, models=["qwen_vl_2b", "got_ocr_hf", "dots_ocr"],
                        baselines=False, budget_s=20, max_run_s=3, min_run_s=1, page_size=(120, 170))
    progress = []
    start = time.perf_counter()
    report = gpucheck.run_check(settings, progress.append, command_for)
    assert time.perf_counter() - start < 25
    hang, crash, done = report["runs"]
    assert hang["status"] == "timeout" and "time cap of 3 s" in hang["error"] and 3 <= hang["wall_s"] < 15
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not _alive(child)                             # the hung run's own children were stopped too
    assert crash["status"] == "crashed" and "building the vision tower" in crash["error"]
    assert crash["exit_code"] < 0                        # killed by a signal
    assert done["status"] == "ok" and done["pages_per_s"] == 4.5 and done["decode_path"] == "chatvlm-static"
    assert done["continuous"] is True and done["continuous_reason"] is None
    assert done["batch_size"] == 64 and done["pages_ok"] == 2 and done["peak_gpu_memory_gb"] == 31.5
    assert report["hardware"]["gpu"] == "Test GPU" and report["summary"]["runs_not_ok"] == ["qwen_vl_2b", "got_ocr_hf"]
    on_disk = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert [r["status"] for r in on_disk["runs"]] == ["timeout", "crashed", "ok"]
    table = (tmp_path / "check" / "gpu_check.md").read_text()
    assert "| qwen_vl_2b | timeout [1] |" in table and "| got_ocr_hf | crashed [2] |" in table
    assert "| dots_ocr | ok | 2/2 | 64 | 4.500 | 2300.0 | 12.2 | 31.5 | chatvlm-static + continuous |" in table
    assert "Test GPU" in table and "transformers 5.25.0" in table
    assert any("[1/3] qwen_vl_2b: running" in line for line in progress)
    assert any(line.startswith("[3/3] dots_ocr: ok: 4.500 pages/s") for line in progress)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (finished, not yet reaped by its parent) counts as stopped
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_smoke_run_of_the_script_on_cpu(tmp_path):
    """The whole script, CPU-sized: one tiny model and both baselines, three bench processes,
    without pdf2image or tesserocr (the GPU machine has neither)."""
    pytest.importorskip("transformers")
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    for name in ("pdf2image", "tesserocr"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    config = tmp_path / "tiny_qwen2_vl.json"
    config.write_text(json.dumps(TINY_QWEN2_VL))
    out = tmp_path / "check"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    env.update(PYTHONPATH=str(blocker), CHATVLM_WHEELS=str(tmp_path / "no-wheels"), OMP_NUM_THREADS="1")
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(out), "--device", "cpu", "--tokens", "4",
         "--pages", "2", "--batch1-pages", "1", "--models", "qwen_vl_2b", "--page-size", "165x233",
         "--max-pixels", "40000", "--synthetic-config", f"qwen_vl_2b={config}", "--max-run-s", "240"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {r["run"]: r for r in report["runs"]}
    assert res.returncode == 0, (res.stderr[-2000:], [(r["run"], r["status"], r["error"]) for r in rows.values()])
    assert list(rows) == ["qwen_vl_2b", "qwen_vl_2b-generate", "qwen_vl_2b-batch1"]
    assert [(r["pages_ok"], r["pages_total"], r["pages_failed"]) for r in rows.values()] == [(2, 2, 0), (2, 2, 0), (1, 1, 0)]
    assert rows["qwen_vl_2b"]["decode_path"] == "chatvlm-static"
    assert rows["qwen_vl_2b-generate"]["decode_path"] == "hf-generate"
    assert rows["qwen_vl_2b-batch1"]["batch_size"] == 1
    assert all(r["output_tokens_per_s"] and r["time_to_first_page_s"] for r in rows.values())
    bench = json.loads((out / "runs" / "qwen_vl_2b-generate" / "bench.json").read_text())
    assert bench["options"]["model_options"] == {"decode": "hf"}
    assert [d["output_tokens"] for d in bench["models"][0]["pages_detail"]] == [4, 4]
    table = (out / "gpu_check.md").read_text()
    assert "| qwen_vl_2b-generate | ok | 2/2 |" in table and "Failed pages: 0." in table
    assert "[3/3] qwen_vl_2b-batch1: ok" in res.stderr          # progress on stderr as it runs
    assert report["summary"]["qwen_vl_2b_speedup_over_generate"] is not None
    # the roofline of each run: bench's limit over the measured seconds per page
    assert all(r["percent_of_limit"] > 0 and r["roofline_limit_s"] > 0 for r in rows.values())
    assert report["summary"]["qwen_vl_2b_percent_of_limit"] == rows["qwen_vl_2b"]["percent_of_limit"]
    assert "% of limit" in table and "float32 matmul" in table
