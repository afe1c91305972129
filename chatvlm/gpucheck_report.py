"""The GPU check's results: a finished (or stopped) run as a table row, and the tables.

A run leaves runs/<run>/bench.json (or only its log, when it crashed or hit its time cap);
`row_for` turns that into one row of gpu_check.json, `render_markdown` the targets'
verdicts (gpucheck_targets) and the rows into gpu_check.md. Every figure is read
defensively: one a bench.json lacks is None in the row and "unmeasured" in a verdict,
never an error. Like gpucheck, this module imports no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .gpucheck_plan import BASELINE_MODEL
from .gpucheck_targets import PASS, VERDICT_LABELS, count, off_fast_path
from .i18n import N_, _

if TYPE_CHECKING:
    from .gpucheck import ProcessResult
    from .gpucheck_plan import Run, Settings

GPU_CHECK_JSON = "gpu_check.json"
GPU_CHECK_MD = "gpu_check.md"
# The engine's facts a row keeps (the rest of describe() stays in the run's bench.json).
ENGINE_FACT_PREFIXES = ("decode", "continuous", "auto_batch", "estimated")


def log_tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[-600:]


def pages_written(out: Path, model: str) -> int:
    """Pages a run finished before it was stopped (its manifest has one line per page)."""
    manifest = out / model / "manifest.jsonl"
    try:
        return sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError:
        return 0


def row_for(run: Run, settings: Settings, out: Path, result: ProcessResult, cap_s: float, log: Path) -> dict[str, Any]:
    """The table row of one run: bench.json's figures, or why there are none."""
    row: dict[str, Any] = {
        "run": run.id, "model": run.model, "role": run.role, "decode_option": run.decode, "batch_option": run.batch,
        "tokens": run.tokens, "seed": run.seed, "pages_planned": run.pages,
        "estimate_s": round(run.estimate_s, 1), "cap_s": round(cap_s, 1), "wall_s": round(result.wall_s, 2),
        "exit_code": result.returncode, "status": None, "error": None,
        "pages_total": None, "pages_ok": None, "pages_failed": None, "pages_per_s": None,
        "output_tokens_per_s": None, "time_to_first_page_s": None, "first_page_after_load_s": None, "load_s": None,
        "peak_gpu_memory_gb": None, "device": None, "dtype": None, "attention": None,
        "decode_path": None, "decode_reason": None, "continuous": None, "continuous_reason": None, "slots": None,
        "decode_graphs": None, "batch_size": None, "idle_fraction": None,
        "decode_fallbacks": None, "decode_first_fallback_reason": None,
        "continuous_fallbacks": None, "continuous_first_fallback_reason": None, "decode_slots_lowered_to": None,
        "roofline_limit_s": None, "percent_of_limit": None, "decode_bound": None, "roofline_error": None,
        "bench_json": None, "log": str(log),
    }
    report = _read_json(out / "bench.json")
    bench_row = ((report or {}).get("models") or [None])[0]
    if result.timed_out:
        done = pages_written(out, run.model)
        row.update(status="timeout", error=_("stopped at its time cap of {cap} s; {done} pages were written").format(
            cap=round(cap_s), done=done))
        row["pages_ok"] = done
    elif bench_row is None:
        row.update(status="crashed", error=_("exit code {code}, no bench.json: {tail}").format(
            code=result.returncode, tail=log_tail(log)))
    if bench_row is not None:
        _fill_from_bench(row, run, bench_row, out)
        row["hardware"] = report.get("hardware")
    return row


