"""Terminal output: the progress bar (stderr), messages that do not tear it, the report table (stdout)."""

from __future__ import annotations

import time
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .i18n import N_, _
from .paths import path_text
from .records import PageResult, Reporter

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)

VERBOSITY = {"level": 1}   # 0 quiet, 1 normal, 2 verbose

# Report stage names (records.STAGES), for the catalogue; print_report translates them.
STAGE_NAMES = (N_("render"), N_("preprocess"), N_("recognise"), N_("postprocess"), N_("write"))


class PagesPerSecond(ProgressColumn):
    """Pages recognised per second, as the report counts them; pages skipped apart.

    Rich's own speed counts every advance over a short window, so pages skipped as done
    (hundreds in a second) or a batch written at once made it many times the real rate.
    """

    def render(self, task) -> Text:
        speed = task.fields.get("pages_per_s")
        text = f"{speed:.2f} " + _("pages/s") if speed else "– " + _("pages/s")
        skipped = task.fields.get("skipped")
        if skipped:
            text += ", " + _("{n} skipped").format(n=skipped)
        return Text(text, style="progress.data.speed")


class RichReporter(Reporter):
    """Progress bar on stderr; messages printed above it through the same console."""

    def __init__(self, console: Console = stderr, show_progress: bool = True):
        self.console = console
        self.progress: Optional[Progress] = None
        self.task = None
        self.show_progress = show_progress and VERBOSITY["level"] > 0
        self.started = time.perf_counter()
        self.ok = 0
        self.skipped = 0

    def start(self, total: int, model: str) -> None:
        if not self.show_progress:
            return
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(_("pages")), PagesPerSecond(), TextColumn(_("ETA")), TimeRemainingColumn(),
            TextColumn("{task.fields[cluster]}", style="progress.data.speed"),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(model, total=total, pages_per_s=None, skipped=0, cluster="")
        self.started = time.perf_counter()

    def advance(self, result: PageResult) -> None:
        self.ok += result.status == "ok"
        self.skipped += result.status == "skipped"
        if self.progress is not None:
            # Until the report says better: recognised pages over the time since the start.
            elapsed = time.perf_counter() - self.started
            self.progress.update(self.task, advance=1, skipped=self.skipped,
                                 pages_per_s=self.ok / elapsed if self.ok and elapsed > 0 else None)
        if VERBOSITY["level"] >= 2 and result.status == "ok":
            self.message(_("{path} page {page}: {status} ({reason})").format(
                path=path_text(result.page.source), page=result.page.page, status=result.status, reason=result.finish_reason), "info")

    def workers(self, rows: list[dict[str, Any]]) -> None:
        """Cluster runs: how many workers are alive, and each one's pages/s, beside the bar."""
        if self.progress is None:
            return
        alive = [r for r in rows if r.get("alive")]
        rates = " ".join(f"{r['pages_per_s']:.2f}" for r in alive)
        self.progress.update(self.task, cluster=_("{n} workers: {rates}").format(n=len(alive), rates=rates))

    def message(self, text: str, level: str = "info") -> None:
        if VERBOSITY["level"] == 0 and level not in ("error",):
            return
        if level == "info" and VERBOSITY["level"] < 2:
            return
        style = {"error": "red", "warning": "yellow", "hint": "cyan"}.get(level, "")
        prefix = {"error": _("error"), "warning": _("warning"), "hint": _("hint")}.get(level, "")
        line = Text(f"{prefix}: " if prefix else "", style=f"bold {style}".strip())
        line.append(text, style=style)
        # Through the progress console, so the bar is redrawn below the message, not torn.
        (self.progress.console if self.progress is not None else self.console).print(line)

    def summary(self, report: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, pages_per_s=report.get("pages_per_s") or None,
                                 skipped=report["pages"]["skipped"])

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}{unit}" if value < 10 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def print_report(report: dict[str, Any], console: Console = stdout) -> None:
    if VERBOSITY["level"] == 0:
        return
    engine = report.get("engine") or {}
    pages = report["pages"]
    summary = Table(title=_("chatvlm report"), show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    engine_desc = ", ".join(f"{k}={v}" for k, v in engine.items() if v not in (None, "", {}))
    rows = [
        (_("model"), report["model"]),
        (_("engine"), engine_desc or "–"),
        (_("pages ok / failed / skipped"), f"{pages['ok']} / {pages['failed']} / {pages['skipped']}"),
        (_("looped / truncated / repaired"), f"{pages['looped']} / {pages['truncated']} / {pages['repaired']}"),
        (_("wall time"), _fmt(report["wall_s"], " " + _("s"))),
        (_("model load"), _fmt(report["model_load_s"], " " + _("s"))),
        (_("time to first page"), _fmt(report["time_to_first_page_s"], " " + _("s"))),
        (_("pages/s"), _fmt(report["pages_per_s"])),
    ]
    if report.get("output_tokens"):
        rows.append((_("output tokens/s"), _fmt(report.get("output_tokens_per_s"))))
    if engine.get("peak_gpu_memory_gb") is not None:
        rows.append((_("peak GPU memory"), _fmt(engine.get("peak_gpu_memory_gb"), " " + _("GB"))))
    for key, value in rows:
        summary.add_row(key, str(value))
    console.print(summary)
    stages = Table(title=_("per-stage seconds"), title_justify="left")
    for col in (_("stage"), _("total"), "p50", "p90"):
        stages.add_column(col, justify="right" if col != _("stage") else "left")
    for stage, values in report["stages"].items():
        stages.add_row(_(stage), _fmt(values["total_s"]), _fmt(values["p50_s"]), _fmt(values["p90_s"]))
    console.print(stages)
    cluster = report.get("cluster")
    if cluster:
        _print_workers(cluster, report, console)


def _print_workers(cluster: dict[str, Any], report: dict[str, Any], console: Console) -> None:
    table = Table(title=_("Ray workers (nodes: {nodes}; pages sent again: {retried}; {total} pages/s in all)").format(
        nodes=_fmt(cluster.get("nodes")), retried=cluster.get("retried_pages", 0), total=_fmt(report.get("pages_per_s"))),
        title_justify="left")
    for col in (_("worker"), _("node"), _("device"), _("pages"), _("pages/s"), _("restarts")):
        table.add_column(col, justify="left" if col in (_("worker"), _("node"), _("device")) else "right")
    for row in cluster.get("workers", []):
        table.add_row(row["worker"], str(row.get("node") or "–"), str(row.get("device") or "–"), str(row["pages"]),
                      _fmt(row["pages_per_s"]), str(row["restarts"]) + ("" if row.get("alive") else " †"))
    console.print(table)
