"""Running a bench: each model loaded, warmed up, run over the pages, scored; one row each.

For each selected model, one at a time: load it (timed), run one warm-up page (not in
the throughput figures), then run the real pipeline (`pipeline.run`, with the loaded
backend) over the same pages `--repeats` times, writing each model's per-page outputs
under OUT/<model>/. A model that cannot load or crashes becomes a row saying why; the
others still run. GPU memory is freed between models. bench.json and bench.md are
rewritten after every model, so a later crash keeps what ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..config import RunConfig
from ..errors import EXIT_ABORTED, EXIT_OK, EXIT_PAGES_FAILED, ChatVLMError, UsageError
from ..i18n import _
from ..records import Reporter
from ..records import PageResult
from ..registry import ModelSpec, get_spec
from ..writers import atomic_write_text
from .accuracy import PageRecord, accuracy_over_repeats
from .config import LAYOUTS, BenchConfig, BenchOutcome
from .hardware import cuda_in_use, free_memory, hardware_info, peak_memory_gb, preimport, reset_peak_memory
from .report import write_outputs
from .row import BenchRow
from .selection import synthetic_config, unavailable_reason


class _Capture(Reporter):
    """Forwards events to the user's reporter and keeps each page's result."""

    def __init__(self, inner: Reporter):
        self.inner = inner
        self.records: list[PageRecord] = []

    def start(self, total: int, model: str) -> None:
        self.inner.start(total, model)

    def advance(self, result: PageResult) -> None:
        self.records.append(PageRecord.of(result))
        self.inner.advance(result)

    def message(self, text: str, level: str = "info") -> None:
        self.inner.message(text, level)

    def summary(self, report: dict[str, Any]) -> None:
        self.inner.summary(report)

    def finish(self) -> None:
        self.inner.finish()

    def workers(self, rows: list[dict[str, Any]]) -> None:
        self.inner.workers(rows)


def run_bench(config: BenchConfig, models: list[str], reporter: Optional[Reporter] = None) -> BenchOutcome:
    """Bench every model in `models` over the same pages; write bench.json and bench.md."""
    reporter = reporter or Reporter()
    if config.repeats < 1:
        raise UsageError(_("--repeats must be at least 1"))
    if config.layout is not None and config.layout not in LAYOUTS:
        raise UsageError(_("--layout must be one of: {known}").format(known=", ".join(LAYOUTS)))
    if config.synthetic and (config.tokens < 1 or (config.tokens_max is not None and config.tokens_max < config.tokens)):
        raise UsageError(_("--tokens must be at least 1 (a range A-B needs A <= B)"))
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    warmup_page = _first_page(config.base) if config.warmup and config.base.ray is None else None
    report: dict[str, Any] = {
        "title": bench_title(config.synthetic, config.tokens_label),
        "synthetic": config.synthetic,
        "tokens_per_page": (config.tokens if config.token_range is None else config.tokens_label) if config.synthetic else None,
        "tokens_range": list(config.token_range) if config.synthetic and config.token_range else None,
        "seed": config.seed if config.synthetic and config.token_range else None,
        "command_line": config.command_line if config.command_line is not None else sys.argv,
        "inputs": list(config.base.inputs),
        "options": {"pages": config.base.pages, "max_pages": config.base.max_pages, "dpi": config.base.dpi,
                    "repeats": config.repeats, "layout": config.layout, "ignore_case": config.ignore_case,
                    "warmup": config.warmup,
                    "batch_size": config.base.generation.batch_size,
                    "max_new_tokens": (config.tokens_max or config.tokens) if config.synthetic else config.base.generation.max_new_tokens,
                    "max_pixels": config.base.generation.max_pixels, "device": config.base.backend.device,
                    "dtype": config.base.backend.dtype, "attn": config.base.backend.attn,
                    "lang": config.base.backend.lang, "model_options": dict(config.base.backend.extra)},
        "warmup_page": ({"source": str(warmup_page.source), "page": warmup_page.page} if warmup_page else None),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "peaks": [],
        "models": [],
    }
    neural = [name for name in models if get_spec(name).repo_id]
    if neural:
        preimport()   # library import time is not model load time
    if config.roofline and warmup_page is not None and neural and cuda_in_use(config):
        # The card's limits before any model: its buffers then never count in a model's peak memory.
        _measure_card(config, get_spec(neural[0]), report["peaks"], reporter)
    rows: list[BenchRow] = []
    with _cluster(config.base.ray):   # one cluster connection for every model
        for name in models:
            reporter.message(_("benchmarking {name}").format(name=name), "info")
            row = bench_model(config, name, warmup_page, reporter, report["peaks"])
            rows.append(row)
            report["models"].append(row.to_dict())
            if not row.ok:
                reporter.message(_("{name}: {reason}").format(name=name, reason=row.error), "error")
            report["hardware"] = hardware_info()
            write_outputs(out, report)   # after each model: a later crash keeps what ran
    if not models:
        report["hardware"] = hardware_info()
        write_outputs(out, report)
    if rows and not any(row.ok for row in rows):
        code = EXIT_ABORTED
    elif any(not row.ok or row.pages.failed for row in rows):
        code = EXIT_PAGES_FAILED
    else:
        code = EXIT_OK
    return BenchOutcome(exit_code=code, report=report)


def _cluster(address: Optional[str]):
    if address is None:
        return contextlib.nullcontext()
    from ..distributed import ray_session
    return ray_session(address)


def bench_title(synthetic: bool, tokens) -> str:
    if synthetic:
        return _("chatvlm bench (synthetic: RANDOM weights, {n} tokens per page; only the speed figures are meaningful)").format(n=tokens)
    return _("chatvlm bench")


def _first_page(base: RunConfig):
    """The first readable page of the inputs, for the warm-up (rendered once, reused per model)."""
    from ..sources import iter_pages

    for page in iter_pages(base.inputs, base.pages, base.dpi, base.max_image_pixels):
        if page.ok and page.image is not None:
            return page
    return None


def _model_config(config: BenchConfig, spec: ModelSpec, repeat: int) -> RunConfig:
    base = config.base
    model_out = config.out / spec.name
    if config.repeats > 1:
        model_out = model_out / f"repeat{repeat}"
    backend = dataclasses.replace(base.backend, model_path=config.model_paths.get(spec.name),
                                  synthetic=config.synthetic, extra=dict(base.backend.extra))
    generation = dataclasses.replace(base.generation)
    if config.synthetic:
        generation.max_new_tokens = config.tokens_max or config.tokens
        generation.loop_guard = False
        if config.token_range:
            backend.extra["synthetic_tokens"] = [*config.token_range, config.seed]
    task = base.task if base.task in spec.tasks else ("markdown" if "markdown" in spec.tasks else spec.tasks[0])
    return dataclasses.replace(base, out=model_out, model=spec.name, task=task, force=True, command="bench",
                               backend=backend, generation=generation)


def bench_model(config: BenchConfig, name: str, warmup_page, reporter: Reporter,
                peaks: Optional[list[dict[str, Any]]] = None) -> BenchRow:
    """One model: load, warm up, run the pages, score; every failure becomes the row's reason.

    `peaks`: the card's limits measured so far in this run (one entry per device and dtype;
    a model on a new one measures and appends)."""
    row = BenchRow(model=name)
    counts = card = None
    spec = get_spec(name)
    reason = unavailable_reason(config, spec)
    if reason is not None:
        return row.fail("unavailable", reason)
    backend = None
    on_ray = config.base.ray is not None
    cuda = not on_ray and cuda_in_use(config)
    try:
        # On a cluster the workers load the model; the runs' reports carry the load time.
        if not on_ray:
            if cuda:
                reset_peak_memory()
            first = _model_config(config, spec, 1)
            if config.synthetic:
                first.backend.extra["config"] = synthetic_config(config, spec)
            try:
                from ..backends.base import create_backend
                backend = create_backend(spec, first.backend)
            except ImportError as exc:
                return row.fail("unavailable", _("not available yet: {reason}").format(reason=exc))
            t0 = time.perf_counter()
            backend.load()
            row.load_s = round(backend.load_s or (time.perf_counter() - t0), 4)
            cuda = cuda or cuda_in_use(config, backend)
            if warmup_page is not None:
                counts, card = _warm_up(config, backend, warmup_page, first, row, reporter, peaks)
        records_by_repeat = _timed_runs(config, spec, backend, row, reporter)
        engine = (backend.describe() if backend is not None else row.runs[0]["report"].get("engine")) or {}
        row.engine = engine
        row.outputs = str(config.out / spec.name)
        row.fill_speed(records_by_repeat, engine)
        if counts is not None and card is not None:
            from ..roofline import roofline_row
            per_run = max(1, row.pages.total // config.repeats)
            batch = min(per_run, engine.get("auto_batch_size") or config.base.generation.batch_size or 1)
            row.roofline = roofline_row(counts, card, batch, row.output_tokens_per_page, row.pages_per_s)
        if not config.synthetic:
            row.accuracy = accuracy_over_repeats(records_by_repeat, config.ignore_case)
    except Exception as exc:   # a model's failure is its row, never the end of the bench
        from ..errors import ModelUnavailableError
        row.fail("unavailable" if isinstance(exc, ModelUnavailableError) else "failed", _describe_failure(exc))
    finally:
        if cuda:
            row.peak_gpu_memory_gb = peak_memory_gb()
        if backend is not None:
            try:
                backend.close()
            except Exception as exc:
                reporter.message(_("{name}: close failed: {reason}").format(name=name, reason=exc), "warning")
        backend = None
        free_memory()
    return row


def _warm_up(config: BenchConfig, backend, warmup_page, run_config: RunConfig, row: BenchRow,
             reporter: Reporter, peaks: Optional[list[dict[str, Any]]]):
    """One cold page (time to first page), then the roofline counts on it: (counts, card) or (None, None)."""
    page = dataclasses.replace(warmup_page, timings={})
    params, task = run_config.generation, run_config.task
    t1 = time.perf_counter()
    raw = backend.generate_batch([page], task, params)
    row.warmup_s = round(time.perf_counter() - t1, 4)
    row.time_to_first_page_s = round(row.load_s + row.warmup_s, 4)
    if raw and getattr(raw[0], "error", None):
        reporter.message(_("{name}: warm-up page failed: {reason}").format(name=row.model, reason=raw[0].error), "warning")
        return None, None
    if not config.roofline:
        return None, None
    return _roofline_counts(backend, page, task, params, peaks if peaks is not None else [], row, reporter)


def _timed_runs(config: BenchConfig, spec: ModelSpec, backend, row: BenchRow, reporter: Reporter) -> list[list[PageRecord]]:
    """The pipeline over the pages, `repeats` times, with the loaded backend (or on the cluster)."""
    from .. import pipeline

    records_by_repeat: list[list[PageRecord]] = []
    for repeat in range(1, config.repeats + 1):
        run_config = _model_config(config, spec, repeat)
        if config.base.ray is not None and config.synthetic:
            run_config.backend.extra["config"] = synthetic_config(config, spec)
        capture = _Capture(reporter)
        outcome = pipeline.run(run_config, capture, backend=backend)
        if backend is None:
            row.load_s = row.load_s if row.load_s is not None else outcome.report["model_load_s"]
            row.cluster = outcome.report.get("cluster")
        records_by_repeat.append(capture.records)
        row.runs.append({"repeat": repeat, "out": str(run_config.out), "report": outcome.report})
        if config.layout == "olmocr-bench":
            _write_olmocr_layout(config.out / spec.name, capture.records, repeat)
    return records_by_repeat


def _measure_card(config: BenchConfig, spec: ModelSpec, peaks: list[dict[str, Any]], reporter: Reporter) -> None:
    from .. import roofline
    from ..devices import choose_dtype

    try:
        device = config.base.backend.device or "cuda"
        card = roofline.measure_peaks(device, choose_dtype(spec, config.base.backend, device))
        card["device"] = device
        peaks.append(card)
    except Exception as exc:
        reporter.message(_("roofline: the card's limits could not be measured: {reason}").format(reason=exc), "warning")
    finally:
        free_memory()


def _roofline_counts(backend, page, task: str, params, peaks: list[dict[str, Any]], row: BenchRow,
                     reporter: Reporter):
    """The warm-up page's FLOP and byte counts, and the card's limits for this model's device
    and dtype (measured on first need). A failure here is a note in the row, never the row's end."""
    from .. import roofline

    try:
        counts = roofline.count_page(backend, page, task, params)
        if counts is None:
            return None, None
        device = str(getattr(backend, "device", "cpu"))
        dtype = getattr(backend, "dtype", None)
        dtype_name = str(dtype).replace("torch.", "") if device.startswith("cuda") and dtype is not None else "float32"
        card = next((p for p in peaks if p["device"] == device and p["dtype"] == dtype_name), None)
        if card is None:
            card = roofline.measure_peaks(device, dtype)
            card["device"] = device
            peaks.append(card)
        return counts, card
    except Exception as exc:
        row.roofline = {"error": f"{exc.__class__.__name__}: {exc}"[:300]}
        reporter.message(_("{name}: roofline not measured: {reason}").format(name=row.model, reason=exc), "warning")
        return None, None


def _describe_failure(exc: BaseException) -> str:
    from ..scheduler import is_out_of_memory
    if isinstance(exc, ChatVLMError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    prefix = _("out of memory") + ": " if is_out_of_memory(exc) else ""
    return f"{prefix}{exc.__class__.__name__}: {text}"[:500]


def _write_olmocr_layout(folder: Path, records: list[PageRecord], repeat: int) -> None:
    """<doc>_pg<N>_repeat<K>.md per page, as the olmOCR-bench scorer reads a candidate folder.
    A failed page gets an empty file, so the scorer counts it as failing, not as missing."""
    for rec in records:
        if rec.page is None:
            continue
        text = (rec.markdown if rec.markdown is not None else rec.text or "") if rec.status == "ok" else ""
        atomic_write_text(folder / f"{rec.doc_key}_pg{rec.page}_repeat{repeat}.md", text)


