"""Stopwatches and the run report (report.json and the table on stdout)."""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from .records import STAGES


@contextmanager
def stopwatch(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def percentile(values: list[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class RunStats:
    """Collects what the report needs while a run goes on."""

    model: str
    started: float = field(default_factory=time.perf_counter)
    load_s: float = 0.0
    first_page_s: Optional[float] = None
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    looped: int = 0
    truncated: int = 0
    repaired: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    stage_values: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    page_latency: list[float] = field(default_factory=list)
    # Time the recogniser worked: inside generate_batch, or inside the page stream (its
    # waits for rendered pages left out); batches: generate_batch calls, or the stream's
    # prepare groups (pages admitted together) and batch-path batches.
    gpu_busy_s: float = 0.0
    batches: int = 0

    def record(self, status: str, timings: dict[str, float], finish_reason: Optional[str] = None,
               input_tokens: Optional[int] = None, output_tokens: Optional[int] = None,
               repaired: bool = False) -> None:
        if status == "ok":
            self.ok += 1
        elif status == "skipped":
            self.skipped += 1
            return
        else:
            self.failed += 1
        if self.first_page_s is None and status == "ok":
            self.first_page_s = time.perf_counter() - self.started
        for stage in STAGES:
            if stage in timings:
                self.stage_values[stage].append(timings[stage])
        if status == "ok":
            self.page_latency.append(sum(timings.get(s, 0.0) for s in STAGES))
        self.looped += finish_reason == "loop"
        self.truncated += finish_reason == "length"
        self.repaired += bool(repaired)
        self.input_tokens += input_tokens or 0
        self.output_tokens += output_tokens or 0

    def report(self, engine: dict[str, Any], extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        processed = self.ok + self.failed
        # Throughput counts pages recognised without error: files that could not even be
        # opened cost no recognition time and must not inflate it.
        run_s = max(wall - self.load_s, 1e-9)
        stages = {}
        for stage, values in self.stage_values.items():
            stages[stage] = {
                "total_s": round(sum(values), 4),
                "p50_s": _r(percentile(values, 50)),
                "p90_s": _r(percentile(values, 90)),
            }
        report = {
            "model": self.model,
            "engine": engine,
            "host": {"machine": platform.machine(), "python": platform.python_version(), "node": platform.node()},
            "pages": {"ok": self.ok, "failed": self.failed, "skipped": self.skipped,
                      "looped": self.looped, "truncated": self.truncated, "repaired": self.repaired},
            "wall_s": round(wall, 3),
            "model_load_s": round(self.load_s, 3),
            "time_to_first_page_s": _r(self.first_page_s),
            "pages_per_s": round(self.ok / run_s, 4) if self.ok else 0.0,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": round(self.output_tokens / self.gpu_busy_s, 2) if self.gpu_busy_s and self.output_tokens else None,
            "page_latency_p50_s": _r(percentile(self.page_latency, 50)),
            "page_latency_p90_s": _r(percentile(self.page_latency, 90)),
            "batches": self.batches,
            "recognise_busy_s": round(self.gpu_busy_s, 3),
            "recognise_idle_fraction": round(max(0.0, 1 - self.gpu_busy_s / run_s), 4) if processed else None,
            "stages": stages,
        }
        if extra:
            report.update(extra)
        return report


def _r(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)
