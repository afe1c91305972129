"""The GPU check on CPU: the plan and its budget, process isolation and time caps, the
targets' verdicts from bench rows, the tables, and a dry run of scripts/gpu_check.sh with
reduced models (its own pages, one bench process per run, one gpu_check.json and one
table), with pdf2image and tesserocr made unimportable, as on the GPU machine."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatvlm import gpucheck, gpucheck_plan
from chatvlm.gpucheck import ProcessResult, Settings
from chatvlm.gpucheck_report import render_markdown, row_for, summarise
from chatvlm.gpucheck_targets import AGAINST_GENERATE, FAIL, PASS, UNMEASURED, judge, off_fast_path
from tests.conftest import ROOT

ENGINES = ["qwen_vl_2b", "qwen_vl_2b-range", "deepseek_ocr", "deepseek_ocr2", "qwen3_vl_2b", "got_ocr_hf",
           "dots_ocr", "phi3_vision"]
GENERATES = [f"{m}-generate" for m in ("deepseek_ocr", "deepseek_ocr2", "qwen3_vl_2b", "got_ocr_hf", "dots_ocr",
                                       "phi3_vision")]


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1]


# --------------------------------------------------------------------------- the plan

def test_plan_runs_every_target_in_priority_order(tmp_path):
    settings = Settings(out=tmp_path)
    runs = gpucheck.plan_runs(settings)
    assert [r.id for r in runs] == ENGINES + GENERATES + ["qwen_vl_2b-generate"]
    from chatvlm.registry import all_specs
    assert set(gpucheck.VLMS) == {s.name for s in all_specs() if s.repo_id}
    cmd = {r.id: gpucheck.bench_command(settings, r, tmp_path / "pages", tmp_path / r.id) for r in runs}
    assert cmd["qwen_vl_2b"][1:5] == ["-m", "chatvlm", "bench", str(tmp_path / "pages")]
    assert "--synthetic" in cmd["qwen_vl_2b"] and "-O" not in cmd["qwen_vl_2b"] and "--seed" not in cmd["qwen_vl_2b"]
    assert _arg(cmd["qwen_vl_2b"], "--batch-size") == "auto" and _arg(cmd["qwen_vl_2b"], "--tokens") == "512"
    assert _arg(cmd["qwen_vl_2b-range"], "--tokens") == "256-1024" and _arg(cmd["qwen_vl_2b-range"], "--seed") == "1"
    assert _arg(cmd["qwen_vl_2b"], "--max-pages") == _arg(cmd["qwen_vl_2b-range"], "--max-pages") == "64"
    assert _arg(cmd["got_ocr_hf"], "--max-pages") == "64" and _arg(cmd["deepseek_ocr"], "--max-pages") == "24"
    # the baselines: transformers generate, fewer pages, all of them in one batch
    assert _arg(cmd["got_ocr_hf-generate"], "-O") == "decode=hf"
    assert _arg(cmd["got_ocr_hf-generate"], "--max-pages") == _arg(cmd["got_ocr_hf-generate"], "--batch-size") == "16"
    assert _arg(cmd["phi3_vision-generate"], "--max-pages") == _arg(cmd["phi3_vision-generate"], "--batch-size") == "8"
    # ... without bench's warm-up page; the engine runs keep it (first page, roofline, no graph capture timed)
    assert all(("--no-warmup" in cmd[r.id]) == (r.decode == "hf") for r in runs)
    assert all(r.to_dict()["warmup"] == (r.decode != "hf") for r in runs)
    assert "--device" not in cmd["deepseek_ocr"] and "--max-pixels" not in cmd["deepseek_ocr"]
    # every target names only runs of the plan (nothing it needs is left to chance)
    planned = {r.id for r in runs}
    report = {"settings": gpucheck.settings_facts(settings), "plan": {"runs": [r.to_dict() for r in runs]}, "runs": []}
    verdicts = judge(report)
    assert len(verdicts) == 14 and all(set(v["runs"]) <= planned for v in verdicts)
    assert all(v["verdict"] == UNMEASURED and "has not run" in v["why"] for v in verdicts)
    # a narrower check plans only what its models need
    only = gpucheck.plan_runs(Settings(out=tmp_path, models=["got_ocr_hf"]))
    assert [r.id for r in only] == ["got_ocr_hf", "got_ocr_hf-generate"]
    assert [r.id for r in gpucheck.plan_runs(Settings(out=tmp_path, models=["got_ocr_hf"], baselines=False))] == \
        ["got_ocr_hf"]


def test_default_plan_fits_its_budget_and_the_device_call(tmp_path):
    settings = Settings(out=tmp_path)
    runs = gpucheck.plan_runs(settings)
    planned = gpucheck.planned_s(runs)
    assert 0 < planned <= settings.budget_s <= 8 * 60          # the check runs inside a 10-minute device call
    # runs that only inform join only when they fit: qwen_vl_2b through generate does, as the
    # baselines skip their warm-up page (a page of generate each); a tighter budget leaves it out
    assert gpucheck.left_out(settings, runs) == []
    tight = Settings(out=tmp_path, budget_s=420)
    assert gpucheck.left_out(tight, gpucheck.plan_runs(tight)) == ["qwen_vl_2b-generate"]
    by_id = {r.id: r for r in runs}
    generate = by_id["got_ocr_hf-generate"]
    warmed = gpucheck_plan.estimate_s(dataclasses.replace(generate, warmup=True), settings)
    assert warmed - generate.estimate_s == pytest.approx(gpucheck_plan.PLANNING["got_ocr_hf"].generate_page_s)
    everything = gpucheck.plan_runs(Settings(out=tmp_path, optional="all", batch1_pages=4))
    assert [r.id for r in everything][-2:] == ["qwen_vl_2b-generate", "qwen_vl_2b-batch1"]
    assert gpucheck.plan_runs(Settings(out=tmp_path, budget_s=2000))[-1].id == "qwen_vl_2b-generate"
    # runs that take their planned time each get a cap above it (twice it, while the budget allows)
    remaining = settings.budget_s
    for number, run in enumerate(runs, start=1):
        cap = gpucheck.run_cap(remaining, len(runs) - number, run.estimate_s, settings)
        assert cap >= (2 if number == 1 else 1.5 if number < len(runs) else 1) * run.estimate_s, run.id
        remaining -= run.estimate_s
    # runs that all hang to their caps still end inside the budget, every one of them started
    remaining = settings.budget_s
    for number, run in enumerate(runs, start=1):
        cap = gpucheck.run_cap(remaining, len(runs) - number, run.estimate_s, settings)
        assert cap >= settings.reserve_s, run.id
        remaining -= cap
    assert remaining >= 0
    # more tokens per page, more seconds: the range run is planned longer than the 512 run
    by_id = {r.id: r for r in runs}
    assert by_id["qwen_vl_2b-range"].estimate_s > by_id["qwen_vl_2b"].estimate_s
    assert by_id["deepseek_ocr-generate"].estimate_s > gpucheck_plan.PLANNING["deepseek_ocr"].start_s


def test_plan_only_prints_the_runs_and_the_budget(capsys):
    assert gpucheck.main(["--plan-only"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("plan: 15 runs, ") and "of a 480 s budget" in text
    assert "qwen_vl_2b-range" in text and "256-1024 tokens/page" in text and "left out" not in text
    assert gpucheck.main(["--plan-only", "--optional", "none"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("plan: 14 runs, ")
    assert "left out (they only inform; over the budget, or --optional none): qwen_vl_2b-generate" in text


def test_time_caps_share_one_budget(tmp_path):
    settings = Settings(out=tmp_path, slack=2.0, floor_s=30, max_run_s=150, reserve_s=20)
    assert gpucheck.run_cap(480, 13, 25, settings) == 50        # twice its plan
    assert gpucheck.run_cap(480, 13, 10, settings) == 30        # at least the floor
    assert gpucheck.run_cap(480, 0, 100, settings) == 150       # at most max_run_s
    assert gpucheck.run_cap(100, 4, 40, settings) == 20         # 20 s kept for each of the 4 after it
    assert gpucheck.run_cap(60, 0, 40, settings) == 60          # the last run takes what is left, up to its cap
    assert gpucheck.run_cap(40, 3, 40, settings) == 0           # nothing left for this one


def test_pages_are_a4_at_200_dpi_by_default(tmp_path):
    from PIL import Image

    assert gpucheck.A4_200DPI == (1654, 2339) == Settings(out=tmp_path).page_size
    paths = gpucheck.make_pages(tmp_path, 3, size=(165, 233), distinct=2)
    assert [p.name for p in paths] == ["page-001.png", "page-002.png", "page-003.png"]
    assert all(Image.open(p).size == (165, 233) for p in paths)
    assert paths[2].read_bytes() == paths[0].read_bytes() != paths[1].read_bytes()


def test_options_and_the_dry_run_defaults(monkeypatch):
    monkeypatch.setenv("OUT", "/tmp/somewhere")
    settings, plan_only = gpucheck.parse_args([])
    assert settings.out == Path("/tmp/somewhere") and not plan_only and not settings.dry_run
    assert (settings.tokens, settings.range_tokens, settings.device, settings.budget_s) == ("512", "256-1024", None, 480)
    monkeypatch.delenv("OUT")
    settings, _ = gpucheck.parse_args(["--dry-run", "--pages", "3"])
    assert settings.out == Path("gpu-check-out") and settings.dry_run
    assert (settings.device, settings.tokens, settings.range_tokens, settings.page_size) == ("cpu", "4", "2-6", (165, 233))
    assert settings.pages == 3 and settings.heavy_pages == 2 and settings.max_pixels == 40_000   # given wins
    settings, _ = gpucheck.parse_args(["--tokens", "128", "--range-tokens", "64-256", "--seed", "7", "--page-size", "100x200"])
    assert (settings.tokens, settings.range_tokens, settings.seed, settings.page_size) == ("128", "64-256", 7, (100, 200))
    for bad in (["--models", "nope"], ["--tokens", "0"], ["--range-tokens", "9-3"], ["--tokens", "x"], ["--pages", "0"]):
        with pytest.raises(SystemExit):
            gpucheck.parse_args(bad)


# --------------------------------------------------------------------------- verdicts from bench rows

H100 = {"gpu": "NVIDIA H100 80GB HBM3", "cuda": "13.0", "python": "3.12.3",
        "versions": {"torch": "2.11.0", "transformers": "5.25.0"}}


def _bench_json(folder: Path, model: str, pages_per_s: float, *, failed: int = 0, total: int = 8,
                warmup_s: float = 4.0, percent: float = 70.0, idle: float = 0.02, device: str = "cuda:0",
                decode: str = "chatvlm-static", roofline_error: str = None, drop=(), engine=None) -> None:
    """A run's bench.json as `chatvlm bench --synthetic` writes it (the keys the check reads)."""
    row = {"model": model, "status": "ok", "error": None, "device": device, "dtype": "bfloat16", "attention": "sdpa",
           "load_s": 3.0, "warmup_s": warmup_s, "time_to_first_page_s": 3.0 + warmup_s,
           "pages": {"total": total, "ok": total - failed, "failed": failed}, "pages_per_s": pages_per_s,
           "output_tokens_per_s": pages_per_s * 512, "peak_gpu_memory_gb": 30.5,
           "roofline": {"limit_s": percent / 100 / pages_per_s, "percent_of_limit": percent, "decode_bound": "memory"},
           "engine": {"device": device, "decode": decode, "auto_batch_size": 48, "decode_slots": 48,
                      "decode_continuous": decode == "chatvlm-static", "decode_graphs": True},
           "runs": [{"repeat": 1, "report": {"recognise_idle_fraction": idle}}],
           "pages_detail": [{"status": "error", "error": "CUDA error: an illegal memory access"}] * failed}
    row["engine"].update(engine or {})
    if roofline_error:
        row["roofline"] = {"error": roofline_error}
    for key in drop:
        row.pop(key, None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.json").write_text(json.dumps({"models": [row], "hardware": H100}))


# Figures that meet every target (engine pages/s, generate pages/s).
GOOD = {"qwen_vl_2b": 9.0, "qwen_vl_2b-range": 8.5, "deepseek_ocr": 2.5, "deepseek_ocr2": 2.2, "qwen3_vl_2b": 7.0,
        "got_ocr_hf": 12.0, "dots_ocr": 3.0, "phi3_vision": 2.6, "deepseek_ocr-generate": 0.4,
        "deepseek_ocr2-generate": 0.4, "qwen3_vl_2b-generate": 1.0, "got_ocr_hf-generate": 2.0,
        "dots_ocr-generate": 0.5, "phi3_vision-generate": 0.5, "qwen_vl_2b-generate": 1.0}


def _check(tmp_path, figures: dict, settings: Settings = None, crash=(), **by_run):
    """A check whose runs left these bench.json files: (report, {target key: verdict})."""
    settings = settings or Settings(out=tmp_path)
    runs = gpucheck.plan_runs(settings)
    report = {"settings": gpucheck.settings_facts(settings), "plan": {"runs": [r.to_dict() for r in runs]},
              "runs": []}
    for run in runs:
        if run.id not in figures and run.id not in crash:
            continue
        folder = tmp_path / run.id
        folder.mkdir(parents=True, exist_ok=True)
        if run.id in crash:
            (folder / "log.txt").write_text("building the vision tower\nRuntimeError: CUDA out of memory\n")
            result = ProcessResult(1, 20.0, False)
        else:
            decode = "hf-generate" if run.decode == "hf" else "chatvlm-static"
            figures_of_run = {"total": run.pages, **by_run.get(run.id, {})}
            _bench_json(folder, run.model, figures[run.id], decode=decode, **figures_of_run)
            result = ProcessResult(0, 20.0, False)
        row = row_for(run, settings, folder, result, 60.0, folder / "log.txt")
        report["hardware"] = row.pop("hardware", None)
        report["runs"].append(row)
    return report, {v["key"]: v for v in judge(report)}


def test_every_target_passes_on_figures_that_meet_it(tmp_path):
    report, verdicts = _check(tmp_path, GOOD)
    assert {k: v["verdict"] for k, v in verdicts.items() if v["verdict"] != PASS} == {}
    assert verdicts["qwen_vl_2b_pages_per_s"]["measured"] == "9.00 pages/s"
    assert verdicts["qwen_vl_2b_first_page_s"]["value"] == 4.0
    assert verdicts["got_ocr_hf_over_generate"]["value"] == 6.0
    assert "generate: 16 pages, batch 16" in verdicts["got_ocr_hf_over_generate"]["measured"]
    assert verdicts["recognise_idle_fraction"]["measured"] == "max 2.0 % (qwen_vl_2b); 8 of 8 runs"
    assert verdicts["failed_pages"]["measured"] == "0 of 432 pages"
    # the diagnosis facts of every run travel in its row
    row = next(r for r in report["runs"] if r["run"] == "dots_ocr")
    assert (row["decode_path"], row["continuous"], row["slots"], row["batch_size"], row["peak_gpu_memory_gb"],
            row["decode_graphs"], row["idle_fraction"]) == ("chatvlm-static", True, 48, 48, 30.5, True, 0.02)
    table = render_markdown({**report, "title": "t", "started": "now", "host": {}, "targets": list(verdicts.values()),
                             "summary": summarise(report["runs"], list(verdicts.values()))})
    assert "| qwen_vl_2b, 512 tokens/page | ≥ 8 pages/s | 9.00 pages/s | **pass** |" in table
    assert "| qwen_vl_2b roofline: % of limit | ≥ 60 % (within 40 % of the limit) | 70.0 % | **pass** |" in table
    assert "Targets: 14 pass, 0 fail, 0 unmeasured." in table
    assert "| dots_ocr | ok | 24/24 | 48 | 48 | 3.000 | 1536.0 | 4.000 | 2.0 | 30.5 | chatvlm-static + continuous |" in table


def test_each_target_fails_just_past_its_threshold(tmp_path):
    figures = {**GOOD, "qwen_vl_2b": 7.99, "qwen_vl_2b-range": 6.0, "deepseek_ocr": 1.99, "got_ocr_hf": 9.98,
               "deepseek_ocr-generate": 0.3}
    by_run = {"qwen_vl_2b": {"warmup_s": 15.0, "percent": 59.9}, "dots_ocr": {"idle": 0.05, "failed": 1}}
    _report, verdicts = _check(tmp_path, figures, **by_run)
    failed = {k for k, v in verdicts.items() if v["verdict"] == FAIL}
    assert failed == {"qwen_vl_2b_pages_per_s", "qwen_vl_2b_range_pages_per_s", "qwen_vl_2b_first_page_s",
                      "qwen_vl_2b_percent_of_limit", "deepseek_ocr_pages_per_s", "got_ocr_hf_over_generate",
                      "recognise_idle_fraction", "failed_pages"}
    assert verdicts["got_ocr_hf_over_generate"]["value"] == 4.99
    assert verdicts["recognise_idle_fraction"]["measured"].startswith("max 5.0 % (dots_ocr)")
    assert verdicts["failed_pages"]["measured"] == "1 of 432 pages (dots_ocr: 1)"
    assert all(v["verdict"] == PASS for k, v in verdicts.items() if k not in failed)


def test_what_was_not_measured_says_why(tmp_path):
    figures = {k: v for k, v in GOOD.items() if k not in ("phi3_vision-generate", "dots_ocr-generate")}
    by_run = {"qwen_vl_2b": {"drop": ("warmup_s", "time_to_first_page_s", "runs"),
                             "roofline_error": "RuntimeError: no FLOP counts"}}
    report, verdicts = _check(tmp_path, figures, crash=("dots_ocr-generate",), **by_run)
    assert verdicts["qwen_vl_2b_first_page_s"]["verdict"] == UNMEASURED
    assert verdicts["qwen_vl_2b_first_page_s"]["why"] == "qwen_vl_2b: no first_page_after_load_s in its bench.json"
    assert verdicts["qwen_vl_2b_percent_of_limit"]["why"] == \
        "qwen_vl_2b: no percent_of_limit in its bench.json (RuntimeError: no FLOP counts)"
    assert verdicts["qwen_vl_2b_pages_per_s"]["verdict"] == PASS             # the rest of the row still counts
    crashed = verdicts["dots_ocr_over_generate"]
    assert crashed["verdict"] == UNMEASURED and crashed["why"].startswith("dots_ocr-generate: crashed: exit code 1")
    assert "CUDA out of memory" in crashed["why"]
    assert "phi3_vision-generate has not run" in verdicts["phi3_vision_over_generate"]["why"]
    # the idle target: qwen_vl_2b's figure is missing and no run is over the line
    idle = verdicts["recognise_idle_fraction"]
    assert idle["verdict"] == UNMEASURED and "7 of 8 runs" in idle["measured"] and "qwen_vl_2b:" in idle["why"]
    # failed pages: no page counts from the crashed run, so not a pass either
    assert verdicts["failed_pages"]["verdict"] == UNMEASURED and "dots_ocr-generate" in verdicts["failed_pages"]["why"]
    assert {r["run"]: r["status"] for r in report["runs"]}["dots_ocr-generate"] == "crashed"
    # one run over the idle line fails the target even while others are missing
    _report, verdicts = _check(tmp_path / "again", figures, **{**by_run, "got_ocr_hf": {"idle": 0.2}})
    assert verdicts["recognise_idle_fraction"]["verdict"] == FAIL


def test_a_run_outside_the_targets_conditions_is_unmeasured(tmp_path):
    # on a CPU, or at another token count, the figures are shown but judge nothing
    _report, verdicts = _check(tmp_path / "cpu", GOOD, **{run: {"device": "cpu"} for run in GOOD})
    assert all(v["verdict"] == UNMEASURED for k, v in verdicts.items() if k != "failed_pages")
    assert verdicts["failed_pages"]["verdict"] == PASS                       # a failed page is a failure anywhere
    assert verdicts["qwen_vl_2b_pages_per_s"]["measured"] == "9.00 pages/s"
    assert verdicts["qwen_vl_2b_pages_per_s"]["why"] == "not under the target's conditions: on cpu, not a GPU"
    settings = Settings(out=tmp_path, tokens="128")
    _report, verdicts = _check(tmp_path / "short", GOOD, settings)
    assert "128 tokens/page, not 512" in verdicts["deepseek_ocr_pages_per_s"]["why"]
    assert verdicts["qwen_vl_2b_range_pages_per_s"]["verdict"] == PASS        # that run kept 256-1024
    settings = Settings(out=tmp_path, synthetic_configs={"got_ocr_hf": "/tiny.json"}, max_pixels=40000)
    _report, verdicts = _check(tmp_path / "tiny", GOOD, settings)
    assert verdicts["got_ocr_hf_over_generate"]["why"] == ("not under the target's conditions: --max-pixels 40000, "
                                                           "not the model's own budget; a reduced config, not the "
                                                           "full-size model")
    assert set(AGAINST_GENERATE) == {k.removesuffix("_over_generate") for k in verdicts if k.endswith("_over_generate")}


def test_fallbacks_of_a_run_reach_its_verdict_and_the_runs_notes(tmp_path):
    fallbacks = {"decode": "chatvlm-static", "decode_fallbacks": 2,
                 "decode_first_fallback_reason": "static decoder declined this batch: prompt + new tokens (9000) "
                                                 "exceed the decoder's cache limit (8192)",
                 "continuous_fallbacks": 1, "continuous_first_fallback_reason": "continuous engine failed: boom",
                 "decode_slots_lowered_to": 24}
    figures = {**GOOD, "qwen_vl_2b": 7.0}
    by_run = {"qwen_vl_2b": {"engine": fallbacks}, "got_ocr_hf": {"engine": {"decode_fallbacks": "n/a"}}}
    report, verdicts = _check(tmp_path, figures, **by_run)
    slow = verdicts["qwen_vl_2b_pages_per_s"]
    assert slow["verdict"] == FAIL
    assert slow["why"].startswith("qwen_vl_2b: batches the static decoder gave to transformers generate: 2; "
                                  "first: static decoder declined this batch: prompt + new tokens (9000)")
    assert "qwen_vl_2b: continuous engine declines and failures: 1; first: continuous engine failed: boom" \
        in slow["why"]
    assert "continuous rows lowered to 24 after running out of memory" in slow["why"]
    assert verdicts["got_ocr_hf_over_generate"]["why"] is None          # a count that is not one: no note
    row = next(r for r in report["runs"] if r["run"] == "qwen_vl_2b")
    assert (row["decode_fallbacks"], row["continuous_fallbacks"], row["decode_slots_lowered_to"]) == (2, 1, 24)
    assert row["engine"]["decode_first_fallback_reason"] == fallbacks["decode_first_fallback_reason"]
    table = render_markdown({**report, "title": "t", "started": "now", "host": {}, "targets": list(verdicts.values()),
                             "summary": summarise(report["runs"], list(verdicts.values()))})
    assert "- qwen_vl_2b: batches the static decoder gave to transformers generate: 2; first:" in table
    assert "- qwen_vl_2b: continuous engine declines and failures: 1; first: continuous engine failed: boom" in table
    # a row without engine facts (an older gpu_check.json) is read as no fallback
    assert off_fast_path({"run": "x", "engine": None}) == [] and off_fast_path({"run": "x"}) == []


# --------------------------------------------------------------------------- processes

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
row = {"model": "phi3_vision", "status": "ok", "error": None, "pages": {"total": 2, "ok": 2, "failed": 0},
       "pages_per_s": 4.5, "output_tokens_per_s": 2300.0, "time_to_first_page_s": 12.25, "warmup_s": 9.0,
       "peak_gpu_memory_gb": 31.5, "load_s": 3.25, "attention": "sdpa", "dtype": "bfloat16", "device": "cuda:0",
       "engine": {"decode": "chatvlm-static", "decode_continuous": True, "decode_slots": 32, "auto_batch_size": 64,
                  "decode_steps": 511}, "pages_detail": [], "runs": [{"report": {"recognise_idle_fraction": 0.031}}]}
(out / "bench.json").write_text(json.dumps({"models": [row], "hardware": {"gpu": "Test GPU", "cuda": "13.0",
    "python": "3.12.3", "versions": {"torch": "2.11.0", "transformers": "5.25.0"}}}))
"""


def test_a_hang_and_a_crash_cost_one_row_each(tmp_path):
    pidfile = tmp_path / "child.pid"

    def command_for(settings, run, pages_dir, out):
        script = {"got_ocr_hf": HANG, "dots_ocr": CRASH, "phi3_vision": FINISH}[run.model]
        arg = pidfile if run.model == "got_ocr_hf" else out
        return [sys.executable, "-c", script, str(arg)]

    settings = Settings(out=tmp_path / "check", pages=2, heavy_pages=2, models=["got_ocr_hf", "dots_ocr", "phi3_vision"],
                        baselines=False, budget_s=20, slack=1.0, floor_s=1, max_run_s=3, reserve_s=1,
                        page_size=(120, 170))
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
    assert done["continuous"] is True and done["continuous_reason"] is None and done["slots"] == 32
    assert done["batch_size"] == 64 and done["pages_ok"] == 2 and done["peak_gpu_memory_gb"] == 31.5
    assert done["first_page_after_load_s"] == 9.0 and done["idle_fraction"] == 0.031
    assert report["hardware"]["gpu"] == "Test GPU" and report["summary"]["runs_not_ok"] == ["got_ocr_hf", "dots_ocr"]
    on_disk = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert [r["status"] for r in on_disk["runs"]] == ["timeout", "crashed", "ok"]
    assert [r["run"] for r in on_disk["plan"]["runs"]] == ["got_ocr_hf", "dots_ocr", "phi3_vision"]
    targets = {v["key"]: v for v in on_disk["targets"]}
    assert targets["got_ocr_hf_over_generate"]["verdict"] == UNMEASURED
    assert "timeout: stopped at its time cap" in targets["got_ocr_hf_over_generate"]["why"]
    table = (tmp_path / "check" / "gpu_check.md").read_text()
    assert "| got_ocr_hf | timeout [1] |" in table and "| dots_ocr | crashed [2] |" in table
    assert "| phi3_vision | ok | 2/2 | 64 | 32 | 4.500 | 2300.0 | 9.000 | 3.1 | 31.5 | chatvlm-static + continuous |" in table
    assert "Test GPU" in table and "transformers 5.25.0" in table and "#### Targets" in table
    assert any("[1/3] got_ocr_hf: running" in line for line in progress)
    assert any(line.startswith("[3/3] phi3_vision: ok: 4.500 pages/s") for line in progress)
    assert any(line.startswith("plan: 3 runs, ") for line in progress)


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
    """The script's dry run: reduced qwen_vl_2b and GOT-OCR, every run their targets need
    (four bench processes), without pdf2image or tesserocr (the GPU machine has neither).
    Every figure a verdict reads arrives from a real bench.json; the speed verdicts are
    unmeasured (a CPU is not the targets' conditions), the failed-pages one passes."""
    pytest.importorskip("transformers")
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    for name in ("pdf2image", "tesserocr"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    out = tmp_path / "check"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    env.update(PYTHONPATH=str(blocker), CHATVLM_WHEELS=str(tmp_path / "no-wheels"), OMP_NUM_THREADS="1")
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out),
         "--models", "qwen_vl_2b,got_ocr_hf", "--optional", "none"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {r["run"]: r for r in report["runs"]}
    assert res.returncode == 0, (res.stderr[-2000:], [(r["run"], r["status"], r["error"]) for r in rows.values()])
    assert list(rows) == ["qwen_vl_2b", "qwen_vl_2b-range", "got_ocr_hf", "got_ocr_hf-generate"]
    assert [(r["pages_ok"], r["pages_total"], r["pages_failed"]) for r in rows.values()] == \
        [(2, 2, 0), (2, 2, 0), (2, 2, 0), (1, 1, 0)]
    assert rows["qwen_vl_2b"]["decode_path"] == rows["got_ocr_hf"]["decode_path"] == "chatvlm-static"
    assert rows["got_ocr_hf-generate"]["decode_path"] == "hf-generate"
    assert rows["got_ocr_hf-generate"]["batch_size"] == 1 and rows["qwen_vl_2b"]["device"] == "cpu"
    for row in rows.values():
        assert row["pages_per_s"] and row["output_tokens_per_s"] and row["idle_fraction"] is not None, row
        if row["run"].endswith("-generate"):      # --no-warmup: no cold page, no roofline counted on it
            assert row["first_page_after_load_s"] is None and row["percent_of_limit"] is None, row
        else:
            assert row["first_page_after_load_s"] > 0 and row["percent_of_limit"] > 0, row
    bench = json.loads((out / "runs" / "qwen_vl_2b-range" / "bench.json").read_text())
    assert (bench["tokens_range"], bench["seed"]) == ([2, 6], 1)
    assert {d["output_tokens"] for d in bench["models"][0]["pages_detail"]} <= set(range(2, 7))
    generate = json.loads((out / "runs" / "got_ocr_hf-generate" / "bench.json").read_text())
    assert generate["options"]["model_options"] == {"decode": "hf"}
    assert generate["options"]["warmup"] is False and generate["warmup_page"] is None
    # the verdicts read every figure: speed ones shown but unmeasured (not a GPU), failed pages judged
    targets = {v["key"]: v for v in report["targets"]}
    for key in ("qwen_vl_2b_pages_per_s", "qwen_vl_2b_range_pages_per_s", "qwen_vl_2b_first_page_s",
                "got_ocr_hf_over_generate", "qwen_vl_2b_percent_of_limit", "recognise_idle_fraction"):
        assert targets[key]["measured"] and targets[key]["verdict"] == UNMEASURED, targets[key]
        assert "on cpu, not a GPU" in targets[key]["why"] and "a reduced config" in targets[key]["why"]
    assert "no deepseek_ocr run in this check" in targets["deepseek_ocr_pages_per_s"]["why"]
    assert targets["failed_pages"]["verdict"] == PASS and targets["failed_pages"]["measured"] == "0 of 7 pages"
    # the table on stdout at the end, the same as gpu_check.md; progress and the plan on stderr
    table = (out / "gpu_check.md").read_text()
    assert res.stdout == table and "#### Targets" in table and "Dry run:" in table
    assert "| failed pages, every run | 0 | 0 of 7 pages | **pass** |" in table
    assert "plan: 4 runs, " in res.stderr and "[4/4] got_ocr_hf-generate: ok" in res.stderr
    assert "% of limit" in table and "float32 matmul" in table
