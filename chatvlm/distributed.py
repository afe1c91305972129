"""Recognising a run's pages on a Ray cluster (`--ray [ADDRESS]`).

The driver (this process) plans the run exactly as on one machine: it opens every input
for its hash and page count, never for pixels, and consults the manifest for resume. Pages
then travel to model workers as small records (the Page, its file's absolute path; the
render settings are in the run config each worker holds). A worker is a Ray actor that
loads the model once, renders and preprocesses the pages it receives, recognises them in
batches and postprocesses them; the results (PageResult records, pixels dropped) come back
here, where the pipeline's own writer writes files and manifest lines in input order. So
the files, the manifest and resume are the single-machine ones, and the manifest has one
writer whatever the cluster's size.

One worker per GPU (or per `--gpus-per-worker` share of one); CPU engines (tesseract,
or any model on a cluster without GPUs) get one worker per CPU. A worker that dies has its
pages sent again to the others while Ray restarts it; a page whose worker dies under it
MAX_ATTEMPTS times, alone in its batch, is recorded as failed with the reason.

Ray is an optional extra, imported only here and only when --ray is given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from .config import RunConfig
from .errors import ChatVLMError, ModelUnavailableError, UsageError
from .i18n import _, current_language, set_language
from .page_steps import postprocess_page, recognise_batch, write_result
from .records import Page, PageResult
from .registry import ModelSpec

MAX_ATTEMPTS = 3           # deaths of a page's worker, with the page alone in its batch, before it is failed
IN_FLIGHT_PER_WORKER = 2   # batches queued at each worker, so it never waits for the driver
MAX_RESTARTS = 4           # Ray restarts a dead worker this often before it is given up
OPEN_DOCUMENTS = 8         # documents a worker keeps open (hash and page count read once)
PING_TRIES = 3             # failed ready() calls in a row before a dead worker is given up
WORKER_ROWS_EVERY_S = 1.0  # how often the progress display gets fresh per-worker figures


def require_ray():
    """The ray module, or a usage error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(_("--ray needs Ray, which is not installed here: pip install 'chatvlm[ray]'")) from None
    return ray