def _fill_from_bench(row: dict[str, Any], run: Run, bench_row: dict[str, Any], out: Path) -> None:
    engine = bench_row.get("engine") if isinstance(bench_row.get("engine"), dict) else {}
    pages = bench_row.get("pages") or {}
    status = bench_row.get("status")
    row.update(
        status=row["status"] or ("ok" if status == "ok" and not pages.get("failed") else
                                 status if status != "ok" else "pages failed"),
        error=row["error"] or bench_row.get("error") or _failed_pages_reason(bench_row),
        pages_total=pages.get("total"), pages_ok=pages.get("ok"), pages_failed=pages.get("failed"),
        pages_per_s=bench_row.get("pages_per_s"), output_tokens_per_s=bench_row.get("output_tokens_per_s"),
        time_to_first_page_s=bench_row.get("time_to_first_page_s"),
        first_page_after_load_s=_first_page_after_load(bench_row),
        peak_gpu_memory_gb=bench_row.get("peak_gpu_memory_gb"), load_s=bench_row.get("load_s"),
        device=bench_row.get("device") or engine.get("device"), dtype=bench_row.get("dtype"),
        attention=bench_row.get("attention"),
        decode_path=engine.get("decode"), decode_reason=engine.get("decode_reason"),
        continuous=engine.get("decode_continuous"), continuous_reason=engine.get("decode_continuous_reason"),
        slots=engine.get("decode_slots"), decode_graphs=engine.get("decode_graphs"),
        batch_size=_batch_used(run, engine), idle_fraction=_idle_fraction(bench_row),
        decode_fallbacks=engine.get("decode_fallbacks"),
        decode_first_fallback_reason=engine.get("decode_first_fallback_reason"),
        continuous_fallbacks=engine.get("continuous_fallbacks"),
        continuous_first_fallback_reason=engine.get("continuous_first_fallback_reason"),
        decode_slots_lowered_to=engine.get("decode_slots_lowered_to"),
        bench_json=str(out / "bench.json"))
    roof = bench_row.get("roofline") or {}
    row.update(roofline_limit_s=roof.get("limit_s"), percent_of_limit=roof.get("percent_of_limit"),
               decode_bound=roof.get("decode_bound"), roofline_error=roof.get("error"))
    if roof.get("peaks"):
        row["peaks"] = roof["peaks"]
    row["engine"] = {k: v for k, v in engine.items() if k.startswith(ENGINE_FACT_PREFIXES)}


def _first_page_after_load(bench_row: dict[str, Any]) -> Optional[float]:
    """The cold first page once the model is loaded (bench's warm-up page)."""
    if bench_row.get("warmup_s") is not None:
        return bench_row["warmup_s"]
    first, load = bench_row.get("time_to_first_page_s"), bench_row.get("load_s")
    return round(first - load, 4) if first is not None and load is not None else None


def _idle_fraction(bench_row: dict[str, Any]) -> Optional[float]:
    """The pipeline's recognise_idle_fraction, the largest over the bench's repeats."""
    values = [(run.get("report") or {}).get("recognise_idle_fraction") for run in bench_row.get("runs") or []
              if isinstance(run, dict)]
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def _batch_used(run: Run, engine: dict[str, Any]) -> Optional[int]:
    """The batch size the run started with: the probe's choice for `auto`, else the one asked for."""
    if run.batch.isdigit():
        return int(run.batch)
    return engine.get("auto_batch_size")


