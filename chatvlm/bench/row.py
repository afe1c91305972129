"""One model's row of the bench: what it measured, typed; `to_dict` is bench.json's form."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..timing import percentile
from .accuracy import PageRecord


@dataclass
class PageCounts:
    total: int = 0              # pages recognised or failed (an unreadable file is not a page)
    ok: int = 0
    failed: int = 0
    looped: int = 0             # stopped by the loop guard
    truncated: int = 0          # stopped at max_new_tokens
    unreadable_inputs: int = 0


@dataclass
class BenchRow:
    """A model's figures. status "ok" | "failed" | "unavailable"; `error` says why when not ok."""

    model: str
    status: str = "ok"
    error: Optional[str] = None
    engine: dict[str, Any] = field(default_factory=dict)     # the backend's describe()
    device: Optional[str] = None
    dtype: Optional[str] = None
    attention: Optional[str] = None
    load_s: Optional[float] = None
    warmup_s: Optional[float] = None
    time_to_first_page_s: Optional[float] = None             # load + one cold page
    pages: PageCounts = field(default_factory=PageCounts)
    pages_per_s: Optional[float] = None                      # pages recognised without error / wall seconds
    input_tokens: int = 0
    output_tokens: int = 0
    output_tokens_per_s: Optional[float] = None
    output_tokens_per_page: Optional[float] = None
    page_latency_p50_s: Optional[float] = None
    page_latency_p90_s: Optional[float] = None
    peak_gpu_memory_gb: Optional[float] = None
    accuracy: Optional[dict[str, Any]] = None                # accuracy.accuracy_over_repeats
    roofline: Optional[dict[str, Any]] = None                # roofline.roofline_row, or {"error": ...}
    runs: list[dict[str, Any]] = field(default_factory=list)  # {"repeat", "out", "report"} per repeat
    outputs: Optional[str] = None                            # the folder of the model's page files
    pages_detail: list[dict[str, Any]] = field(default_factory=list)
    cluster: Optional[dict[str, Any]] = None                 # on a Ray cluster: its description

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, status: str, reason: str) -> "BenchRow":
        self.status, self.error = status, reason
        return self

    def to_dict(self) -> dict[str, Any]:
        """bench.json's row (the keys report readers and gpucheck rely on)."""
        out = dataclasses.asdict(self)
        if out["cluster"] is None:
            del out["cluster"]
        return out

    def fill_speed(self, records_by_repeat: list[list[PageRecord]], engine: dict[str, Any]) -> None:
        """Page counts, throughput and latency from the pages of every repeat."""
        every = [r for recs in records_by_repeat for r in recs]
        records = [r for r in every if r.page is not None]   # an unreadable file is not a page
        self.pages = PageCounts(
            total=len(records), ok=sum(r.status == "ok" for r in records),
            failed=sum(r.status == "error" for r in records),
            looped=sum(r.finish_reason == "loop" for r in records),
            truncated=sum(r.finish_reason == "length" for r in records),
            unreadable_inputs=len(every) - len(records))
        reports = [run["report"] for run in self.runs]
        wall = sum(rep.get("wall_s") or 0.0 for rep in reports)
        busy = sum(rep.get("recognise_busy_s") or 0.0 for rep in reports)
        ok = self.pages.ok
        # pages recognised per second of the timed runs (a page that failed is not throughput)
        self.pages_per_s = round(ok / wall, 4) if wall and ok else None
        self.input_tokens = sum(rep.get("input_tokens") or 0 for rep in reports)
        self.output_tokens = sum(r.output_tokens or 0 for r in records)
        self.output_tokens_per_s = round(self.output_tokens / busy, 2) if busy and self.output_tokens else None
        ok_tokens = [r.output_tokens for r in records if r.status == "ok" and r.output_tokens is not None]
        self.output_tokens_per_page = round(sum(ok_tokens) / len(ok_tokens), 2) if ok_tokens else None
        latencies = [r.latency_s for r in records if r.latency_s is not None]
        self.page_latency_p50_s = rounded(percentile(latencies, 50))
        self.page_latency_p90_s = rounded(percentile(latencies, 90))
        self.device, self.dtype, self.attention = engine.get("device"), engine.get("dtype"), engine.get("attention")
        if engine.get("peak_gpu_memory_bytes"):
            self.peak_gpu_memory_gb = round(engine["peak_gpu_memory_bytes"] / 1e9, 3)
        self.pages_detail = [
            {"repeat": k, "source": r.source, "page": r.page, "status": r.status, "error": r.error,
             "finish_reason": r.finish_reason, "output_tokens": r.output_tokens, "latency_s": rounded(r.latency_s)}
            for k, recs in enumerate(records_by_repeat, start=1) for r in recs]


def rounded(value: Optional[float], digits: int = 4) -> Optional[float]:
    return None if value is None else round(value, digits)