@contextmanager
def ray_session(address: Optional[str]) -> Iterator[Any]:
    """Connected to the cluster for the duration; a cluster started here is stopped here.

    "local" (or nothing) starts a local cluster for the run; "auto" joins the cluster this
    machine belongs to (`ray start`); "ray://host:10001" goes through the Ray client; "host:port"
    joins the cluster whose head listens there. Already connected (the Python API, tests,
    bench's runs of several models): that connection is used and left open.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or "local"
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address == "local":
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:
        raise ChatVLMError(_("cannot connect to the Ray cluster at {address}: {reason}").format(
            address=address, reason=f"{exc.__class__.__name__}: {exc}")) from None
    try:
        yield ray
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- the worker

class _Collector:
    """A Reporter for a worker: keeps the messages, which the driver shows."""

    def __init__(self):
        self.messages: list[tuple[str, str]] = []

    def message(self, text: str, level: str = "info") -> None:
        self.messages.append((text, level))


class PageWorker:
    """One model, loaded once; renders, recognises and postprocesses the pages it is sent.

    Runs as a Ray actor. A load failure is kept and reported by ready(), not raised: Ray
    would restart an actor whose constructor fails, and a missing checkpoint stays missing.
    """

    def __init__(self, spec: ModelSpec, config: RunConfig, language: str):
        from .backends.base import create_backend

        set_language(language)   # messages in the driver's interface language
        self.config = config
        self.spec = spec
        self.documents: OrderedDict[str, Any] = OrderedDict()
        self.load_error: Optional[str] = None
        self.load_s = 0.0
        options = dataclasses.replace(config.backend, extra=dict(config.backend.extra))
        if not spec.backend_class().uses_gpu:
            options.extra["workers"] = 1   # parallelism comes from one worker per CPU
        if options.device and options.device.startswith("cuda:"):
            options.device = "cuda"        # Ray gives each worker its own GPU as cuda:0
        start = time.perf_counter()
        self.backend = create_backend(spec, options)
        try:
            self.backend.load()
        except Exception as exc:
            self.load_error = str(exc) if isinstance(exc, ChatVLMError) else f"{exc.__class__.__name__}: {exc}"
        self.load_s = self.backend.load_s or (time.perf_counter() - start)
        self.batch_size = self.backend.default_batch_size(config.generation) if self.load_error is None else 1

    def ready(self) -> dict[str, Any]:
        return {"node": platform.node(), "pid": os.getpid(), "load_s": self.load_s, "error": self.load_error,
                "batch_size": self.batch_size, "engine": self.backend.describe() if self.load_error is None else {}}

    def recognise(self, tasks: list[tuple[Page, str]]) -> dict[str, Any]:
        from .scheduler import Job, rendered_pages

        collector = _Collector()
        jobs = [Job(page=page, render=self._renderer(page, path)) for page, path in tasks]
        pages = list(rendered_pages(jobs, prefetch=len(jobs)))
        state = {"size": self.batch_size}

        def shrink(size: int) -> None:
            if size < state["size"]:
                state["size"] = self.batch_size = size
                collector.message(_("out of memory: batch size lowered to {n}").format(n=size), "warning")

        # Similar pages together, as the single-machine run does, so little is padded.
        good = sorted((p for p in pages if p.ok), key=self.backend.page_cost)
        outputs: dict[int, Any] = {}
        busy = 0.0
        batches = 0
        while good:
            batch, good = good[:state["size"]], good[state["size"]:]
            raws, elapsed = recognise_batch(self.config, self.backend, batch, shrink)
            busy += elapsed
            batches += 1
            outputs.update((id(page), raw) for page, raw in zip(batch, raws))
        results = []
        for page in pages:
            if page.ok:
                result = postprocess_page(self.config, self.spec, self.backend, page, outputs[id(page)], collector)
            else:
                collector.message(_("{path} page {page}: {reason}").format(path=page.source, page=page.page, reason=page.error), "error")
                result = PageResult.failed(page, self.spec.name, page.error or "unreadable")
            page.image = None   # pixels stay here; crops and overlays travel in result.images
            results.append(result)
        return {"results": results, "messages": collector.messages, "busy_s": busy, "batches": batches}

    def _renderer(self, page: Page, path: str):
        def render():
            from .errors import InputError
            from .sources import open_document

            doc = self.documents.get(path)
            if doc is None:
                doc = open_document(Path(path), page.doc_key, self.config.max_image_pixels)
                self.documents[path] = doc
                while len(self.documents) > OPEN_DOCUMENTS:
                    self.documents.popitem(last=False)
            self.documents.move_to_end(path)
            if doc.sha256 != page.sha256:
                raise InputError(_("the file changed while the run was going on; run again to redo it"))
            return doc.render(page.page, self.config.dpi, self.config.max_image_pixels)
        return render


# --------------------------------------------------------------------------- the driver

@dataclasses.dataclass
class _Worker:
    name: str
    actor: Any
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    in_flight: int = 0
    healthy: bool = False
    ping: Any = None               # a ready() call while the worker starts or Ray restarts it
    pages: int = 0
    busy_s: float = 0.0
    restarts: int = 0
    started: float = 0.0
    ping_failures: int = 0
    blamed: int = -1               # the call this worker died on (see _batch_failed)

    def row(self, now: float) -> dict[str, Any]:
        span = max(now - self.started, 1e-9) if self.started else 0.0
        return {"worker": self.name, "node": self.info.get("node"), "pid": self.info.get("pid"),
                "device": (self.info.get("engine") or {}).get("device"), "pages": self.pages,
                "pages_per_s": round(self.pages / span, 4) if span else 0.0, "busy_s": round(self.busy_s, 3),
                "restarts": self.restarts, "alive": self.healthy}


def plan_workers(ray, config: RunConfig, spec: ModelSpec) -> tuple[int, dict[str, Any]]:
    """How many model workers, and the resources of each."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    wanted = config.workers or config.backend.extra.get("workers")
    if spec.backend_class().uses_gpu and gpus > 0 and config.backend.device != "cpu":
        share = config.gpus_per_worker
        count = int(wanted or max(1, int(gpus / share + 1e-9)))
        return count, {"num_gpus": share, "num_cpus": 1}
    return int(wanted or max(1, int(resources.get("CPU", 1)))), {"num_cpus": 1}


def recognise_on_ray(config: RunConfig, spec: ModelSpec, jobs, stats, finish_page, reporter) -> tuple[dict, dict]:
    """Recognise `jobs` on the cluster; finish_page gets every page, in input order.

    Returns the engine facts (of the first worker) and the cluster section of the report.
    """
    with ray_session(config.ray) as ray:
        dispatcher = _Dispatcher(ray, config, spec, jobs, stats, finish_page, reporter)
        try:
            dispatcher.start_workers()
            dispatcher.run()
        finally:
            dispatcher.stop_workers()
        return dispatcher.engine, dispatcher.cluster_report()


