"""One run: inputs -> pages -> backend -> files, manifest and report.

The CLI and the Python API both call `run()`. Nothing here prints: progress and
messages go through a `Reporter`, so the CLI can draw a rich progress bar and tests
can watch the events.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import RunConfig
from .errors import EXIT_ABORTED, EXIT_OK, EXIT_PAGES_FAILED, ChatVLMError, OutputError, UsageError
from .i18n import _
from .interrupt import Interrupted
from .out_lock import OutputLock
from .paths import path_text
from .page_steps import postprocess_page, recognise_batch, record_times, write_result
from .records import Page, PageResult, Reporter
from .registry import ModelSpec, all_specs, get_spec
from .scheduler import Job, bucketed_windows, rendered_pages, split_to_size
from .sources import plan_pages
from .timing import RunStats
from .writers import REPORT, Manifest, atomic_write_text, manifest_entry, options_hash


@dataclass
class RunOutcome:
    exit_code: int
    report: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)   # manifest entries of this run


# --------------------------------------------------------------------------- model choice

def resolve_model(name: str, reporter: Reporter, model_path: Optional[Path] = None, task: Optional[str] = None) -> ModelSpec:
    """`auto` = the best VLM whose weights are already here, else tesseract (with a hint).

    With `task` (e.g. "layout"), only models that can do that task are candidates.
    """
    if name != "auto":
        return get_spec(name)
    from .weights import weights_available

    ranked = sorted((s for s in all_specs() if s.auto_rank is not None and (task is None or task in s.tasks)),
                    key=lambda s: s.auto_rank)
    if model_path is not None:
        raise ChatVLMError(_("--model-path needs --model NAME (which model is in that folder?)"))
    for spec in ranked:
        if spec.repo_id and weights_available(spec):
            return spec
    best = next((s for s in ranked if s.repo_id), None)
    if best is not None:
        reporter.message(_("no VLM weights found locally; using tesseract. For better accuracy: --model {name} (downloads {gb} GB)").format(
            name=best.name, gb=best.download_gb), "hint")
    return get_spec("tesseract")


def check_model_options(spec: ModelSpec, keys) -> None:
    """-O KEY=VALUE keys must be ones the chosen model's backend declares (a typo is a usage error)."""
    if not keys:
        return
    known = spec.backend_class().option_keys
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise UsageError(_("unknown model option {keys} for {model}; it takes: {known}").format(
            keys=", ".join(f"'{k}'" for k in unknown), model=spec.name, known=", ".join(sorted(known)) or _("none")))


# --------------------------------------------------------------------------- the run

def run(config: RunConfig, reporter: Optional[Reporter] = None, backend=None) -> RunOutcome:
    """Run `config` to the end. Raises ChatVLMError only when nothing could run, OutputError
    when OUT stops taking files, and Interrupted (a KeyboardInterrupt whose `.outcome` holds
    the report of the pages done) when stopped by Ctrl-C or SIGTERM."""
    reporter = reporter or Reporter()
    spec = backend.spec if backend is not None else resolve_model(
        config.model, reporter, config.backend.model_path, task="layout" if config.command == "layout" else None)
    check_model_options(spec, config.model_options)
    out = config.out
    lock = _open_output(out)
    try:
        return _run_locked(config, reporter, backend, spec)
    finally:
        lock.release()


