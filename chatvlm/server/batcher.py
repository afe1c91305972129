"""One queue for every HTTP request, one worker thread for the device.

Requests from many clients wait here; the worker takes as many waiting pages of the same
task as fit in one batch and recognises them together through the Python API
(`Model.recognize`, i.e. the backend's `generate_batch`), then hands each request its own
pages back. Only the worker touches the model, so the device is never shared between
threads. The queue is bounded by pages waiting: when full, `submit` refuses at once (the
HTTP layer answers 503 with Retry-After) instead of letting memory and latency grow.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from ..api import Model, RecognitionError
from ..errors import ChatVLMError
from ..i18n import _

logger = logging.getLogger("chatvlm.server")


class QueueFull(Exception):
    """The queue holds as many pages as it may; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class PageOutcome:
    """One page of a request: a result, or the reason it failed."""

    result: Any = None              # PageResult
    error: Optional[str] = None
    queue_s: float = 0.0            # time spent waiting for the device
    recognise_s: float = 0.0        # time of the batch the page was recognised in


@dataclass
class Work:
    """A request's pages (task "text" | "markdown" | "layout"), or one page and a question (task "ask")."""

    task: str
    images: list
    question: str = ""
    history: list = field(default_factory=list)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, model: Model, queue_pages: int = 64, batch_size: Optional[int] = None, wait_s: float = 0.02):
        self.model = model
        self.queue_pages = max(1, queue_pages)
        self.batch_size = max(1, batch_size or model.backend.default_batch_size(model.params))
        self.wait_s = wait_s
        self._jobs: deque[Work] = deque()
        self._waiting_pages = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._seconds_per_page = 1.0   # running estimate, for Retry-After
        self.batches_run = 0

    # ----------------------------------------------------------------- life cycle
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="chatvlm-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand, fail what still waits, end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            while self._jobs:
                job = self._jobs.popleft()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("server shutting down"))
            self._waiting_pages = 0

    # ----------------------------------------------------------------- clients
    @property
    def waiting_pages(self) -> int:
        with self._cond:
            return self._waiting_pages

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough to take a request."""
        estimate = self._seconds_per_page * max(1, self._waiting_pages)
        return int(min(600, max(1, math.ceil(estimate))))

    def submit(self, work: Work) -> concurrent.futures.Future:
        """Queue `work`; raises QueueFull when it does not fit. A request bigger than the
        whole queue is still taken when nothing else waits, so it can always run."""
        pages = len(work.images)
        with self._cond:
            if self._stopping:
                raise QueueFull(self.retry_after())
            if self._waiting_pages and self._waiting_pages + pages > self.queue_pages:
                raise QueueFull(self.retry_after())
            work.queued_at = time.monotonic()
            self._jobs.append(work)
            self._waiting_pages += pages
            self._cond.notify_all()
        return work.future

    # ----------------------------------------------------------------- the worker
    def _take_batch(self) -> Optional[list[Work]]:
        """The oldest request plus every waiting request of the same task that fits in one
        batch; waits up to `wait_s` for more to arrive while the batch is not full."""
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait(0.5)
            first = self._jobs.popleft()
            batch, pages = [first], len(first.images)
            if first.task != "ask":
                deadline = time.monotonic() + self.wait_s
                while pages < self.batch_size:
                    for job in list(self._jobs):
                        if job.task == first.task and pages + len(job.images) <= self.batch_size:
                            self._jobs.remove(job)
                            batch.append(job)
                            pages += len(job.images)
                    left = deadline - time.monotonic()
                    if pages >= self.batch_size or left <= 0 or self._stopping:
                        break
                    self._cond.wait(left)
            self._waiting_pages -= sum(len(job.images) for job in batch)
        # From here on a request cannot be cancelled; one its client gave up on is dropped.
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            started = time.monotonic()
            try:
                if batch[0].task == "ask":
                    self._answer(batch[0], started)
                else:
                    self._recognise(batch, started)
            except BaseException as exc:  # never let one batch end the worker
                logger.exception("batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            pages = sum(len(job.images) for job in batch)
            per_page = (time.monotonic() - started) / max(1, pages)
            self._seconds_per_page = 0.7 * self._seconds_per_page + 0.3 * per_page
            self.batches_run += 1

    def _answer(self, job: Work, started: float) -> None:
        try:
            answer = self.model.ask(job.images[0], job.question, job.history)
        except ChatVLMError as exc:
            job.future.set_result(PageOutcome(error=str(exc), queue_s=started - job.queued_at))
            return
        except Exception as exc:
            logger.exception("question failed")
            job.future.set_result(PageOutcome(error=f"{exc.__class__.__name__}: {exc}", queue_s=started - job.queued_at))
            return
        job.future.set_result(PageOutcome(result=answer, queue_s=started - job.queued_at,
                                          recognise_s=time.monotonic() - started))

    def _recognise(self, batch: list[Work], started: float) -> None:
        images = [image for job in batch for image in job.images]
        errors: dict[int, str] = {}
        try:
            results = self.model.recognize(images, task=batch[0].task)
        except RecognitionError as exc:
            results, errors = exc.results, exc.errors
        except ChatVLMError as exc:
            results, errors = [None] * len(images), {i: str(exc) for i in range(len(images))}
        except Exception as exc:
            logger.exception("recognition failed")
            reason = f"{exc.__class__.__name__}: {exc}"
            results, errors = [None] * len(images), {i: reason for i in range(len(images))}
        results = list(results) + [None] * (len(images) - len(results))
        took = time.monotonic() - started
        offset = 0
        for job in batch:
            outcomes = []
            for i in range(offset, offset + len(job.images)):
                error = errors.get(i) if results[i] is None else None
                if results[i] is None and error is None:
                    error = _("no result")
                outcomes.append(PageOutcome(result=results[i], error=error, queue_s=started - job.queued_at, recognise_s=took))
            offset += len(job.images)
            job.images = []   # the pixels are no longer needed
            job.future.set_result(outcomes)
