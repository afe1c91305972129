"""Terminal output: the progress bar (stderr), messages that do not tear it, the report table (stdout)."""

from __future__ import annotations

import time
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .i18n import N_, _
from .pipeline import Reporter
from .records import PageResult

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)

VERBOSITY = {"level": 1}   # 0 quiet, 1 normal, 2 verbose

# Report stage names (records.STAGES), for the catalogue; print_report translates them.
STAGE_NAMES = (N_("render"), N_("preprocess"), N_("recognise"), N_("postprocess"), N_("write"))


class PagesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} " + _("pages/s") if speed else "– " + _("pages/s"), style="progress.data.speed")


class RichReporter(Reporter):
    """Progress bar on stderr; messages printed above it through the same console."""

    def __init__(self, console: Console = stderr, show_progress: bool = True):
        self.console = console
        self.progress: Optional[Progress] = None
        self.task = None
        self.show_progress = show_progress and VERBOSITY["level"] > 0

    def start(self, total: int, model: str) -> None:
        if not self.show_progress:
            return
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(_("pages")), PagesPerSecond(), TextColumn(_("ETA")), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(model, total=total)

    def advance(self, result: PageResult) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)
        if VERBOSITY["level"] >= 2 and result.status == "ok":
            self.message(_("{path} page {page}: {status} ({reason})").format(
                path=result.page.source, page=result.page.page, status=result.status, reason=result.finish_reason), "info")

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
