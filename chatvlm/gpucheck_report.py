"""The GPU check's results: a finished (or stopped) run as a table row, and the table.

A run leaves runs/<run>/bench.json (or only its log, when it crashed or hit its time cap);
`row_for` turns that into one row of gpu_check.json, `render_markdown` the rows into
gpu_check.md. Like gpucheck, this module imports no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .i18n import N_, _

if TYPE_CHECKING:
    from .gpucheck import ProcessResult, Run, Settings

GPU_CHECK_JSON = "gpu_check.json"
GPU_CHECK_MD = "gpu_check.md"
BASELINE_MODEL = "qwen_vl_2b"          # the summary compares its runs: ours against transformers generate


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
        "run": run.id, "model": run.model, "decode_option": run.decode, "batch_option": run.batch,
        "note": run.note, "cap_s": round(cap_s, 1), "wall_s": round(result.wall_s, 2),
        "exit_code": result.returncode, "status": None, "error": None,
        "pages_total": None, "pages_ok": None, "pages_failed": None, "pages_per_s": None,
        "output_tokens_per_s": None, "time_to_first_page_s": None, "peak_gpu_memory_gb": None,
        "decode_path": None, "decode_reason": None, "continuous": None, "continuous_reason": None, "batch_size": None, "attention": None, "dtype": None,
        "load_s": None, "roofline_limit_s": None, "percent_of_limit": None, "decode_bound": None,
        "bench_json": None, "log": str(log),
    }
    report = _read_json(out / "bench.json")
    bench_row = (report or {}).get("models", [None])[0] if report else None
    if result.timed_out:
        done = pages_written(out, run.model)
        row.update(status="timeout", error=_("stopped at its time cap of {cap} s; {done} pages were written").format(
            cap=round(cap_s), done=done))
        row["pages_ok"] = done
    elif bench_row is None:
        row.update(status="crashed", error=_("exit code {code}, no bench.json: {tail}").format(
            code=result.returncode, tail=log_tail(log)))
    if bench_row is not None:
        engine = bench_row.get("engine") or {}
        pages = bench_row.get("pages") or {}
        row.update(
            status=row["status"] or ("ok" if bench_row["status"] == "ok" and not pages.get("failed") else
                                     bench_row["status"] if bench_row["status"] != "ok" else "pages failed"),
            error=row["error"] or bench_row.get("error") or _failed_pages_reason(bench_row),
            pages_total=pages.get("total"), pages_ok=pages.get("ok"), pages_failed=pages.get("failed"),
            pages_per_s=bench_row.get("pages_per_s"), output_tokens_per_s=bench_row.get("output_tokens_per_s"),
            time_to_first_page_s=bench_row.get("time_to_first_page_s"),
            peak_gpu_memory_gb=bench_row.get("peak_gpu_memory_gb"), load_s=bench_row.get("load_s"),
            decode_path=engine.get("decode"), decode_reason=engine.get("decode_reason"),
            continuous=engine.get("decode_continuous"), continuous_reason=engine.get("decode_continuous_reason"),
            batch_size=_batch_used(run, engine), attention=bench_row.get("attention"),
            dtype=bench_row.get("dtype"), bench_json=str(out / "bench.json"))
        roof = bench_row.get("roofline") or {}
        row.update(roofline_limit_s=roof.get("limit_s"), percent_of_limit=roof.get("percent_of_limit"),
                   decode_bound=roof.get("decode_bound"))
        if roof.get("peaks"):
            row["peaks"] = roof["peaks"]
        row["engine"] = {k: v for k, v in engine.items() if k.startswith(("decode", "auto_batch", "estimated"))}
        row["hardware"] = report.get("hardware")
    return row


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


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
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
        "qwen_vl_2b_speedup_over_generate": speedup,
        "qwen_vl_2b_percent_of_limit": fast.get("percent_of_limit") if fast else None,
    }


COLUMNS = (
    ("run", N_("run")), ("status", N_("status")), ("pages", N_("pages ok/total")), ("batch_size", N_("batch")),
    ("pages_per_s", N_("pages/s")), ("output_tokens_per_s", N_("tokens/s")),
    ("time_to_first_page_s", N_("first page s")), ("peak_gpu_memory_gb", N_("peak GPU GB")),
    ("decode_path", N_("decode path")), ("percent_of_limit", N_("% of limit")), ("wall_s", N_("wall s")),
)


def render_markdown(report: dict[str, Any]) -> str:
    host = report.get("host") or {}
    hw = report.get("hardware") or {}
    versions = {**(host.get("versions") or {}), **{k: v for k, v in (hw.get("versions") or {}).items() if v}}
    settings = report["settings"]
    lines = [f"### {report['title']}", "",
             _("Date: {date}. GPU: {gpu} ({memory}, driver {driver}, CUDA {cuda}). torch {torch}, transformers {tf}, "
               "Python {py}; chatvlm {commit}.").format(
                 date=report["started"], gpu=hw.get("gpu") or host.get("gpu") or _("none"),
                 memory=host.get("gpu_memory") or "?", driver=host.get("driver") or "?", cuda=hw.get("cuda") or "?",
                 torch=versions.get("torch") or "?", tf=versions.get("transformers") or "?",
                 py=hw.get("python") or host.get("python"), commit=host.get("commit") or "?"),
             _("Synthetic weights (random, real architecture), {tokens} tokens per page, {pages} pages of {w}x{h} px "
               "per run ({slow} for {heavy}; batch 1: {b1}); device {device}.").format(
                 tokens=settings["tokens"], pages=settings["pages"], w=settings["page_size"][0],
                 h=settings["page_size"][1], slow=settings["heavy_pages"], heavy=", ".join(settings.get("heavy_models") or []),
                 b1=settings["batch1_pages"], device=settings["device"]), ""]
    lines.append("| " + " | ".join(_(h) for _k, h in COLUMNS) + " |")
    lines.append("|" + "|".join(":---" if k in ("run", "status", "decode_path") else "---:" for k, _h in COLUMNS) + "|")
    notes = []
    for row in report["runs"]:
        cells = []
        for key, _h in COLUMNS:
            if key == "batch_size" and row.get("batch_size") is None:
                cells.append(row.get("batch_option") or "–")      # auto without a probe (no GPU)
            elif key == "pages":
                cells.append("–" if row.get("pages_ok") is None else f"{row['pages_ok']}/{row.get('pages_total') or '?'}")
            elif key == "decode_path" and row.get("continuous"):
                cells.append(f"{row['decode_path']} + continuous")   # rows refilled as pages finish
            elif key == "status" and row["status"] != "ok":
                notes.append(row)
                cells.append(f"{row['status']} [{len(notes)}]")
            else:
                cells.append(_num(row.get(key)))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
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
        if row.get("decode_reason") and row["status"] == "ok":
            lines.append(f"- {row['run']}: decode {row['decode_path']}: {row['decode_reason']}")
        if row.get("continuous_reason") and row["status"] == "ok":
            lines.append(f"- {row['run']}: continuous batching off: {row['continuous_reason']}")
    for number, row in enumerate(notes, start=1):
        lines.append(f"- [{number}] {row['run']}: {row['error']}")
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    from .writers import atomic_write_text

    atomic_write_text(out / GPU_CHECK_JSON, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(out / GPU_CHECK_MD, render_markdown(report))
