"""The bench table: on the terminal (rich), as markdown (bench.md), and bench.json on disk.

Everything here reads the report as bench.json holds it (plain dicts), so a report loaded
back from disk renders the same as one fresh from a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..i18n import _
from ..writers import atomic_write_text
from .config import BENCH_JSON, BENCH_MD


def table_columns(synthetic: bool) -> list[tuple[str, str]]:
    """(key, header) for each column; accuracy columns only when weights were real."""
    cols = [
        ("model", _("model")), ("status", _("status")), ("load_s", _("load s")),
        ("time_to_first_page_s", _("1st page s")), ("pages_per_s", _("pages/s")),
        ("output_tokens_per_s", _("tokens/s")), ("page_latency_p50_s", _("p50 s")),
        ("page_latency_p90_s", _("p90 s")), ("peak_gpu_memory_gb", _("GPU GB")),
        ("attention", _("attn")), ("dtype", _("dtype")),
        ("failed_looped_truncated", _("fail/loop/trunc")),
        ("roofline_limit_s", _("limit s/page")), ("roofline_percent", _("% of limit")),
    ]
    if synthetic:
        cols.insert(6, ("output_tokens_per_page", _("tokens/page")))
    else:
        cols += [("cer", "CER"), ("wer", "WER"), ("rules", _("rules"))]
    return cols


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    cols = table_columns(report.get("synthetic", False))
    failed = [row for row in report["models"] if row["status"] != "ok"]
    rows = []
    for row in report["models"]:
        cells = [_cell(row, key) for key, _header in cols]
        if row["status"] != "ok":   # the reason goes in a numbered note under the table
            cells[1] = f"{row['status']} [{failed.index(row) + 1}]"
        rows.append(cells)
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "status":
        return row["status"]
    if key == "failed_looped_truncated":
        if row["status"] != "ok":
            return "–"
        p = row["pages"]
        return f"{p['failed']}/{p['looped']}/{p['truncated']} " + _("of {n}").format(n=p["total"])
    if key in ("roofline_limit_s", "roofline_percent"):
        roof = row.get("roofline") or {}
        value = roof.get("limit_s" if key == "roofline_limit_s" else "percent_of_limit")
        if value is None:
            return "–"
        return f"{value:.3g}" if key == "roofline_limit_s" else f"{value:.1f}%"
    acc = row.get("accuracy") or {}
    if key in ("cer", "wer"):
        value = acc.get(key)
        return "–" if value is None else f"{value * 100:.1f}%"
    if key == "rules":
        total = acc.get("rules_passed", 0) + acc.get("rules_failed", 0)
        if not total:
            return "–"
        return f"{acc['rules_passed']}/{total} ({acc['rules_pass_rate'] * 100:.0f}%)"
    value = row.get(key)
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table_notes(report: dict[str, Any]) -> list[str]:
    """One line per model that did not run: "[n] model: why"."""
    failed = [row for row in report["models"] if row["status"] != "ok"]
    return [f"[{n}] {row['model']}: {row['error']}" for n, row in enumerate(failed, start=1)]


def render_table(report: dict[str, Any], width: int = 200):
    """The bench table for a terminal `width` columns wide.

    One row per model when it fits; on a narrow terminal the table is turned round (one
    row per figure, one column per model), which stays readable at 80 columns.
    """
    from rich.table import Table

    columns = table_columns(report.get("synthetic", False))
    rows = table_rows(report)
    wide_enough = sum(max(len(h), *(len(r[i]) for r in rows)) + 3 for i, (_k, h) in enumerate(columns)) <= width if rows else True
    table = Table(title=report["title"], title_justify="left")
    if wide_enough:
        for key, header in columns:
            table.add_column(header, justify="left" if key in ("model", "status", "attention", "dtype") else "right",
                             overflow="fold")
        for cells in rows:
            table.add_row(*cells)
    else:
        table.add_column("", style="bold", no_wrap=True)
        for cells in rows:
            table.add_column(cells[0], justify="right", overflow="fold")
        for i, (_key, header) in enumerate(columns[1:], start=1):
            table.add_row(header, *(cells[i] for cells in rows))
    hw = report.get("hardware") or {}
    peaks = [_("roofline {device} {dtype}: matmul {tflops} TFLOP/s, memory {gb_s} GB/s").format(
        device=c.get("device_name") or c.get("device"), dtype=c.get("dtype"), tflops=f"{c['matmul_tflops']:.3g}",
        gb_s=f"{c['bandwidth_gb_s']:.4g}") for c in report.get("peaks") or []]
    table.caption = "\n".join([_hardware_line(hw)] + peaks + table_notes(report))
    table.caption_justify = "left"
    return table


def _hardware_line(hw: dict[str, Any]) -> str:
    versions = hw.get("versions") or {}
    parts = [hw.get("gpu") or _("no GPU"), f"{hw.get('cpu')} ({hw.get('cpu_cores')} " + _("cores") + ")"]
    parts += [f"{k} {v}" for k, v in versions.items() if v and k in ("torch", "transformers")]
    return ", ".join(str(p) for p in parts if p)


def render_markdown(report: dict[str, Any]) -> str:
    cols = table_columns(report.get("synthetic", False))
    lines = [f"### {report['title']}", ""]
    lines.append("| " + " | ".join(h for _k, h in cols) + " |")
    lines.append("|" + "|".join(":---" if k in ("model", "status", "attention", "dtype") else "---:" for k, _h in cols) + "|")
    for cells in table_rows(report):
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    notes = table_notes(report)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += ["", _hardware_line(report.get("hardware") or {}) + ".",
              _("Pages: {n} per model and repeat; warm-up page excluded from pages/s and latency; "
                "1st page s = load + one cold page; pages/s counts pages recognised without error.").format(n=_pages_per_run(report))]
    lines += [_peaks_line(card) for card in report.get("peaks") or []]
    return "\n".join(lines + [""])


def _peaks_line(card: dict[str, Any]) -> str:
    return _("Roofline on {device} ({dtype}): matmul {tflops} TFLOP/s, memory {gb_s} GB/s, measured in this run; "
             "limit s/page = prefill at the FLOP limit + decode steps at the slower of the FLOP and bandwidth "
             "limits for the run's batch; % of limit = limit / measured seconds per page.").format(
        device=card.get("device_name") or card.get("device"), dtype=card.get("dtype"),
        tflops=f"{card['matmul_tflops']:.3g}", gb_s=f"{card['bandwidth_gb_s']:.4g}")


def _pages_per_run(report: dict[str, Any]) -> str:
    counts = {len([d for d in row.get("pages_detail", []) if d["repeat"] == 1 and d["page"] is not None])
              for row in report["models"] if row["status"] == "ok"}
    return "/".join(str(c) for c in sorted(counts)) or "0"


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    atomic_write_text(out / BENCH_JSON, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(out / BENCH_MD, render_markdown(report))