def _open_output(out: Path) -> OutputLock:
    """Create OUT and take its lock: the first write, so an unwritable OUT fails here, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return OutputLock(out).acquire()
    except (FileExistsError, NotADirectoryError):
        raise OutputError(_("cannot write to {path}: it is a file, not a folder").format(path=out)) from None
    except OSError as exc:
        raise OutputError(_("cannot write to {path}: {reason}").format(path=out, reason=exc.strerror or exc)) from None


def _run_locked(config: RunConfig, reporter: Reporter, backend, spec: ModelSpec) -> RunOutcome:
    out = config.out
    manifest = Manifest(out)
    opts = options_hash(config.options_key())
    stats = RunStats(model=spec.name)
    results: list[dict[str, Any]] = []
    owned = None
    cluster: dict[str, Any] = {}   # with --ray: workers, their pages/s, retries

    def finish_page(result: PageResult) -> None:
        entry = manifest_entry(result, opts)
        manifest.append(entry)
        results.append(entry)
        stats.record(result.status, result.timings, result.finish_reason, result.input_tokens,
                     result.output_tokens, result.repaired)
        reporter.advance(result)

    # Plan: open every input (hash, page count) before loading the model, so bad files
    # are reported at once and the progress bar knows the total.
    failed_files: list[Page] = []
    jobs: list[Job] = []
    skipped: list[Page] = []
    # Sources keep the output folders earlier runs gave them; the output folder is never input.
    for page, doc in plan_pages(config.inputs, config.pages, config.max_image_pixels,
                                reserved=manifest.doc_keys(), exclude=(out,)):
        if config.max_pages is not None and len(jobs) + len(skipped) >= config.max_pages:
            break
        if doc is None:
            failed_files.append(page)
            continue
        if not config.force and manifest.is_done(page.source, page.page, doc.sha256, spec.name, opts):
            skipped.append(page)
            continue
        jobs.append(Job(page=page, render=_renderer(doc, page.page, config)))
    for index, job in enumerate(jobs):
        job.page.index = index
    if not (jobs or failed_files or skipped):
        manifest.close()
        if config.pages:
            raise UsageError(_("nothing to do: --pages {pages} selects no page of the inputs").format(pages=config.pages))
        raise UsageError(_("nothing to do: no PDF or image found in the inputs"))
    if skipped and not (jobs or failed_files):
        reporter.message(_("all {n} pages were done by an earlier run (see {manifest}); --force redoes them").format(
            n=len(skipped), manifest=manifest.path), "hint")

    reporter.start(len(jobs) + len(failed_files) + len(skipped), spec.name)
    completed = False
    stopped: Optional[BaseException] = None
    engine: dict[str, Any] = {}
    try:
        for page in failed_files:
            reporter.message(_("{path}: {reason}").format(path=path_text(page.source), reason=page.error), "error")
            finish_page(PageResult.failed(page, spec.name, page.error or "unreadable"))
        for page in skipped:
            previous = manifest.previous(page.source, page.page)
            result = PageResult(page=page, model=spec.name, status="skipped", outputs=previous.get("outputs", []),
                                finish_reason=previous.get("finish_reason"), input_tokens=previous.get("input_tokens"),
                                output_tokens=previous.get("output_tokens"), empty=bool(previous.get("empty")))
            finish_page(result)

        if jobs and config.ray is not None and backend is None:
            # Pages go to model workers on a Ray cluster; results come back here and are
            # written by finish_page exactly as below, in input order.
            from .distributed import recognise_on_ray
            engine, cluster = recognise_on_ray(config, spec, jobs, stats, finish_page, reporter)
        elif jobs:
            if backend is None:
                from .backends.base import create_backend
                # A backend made here is closed here (GPU memory, worker processes);
                # one handed in belongs to the caller (bench, the Python API).
                owned = backend = create_backend(spec, config.backend)
                load_start = time.perf_counter()
                backend.load()   # ModelUnavailableError propagates: nothing can run
                stats.load_s = backend.load_s or (time.perf_counter() - load_start)
            _recognise_all(config, spec, backend, jobs, stats, finish_page, reporter)
            engine = backend.describe()
        completed = True
    except (KeyboardInterrupt, OutputError) as exc:
        # Ctrl-C, SIGTERM or an output folder that stopped taking files: what is written
        # stays (its manifest lines are on disk), the rest is redone by the next run.
        stopped = exc
    finally:
        manifest.close()
        if not (completed or stopped):
            reporter.finish()   # the run broke off: the error propagates from here
        if owned is not None:
            owned.close()

    report = stats.report(engine, extra={
        "command": config.command,
        "task": config.task,
        "formats": list(config.formats),
        "dpi": config.dpi,
        "inputs": [path_text(arg) for arg in config.inputs],
        "out": path_text(out),
        **({"cluster": cluster} if cluster else {}),
    })
    if stopped is not None:
        report["stopped"] = str(stopped) if isinstance(stopped, OutputError) else "interrupted"
    try:
        atomic_write_text(out / REPORT, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    except OutputError:
        if stopped is None:
            reporter.finish()
            raise
    # The progress bar ends on the report's own numbers (pages/s, skipped pages).
    reporter.summary(report)
    reporter.finish()
    code = EXIT_PAGES_FAILED if stats.failed else EXIT_OK
    outcome = RunOutcome(exit_code=code, report=report, results=results)
    if isinstance(stopped, OutputError):
        written = sum(1 for entry in results if entry["status"] == "ok")
        error = OutputError(_("{reason}; {n} page(s) written before are kept: make room (or fix the folder) and rerun the same command to resume").format(
            reason=stopped, n=written) if written else str(stopped))
        error.exit_code = EXIT_PAGES_FAILED if written else EXIT_ABORTED
        raise error
    if stopped is not None:
        if not isinstance(stopped, Interrupted):
            stopped = Interrupted()
        stopped.outcome = outcome
        raise stopped
    return outcome


def _renderer(doc, number: int, config: RunConfig):
    return lambda: doc.render(number, config.dpi, config.max_image_pixels)


def _recognise_all(config: RunConfig, spec: ModelSpec, backend, jobs: list[Job], stats: RunStats,
                   finish_page, reporter: Reporter) -> None:
    params = config.generation
    state = {"batch_size": backend.default_batch_size(params)}

    def shrink(size: int) -> None:
        if size < state["batch_size"]:
            state["batch_size"] = size
            reporter.message(_("out of memory: batch size lowered to {n}").format(n=size), "warning")

    if _recognise_streaming(config, spec, backend, jobs, stats, finish_page, reporter, shrink):
        return

    # GPU batches are bucketed by cost across a window of 4 batches (less padding); a CPU
    # engine pads nothing, so its window is one batch and fewer pages wait in memory.
    window_batches = 4 if backend.uses_gpu else 1
    pages = rendered_pages(jobs, prefetch=max(config.prefetch, state["batch_size"] * (window_batches + 1)))

    def window_batches_of(groups: list[list[Page]]) -> list[list[Page]]:
        good = [group for group in groups if not (len(group) == 1 and not group[0].ok)]
        if backend.decode_slots():
            # A continuous decoder takes the whole window (its buckets side by side) and
            # refills its rows from it: short pages do not wait for a batch's longest one.
            return [[page for group in good for page in group]] if good else []
        # A size learnt from an out-of-memory error after this window was cut applies at once.
        return [batch for group in good for batch in split_to_size(group, state["batch_size"])]

    def recognise_groups(groups: list[list[Page]]) -> dict[int, Any]:
        outputs: dict[int, Any] = {}
        for batch in window_batches_of(groups):
            raws, elapsed = recognise_batch(config, backend, batch, shrink)
            stats.gpu_busy_s += elapsed
            stats.batches += 1
            for page, raw in zip(batch, raws):
                outputs[id(page)] = raw
        return outputs

    # Postprocessing and writing run in one writer thread, in input order, while the next
    # batches are recognised; at most two windows wait for it, so memory stays bounded.
    # A CPU engine's batch ends with its slowest page while the other workers idle, so two
    # batches run at once there (the engine's own worker pool is shared); a GPU runs one.
    stop = threading.Event()
    windows = bucketed_windows(pages, lambda: state["batch_size"], backend.page_cost, window_batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer, \
            ThreadPoolExecutor(max_workers=1 if backend.uses_gpu else 2, thread_name_prefix="batch") as runner:
        pending: deque[Future] = deque()
        try:
            for window, groups in windows:
                if backend.uses_gpu:
                    outputs: Any = recognise_groups(groups)
                else:
                    outputs = runner.submit(recognise_groups, groups)
                pending.append(writer.submit(_write_window, config, spec, backend, window, outputs, finish_page, reporter, stop))
                while len(pending) > 2:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        except BaseException as exc:
            _abandon(exc, stop, backend, executors=(writer, runner), sources=(windows, pages))
            raise


def _abandon(exc: BaseException, stop: threading.Event, backend, *, executors, sources) -> None:
    """Stop a run now: the writer finishes the page it is on and takes no more; queued work
    is dropped; on an interrupt the engine's work in flight is abandoned; the page sources
    (renderers, the engine's stream) are closed."""
    stop.set()
    for executor in executors:
        executor.shutdown(wait=False, cancel_futures=True)
    if isinstance(exc, KeyboardInterrupt):
        backend.abort()
    for source in sources:
        source.close()


def _recognise_streaming(config: RunConfig, spec: ModelSpec, backend, jobs: list[Job], stats: RunStats,
                         finish_page, reporter: Reporter, shrink) -> bool:
    """Pages straight from the renderer into one continuous engine, finished pages to the
    writer as they finish, written in input order. False where the backend does not
    stream (no continuous slots, e.g. Tesseract or -O decode_slots=0): nothing is done then.

    Memory stays bounded: the pages alive are at most the engine's rows (in flight) +
    `prefetch` (rendered ahead) + the writer's backlog (finished, waiting for an earlier
    page or for the writer); while that backlog is full the engine takes no new page
    (`hold`), and the pages it holds go on decoding."""
    slots = backend.decode_slots()
    if not slots:
        return False
    position = {id(job.page): i for i, job in enumerate(jobs)}
    backlog = 4 * slots
    stop = threading.Event()
    progress = threading.Condition()
    counts = {"handed": 0, "written": 0}
    futures: deque[Future] = deque()
    order = _InOrder(lambda page, raw: _write_one(config, spec, backend, page, raw, finish_page, reporter),
                     position, stop, progress, counts)

    def check_writer() -> None:
        """The writer's first failure (an output folder that stopped taking files) stops the run."""
        while futures and futures[0].done():
            futures.popleft().result()

    def hand(page: Page, raw) -> None:
        counts["handed"] += 1
        futures.append(writer.submit(order.add, page, raw))

    def good_pages():
        for page in pages:
            if page.ok:
                yield page
            else:
                hand(page, None)      # unrenderable: it fails in its place

    def hold(idle: bool) -> bool:
        # True keeps new pages out while the writer's backlog is full; with the engine idle,
        # wait for the writer instead (it holds every page still out, so it will catch up).
        with progress:
            while counts["handed"] - counts["written"] >= backlog:
                if not idle:
                    return True
                check_writer()
                progress.wait(0.1)
        check_writer()
        return False

    def fallback(batch: list[Page]) -> list:
        raws, _elapsed = recognise_batch(config, backend, batch, shrink)
        return raws

    pages = rendered_pages(jobs, prefetch=max(config.prefetch, slots))
    stream = backend.generate_stream(good_pages(), config.task, config.generation, on_shrink=shrink,
                                     fallback=fallback, hold=hold)
    if stream is None:
        pages.close()
        return False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
        try:
            for page, raw in stream:
                record_times(page, raw)      # its own times (a batch-path page has them already)
                hand(page, raw)
                check_writer()
            while futures:
                futures.popleft().result()
        except BaseException as exc:
            _abandon(exc, stop, backend, executors=(writer,), sources=(stream, pages))
            raise
        finally:
            stats.gpu_busy_s += stream.busy_s
            stats.batches += stream.groups
    return True


class _InOrder:
    """The reorder buffer (run in the writer thread): pages come in any order and are
    written in input order; a page is written once every earlier page is (a page that
    could not be rendered counts once it is handed in, as a failed one)."""

    def __init__(self, write, position: dict[int, int], stop: threading.Event,
                 progress: threading.Condition, counts: dict[str, int]):
        self.write, self.position, self.stop = write, position, stop
        self.progress, self.counts = progress, counts
        self.next = 0
        self.waiting: dict[int, tuple[Page, Any]] = {}

    def add(self, page: Page, raw) -> None:
        self.waiting[self.position.pop(id(page))] = (page, raw)
        while self.next in self.waiting and not self.stop.is_set():
            self.write(*self.waiting.pop(self.next))
            self.next += 1
            with self.progress:
                self.counts["written"] += 1
                self.progress.notify_all()


def _write_one(config: RunConfig, spec: ModelSpec, backend, page: Page, raw, finish_page, reporter: Reporter) -> None:
    if not page.ok:
        reporter.message(_("{path} page {page}: {reason}").format(path=path_text(page.source), page=page.page, reason=page.error), "error")
        finish_page(PageResult.failed(page, spec.name, page.error or "unreadable"))
    else:
        finish_page(_finish(config, spec, backend, page, raw, reporter))
    page.image = None   # the page is done: free its pixels


def _write_window(config: RunConfig, spec: ModelSpec, backend, window: list[Page], outputs,
                  finish_page, reporter: Reporter, stop: threading.Event) -> None:
    """Results go to the writers in input order, whatever order the buckets ran in."""
    if isinstance(outputs, Future):
        outputs = outputs.result()
    for page in window:
        if stop.is_set():
            return
        _write_one(config, spec, backend, page, outputs.get(id(page)), finish_page, reporter)


def _finish(config: RunConfig, spec: ModelSpec, backend, page: Page, raw, reporter: Reporter) -> PageResult:
    return write_result(config, spec, postprocess_page(config, spec, backend, page, raw, reporter), reporter)