class _Dispatcher:
    def __init__(self, ray, config: RunConfig, spec: ModelSpec, jobs, stats, finish_page, reporter):
        self.ray = ray
        self.config = config
        self.spec = spec
        self.pages: list[Page] = [job.page for job in jobs]
        self.stats = stats
        self.finish_page = finish_page
        self.reporter = reporter
        self.workers: list[_Worker] = []
        self.engine: dict[str, Any] = {}
        self.attempts = [0] * len(self.pages)
        self.retried = 0
        self.last_rows = 0.0
        self.batch_size = 1

    # ------------------------------------------------------------------ workers
    def start_workers(self) -> None:
        """Start every worker; return once one has its model loaded.

        The others join as they become ready: a cluster that fits fewer workers than asked
        for (or a node that is slow to start) does not hold the run back.
        """
        count, resources = plan_workers(self.ray, self.config, self.spec)
        remote = self.ray.remote(PageWorker).options(max_restarts=MAX_RESTARTS, max_task_retries=0, **resources)
        language = current_language()
        start = time.perf_counter()
        for i in range(count):
            actor = remote.remote(self.spec, self.config, language)
            self.workers.append(_Worker(name=f"w{i + 1}", actor=actor, ping=actor.ready.remote()))
        while not any(w.healthy for w in self.workers):
            pings = {w.ping: w for w in self.workers if w.ping is not None}
            if not pings:
                raise ModelUnavailableError(_("every Ray worker has died; pages written so far are kept, run again to resume"))
            ready, _pending = self.ray.wait(list(pings), num_returns=1)
            for ref in ready:
                self._pinged(pings[ref], ref, starting=True)
        # Workers load in parallel: the run waited this long for its first model.
        self.stats.load_s = time.perf_counter() - start
        first = next(w for w in self.workers if w.healthy)
        self.engine = dict(first.info["engine"] or {})
        self.batch_size = first.info["batch_size"]
        self.reporter.workers(self.worker_rows())

    def stop_workers(self) -> None:
        for worker in self.workers:
            try:
                self.ray.kill(worker.actor)
            except Exception:
                pass   # already gone

    def worker_rows(self) -> list[dict[str, Any]]:
        now = time.perf_counter()
        return [w.row(now) for w in self.workers]

    def cluster_report(self) -> dict[str, Any]:
        try:
            nodes = sum(1 for node in self.ray.nodes() if node.get("Alive"))
        except Exception:
            nodes = None
        return {"address": self.config.ray, "nodes": nodes, "gpus_per_worker": self.config.gpus_per_worker,
                "retried_pages": self.retried, "workers": self.worker_rows()}

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        ray = self.ray
        queue: deque[list[int]] = deque()
        # A worker's own batch size, but small enough that a short run still reaches every worker.
        spread = -(-len(self.pages) // (len(self.workers) * IN_FLIGHT_PER_WORKER))
        size = max(1, min(self.batch_size, spread))
        indices = list(range(len(self.pages)))
        queue.extend(indices[i:i + size] for i in range(0, len(indices), size))
        in_flight: dict[Any, tuple[_Worker, list[int], int]] = {}   # call -> worker, page indices, when sent
        done: dict[int, PageResult] = {}
        next_page = 0
        sent = 0
        # Results wait here until every page before them is written; a worker stuck on an
        # early batch (restarting, slow node) must not let the others fill memory meanwhile.
        ahead = max(256, size * len(self.workers) * IN_FLIGHT_PER_WORKER * 4)
        while next_page < len(self.pages):
            for worker in self.workers:
                while (worker.healthy and worker.in_flight < IN_FLIGHT_PER_WORKER and queue
                       and queue[0][0] < next_page + ahead):
                    batch = queue.popleft()
                    tasks = [(self.pages[i], str(Path(self.pages[i].source).resolve())) for i in batch]
                    in_flight[worker.actor.recognise.remote(tasks)] = (worker, batch, sent)
                    worker.in_flight += 1
                    sent += 1
            pings = {w.ping: w for w in self.workers if w.ping is not None}
            if not in_flight and not pings:
                raise ModelUnavailableError(_("every Ray worker has died; pages written so far are kept, run again to resume"))
            ready, _pending = ray.wait(list(in_flight) + list(pings), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in pings:
                    self._pinged(pings[ref], ref)
                    continue
                worker, batch, seq = in_flight.pop(ref)
                worker.in_flight -= 1
                try:
                    outcome = ray.get(ref)
                except Exception as exc:
                    self._batch_failed(worker, batch, seq, exc, queue, done, in_flight)
                    continue
                self._batch_done(worker, batch, outcome, done)
            while next_page in done:
                result = done.pop(next_page)
                self.finish_page(write_result(self.config, self.spec, result, self.reporter))
                next_page += 1
            now = time.perf_counter()
            if now - self.last_rows >= WORKER_ROWS_EVERY_S:
                self.last_rows = now
                self.reporter.workers(self.worker_rows())
        # Report worker busy time as the average worker's, so the idle fraction reads per worker.
        self.stats.gpu_busy_s = sum(w.busy_s for w in self.workers) / max(1, len(self.workers))
        self.reporter.workers(self.worker_rows())

    def _batch_done(self, worker: _Worker, batch: list[int], outcome: dict[str, Any], done: dict[int, PageResult]) -> None:
        for text, level in outcome["messages"]:
            self.reporter.message(text, level)
        for index, result in zip(batch, outcome["results"]):
            done[index] = result
        worker.pages += len(batch)
        worker.busy_s += outcome["busy_s"]
        self.stats.batches += outcome["batches"]

    def _batch_failed(self, worker: _Worker, batch: list[int], seq: int, exc: BaseException, queue: deque,
                      done: dict[int, PageResult], in_flight: dict) -> None:
        """Send the batch again (first to whichever worker is free); a page that keeps
        killing its worker ends up alone, and after MAX_ATTEMPTS is recorded as failed."""
        reason = _describe(exc)
        if isinstance(exc, self.ray.exceptions.RayActorError):
            reason = _("its worker process died ({kind})").format(kind=exc.__class__.__name__)
        blamed = True
        if isinstance(exc, self.ray.exceptions.RayActorError):
            if worker.healthy:
                # A worker runs its batches one after another, so the oldest one it held is
                # the one it died on; the batches queued behind it never ran and are not blamed.
                worker.healthy = False
                worker.blamed = min([seq] + [s for w, _b, s in in_flight.values() if w is worker])
                worker.ping = worker.actor.ready.remote()
                self.reporter.message(_("Ray worker {name} on {node} stopped ({reason}); its pages are sent again").format(
                    name=worker.name, node=worker.info.get("node"), reason=reason), "warning")
            blamed = seq == worker.blamed
        if not blamed:
            self.retried += len(batch)
            queue.appendleft(batch)
            return
        for index in batch:
            self.attempts[index] += 1
        if len(batch) == 1 and self.attempts[batch[0]] >= MAX_ATTEMPTS:
            page = self.pages[batch[0]]
            message = _("recognition failed {n} times on the cluster: {reason}").format(n=self.attempts[batch[0]], reason=reason)
            self.reporter.message(_("{path} page {page}: {reason}").format(path=page.source, page=page.page, reason=message), "error")
            done[batch[0]] = PageResult.failed(page, self.spec.name, message)
            return
        self.retried += len(batch)
        if len(batch) > 1 and any(self.attempts[i] >= 2 for i in batch):
            queue.extendleft([i] for i in reversed(batch))   # alone now, so one bad page costs only itself
        else:
            queue.appendleft(batch)

    def _pinged(self, worker: _Worker, ref, starting: bool = False) -> None:
        """A worker answered ready() after its start or a restart (or failed to)."""
        worker.ping = None
        try:
            info = self.ray.get(ref)
        except Exception as exc:
            # A call sent just as the worker died can reach the dead process and fail while
            # Ray restarts it: ask again before giving the worker up.
            worker.ping_failures += 1
            if worker.ping_failures < PING_TRIES:
                worker.ping = worker.actor.ready.remote()
                return
            if starting and not any(w.ping is not None or w.healthy for w in self.workers):
                raise ModelUnavailableError(_("Ray workers could not start: {reason}").format(reason=_describe(exc))) from None
            self.reporter.message(_("Ray worker {name} is gone ({reason})").format(name=worker.name, reason=_describe(exc)), "warning")
            return
        if info.get("error"):
            if starting:
                raise ModelUnavailableError(info["error"])   # a missing model is missing on every worker
            self.reporter.message(_("Ray worker {name} is gone ({reason})").format(name=worker.name, reason=info["error"]), "warning")
            return
        worker.ping_failures = 0
        if worker.started:
            worker.restarts += 1
        else:
            worker.started = time.perf_counter()
        worker.info, worker.healthy = info, True


def _describe(exc: BaseException) -> str:
    """The first line of a Ray error, which otherwise carries a whole remote traceback."""
    text = str(exc).strip().splitlines()
    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, type(exc)):
        return f"{cause.__class__.__name__}: {cause}".splitlines()[0]
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"