def _failed_pages_reason(bench_row: dict[str, Any]) -> Optional[str]:
    errors = [d.get("error") for d in bench_row.get("pages_detail") or [] if d.get("status") == "error"]
    if not errors:
        return None
    return _("{n} pages failed; first: {reason}").format(n=len(errors), reason=errors[0])[:500]


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def progress_line(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return _("ok: {pps} pages/s, {tps} tokens/s, first page {first} s, peak {mem} GB, decode {decode} ({s:.0f} s)").format(
            pps=_num(row["pages_per_s"]), tps=_num(row["output_tokens_per_s"]), first=_num(row["time_to_first_page_s"]),
            mem=_num(row["peak_gpu_memory_gb"]), decode=row["decode_path"] or "–", s=row["wall_s"])
    return f"{row['status']}: {row['error']}"


def summarise(rows: list[dict[str, Any]], verdicts: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    by_run = {r["run"]: r for r in rows}
    fast, slow = by_run.get(BASELINE_MODEL), by_run.get(f"{BASELINE_MODEL}-generate")
    speedup = None
    if fast and slow and fast.get("pages_per_s") and slow.get("pages_per_s"):
        speedup = round(fast["pages_per_s"] / slow["pages_per_s"], 2)
    return {
        "runs": len(rows), "runs_ok": sum(r["status"] == "ok" for r in rows),
        "runs_not_ok": [r["run"] for r in rows if r["status"] != "ok"],
        "pages_failed": sum(r.get("pages_failed") or 0 for r in rows),
        "static_decoder_runs": [r["run"] for r in rows if r.get("decode_path") == "chatvlm-static"],
        "continuous_runs": [r["run"] for r in rows if r.get("continuous")],
        "runs_wall_s": round(sum(r.get("wall_s") or 0.0 for r in rows), 1),
        "qwen_vl_2b_speedup_over_generate": speedup,
        "qwen_vl_2b_percent_of_limit": fast.get("percent_of_limit") if fast else None,
        "targets": count(verdicts or []),
    }


TARGET_COLUMNS = (N_("target"), N_("threshold"), N_("measured"), N_("verdict"))
RUN_COLUMNS = (
    ("run", N_("run")), ("status", N_("status")), ("pages", N_("pages ok/total")), ("batch_size", N_("batch")),
    ("slots", N_("slots")), ("pages_per_s", N_("pages/s")), ("output_tokens_per_s", N_("tokens/s")),
    ("first_page_after_load_s", N_("1st page s after load")), ("idle_fraction", N_("idle %")),
    ("peak_gpu_memory_gb", N_("peak GPU GB")), ("decode_path", N_("decode path")),
    ("percent_of_limit", N_("% of limit")), ("estimate_s", N_("planned s")), ("wall_s", N_("wall s")),
)


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"### {report['title']}", ""] + _heading(report) + [""]
    lines += _targets_table(report.get("targets") or [])
    lines += [""] + _runs_table(report)
    return "\n".join(lines) + "\n"


def _heading(report: dict[str, Any]) -> list[str]:
    host = report.get("host") or {}
    hw = report.get("hardware") or {}
    versions = {**(host.get("versions") or {}), **{k: v for k, v in (hw.get("versions") or {}).items() if v}}
    settings = report["settings"]
    plan = report.get("plan") or {}
    lines = [
        _("Date: {date}. GPU: {gpu} ({memory}, driver {driver}, CUDA {cuda}). torch {torch}, transformers {tf}, "
          "Python {py}; chatvlm {commit}.").format(
            date=report["started"], gpu=hw.get("gpu") or host.get("gpu") or _("none"),
            memory=host.get("gpu_memory") or "?", driver=host.get("driver") or "?", cuda=hw.get("cuda") or "?",
            torch=versions.get("torch") or "?", tf=versions.get("transformers") or "?",
            py=hw.get("python") or host.get("python"), commit=host.get("commit") or "?"),
        _("Synthetic weights (random, real architecture), {tokens} tokens per page ({range} in "
          "qwen_vl_2b-range, seed {seed}), pages of {w}x{h} px; engine runs {pages} pages ({heavy} for {heavy_models}), "
          "generate baselines one batch of {gen} ({heavy_gen}); device {device}.").format(
            tokens=settings["tokens"], range=settings["range_tokens"], seed=settings["seed"],
            w=settings["page_size"][0], h=settings["page_size"][1], pages=settings["pages"],
            heavy=settings["heavy_pages"], heavy_models=", ".join(settings.get("heavy_models") or []),
            gen=settings["generate_pages"], heavy_gen=settings["heavy_generate_pages"], device=settings["device"]),
        _("Plan: {n} runs, {planned} s planned of a {budget} s budget (planning figures for one H100/H200, not "
          "measurements); the runs took {used} s.").format(
            n=len(plan.get("runs") or []), planned=round(plan.get("planned_s") or 0),
            budget=round(settings["budget_s"]), used=round((report.get("summary") or {}).get("runs_wall_s") or 0)),
    ]
    if plan.get("left_out"):
        lines.append(_("Left out (they only inform; over the budget, or --optional none): {runs}.").format(
            runs=", ".join(plan["left_out"])))
    if settings.get("dry_run"):
        lines.append(_("Dry run: reduced models on small pages, so every speed target is unmeasured; "
                       "it checks that the check runs and reads every figure."))
    return lines


def _targets_table(verdicts: list[dict[str, Any]]) -> list[str]:
    lines = ["#### " + _("Targets"), "", "| " + " | ".join(_(h) for h in TARGET_COLUMNS) + " |",
             "|:---|:---|---:|:---|"]
    notes = []
    for v in verdicts:
        verdict = _(VERDICT_LABELS[v["verdict"]])
        if v.get("why"):
            notes.append(v)
            verdict += f" [{len(notes)}]"
        elif v["verdict"] == PASS:
            verdict = f"**{verdict}**"
        cells = [v["title"], v["threshold"], v.get("measured") or "–", verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    counts = count(verdicts)
    lines += ["", _("Targets: {p} pass, {f} fail, {u} unmeasured.").format(p=counts[PASS], f=counts["fail"],
                                                                           u=counts["unmeasured"])]
    lines += [f"- [{n}] {v['title']}: {v['why']}" for n, v in enumerate(notes, start=1)]
    return lines


def _runs_table(report: dict[str, Any]) -> list[str]:
    lines = ["#### " + _("Runs"), "", "| " + " | ".join(_(h) for _k, h in RUN_COLUMNS) + " |"]
    lines.append("|" + "|".join(":---" if k in ("run", "status", "decode_path") else "---:"
                                for k, _h in RUN_COLUMNS) + "|")
    notes = []
    for row in report["runs"]:
        cells = []
        for key, _h in RUN_COLUMNS:
            if key == "batch_size" and row.get("batch_size") is None:
                cells.append(row.get("batch_option") or "–")      # auto without a probe (no GPU)
            elif key == "pages":
                done = row.get("pages_ok")
                cells.append("–" if done is None else f"{done}/{row.get('pages_total') or '?'}")
            elif key == "idle_fraction":
                cells.append("–" if row.get("idle_fraction") is None else f"{row['idle_fraction'] * 100:.1f}")
            elif key == "decode_path" and row.get("continuous"):
                cells.append(f"{row['decode_path']} + continuous")   # rows refilled as pages finish
            elif key == "status" and row["status"] != "ok":
                notes.append(row)
                cells.append(f"{row['status']} [{len(notes)}]")
            else:
                cells.append(_num(row.get(key)))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    summary = report.get("summary") or {}
    lines.append("")
    if summary.get("qwen_vl_2b_speedup_over_generate"):
        lines.append(_("qwen_vl_2b: {x}x the pages/s of transformers generate in the same run.").format(
            x=summary["qwen_vl_2b_speedup_over_generate"]))
    lines.append(_("Failed pages: {n}.").format(n=summary.get("pages_failed", 0)))
    peaks = next((row["peaks"] for row in report["runs"] if row.get("peaks")), None)
    if peaks:
        lines.append(_("% of limit: the roofline limit of a page (prefill at the matmul rate, decode steps at the "
                       "slower of the matmul rate and the memory bandwidth for the run's batch) over the measured "
                       "seconds per page; the card measured {tflops} TFLOP/s ({dtype} matmul) and {gb_s} GB/s.").format(
            tflops=_num(peaks.get("matmul_tflops")), dtype=peaks.get("dtype"), gb_s=_num(peaks.get("bandwidth_gb_s"))))
    for row in report["runs"]:
        if row["status"] not in ("ok", "pages failed"):
            continue
        if row.get("decode_reason"):
            lines.append(f"- {row['run']}: decode {row['decode_path']}: {row['decode_reason']}")
        if row.get("continuous_reason"):
            lines.append(f"- {row['run']}: continuous batching off: {row['continuous_reason']}")
        lines += [f"- {row['run']}: {note}" for note in off_fast_path(row)]
        if row.get("roofline_error"):
            lines.append(f"- {row['run']}: roofline: {row['roofline_error']}")
    for number, row in enumerate(notes, start=1):
        lines.append(f"- [{number}] {row['run']}: {row['error']}")
    return lines


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    from .writers import atomic_write_text

    atomic_write_text(out / GPU_CHECK_JSON, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(out / GPU_CHECK_MD, render_markdown(report))
