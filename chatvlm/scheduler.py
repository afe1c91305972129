"""Feeding the recogniser: pages rendered ahead in background threads, batched, in order.

Rendering (poppler, Pillow) runs in a small thread pool that stays at most `prefetch`
pages ahead of the recogniser, so memory stays bounded however many pages the input
holds, and the GPU (or Tesseract) never waits for a render it could have overlapped.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

from .i18n import _
from .records import Page


@dataclass
class Job:
    """One page to recognise: how to render it, and the Page record it becomes."""

    page: Page
    render: Callable[[], object]      # returns the PIL image or raises InputError


def _render(job: Job) -> Page:
    from .errors import InputError

    start = time.perf_counter()
    try:
        job.page.image = job.render()
    except InputError as exc:
        job.page.error = str(exc)
    except MemoryError:
        job.page.error = _("out of memory while rendering this page; lower --dpi")
    except Exception as exc:  # a renderer bug must cost one page, not the batch
        job.page.error = _("cannot render page: {reason}").format(reason=f"{exc.__class__.__name__}: {exc}")
    job.page.timings["render"] = time.perf_counter() - start
    return job.page


def rendered_pages(jobs: Iterable[Job], prefetch: int = 4, workers: int = 2) -> Iterator[Page]:
    """Render jobs in background threads, yielding pages in job order, at most `prefetch` ahead."""
    prefetch = max(1, prefetch)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="render") as pool:
        pending: deque[Future] = deque()
        iterator = iter(jobs)
        exhausted = False
        while True:
            while not exhausted and len(pending) < prefetch:
                try:
                    job = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(pool.submit(_render, job))
            if not pending:
                return
            yield pending.popleft().result()


def batches(pages: Iterable[Page], batch_size: int) -> Iterator[list[Page]]:
    """Group pages into batches; pages that failed to render are passed through alone."""
    batch: list[Page] = []
    for page in pages:
        if not page.ok:
            if batch:
                yield batch
                batch = []
            yield [page]
            continue
        batch.append(page)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def is_out_of_memory(exc: BaseException) -> bool:
    name = exc.__class__.__name__
    return name in ("OutOfMemoryError", "MemoryError") or "out of memory" in str(exc).lower()


def generate_with_backoff(generate: Callable[[list[Page]], list], pages: list[Page],
                          on_shrink: Optional[Callable[[int], None]] = None) -> list:
    """Run a batch; on failure split it in halves and retry, so no page is lost.

    Out-of-memory also tells the caller (on_shrink) to use smaller batches from now on.
    A single page that still fails comes back as an exception object in its slot.
    """
    try:
        outputs = generate(pages)
        if len(outputs) != len(pages):
            raise RuntimeError(f"backend returned {len(outputs)} outputs for {len(pages)} pages")
        return outputs
    except Exception as exc:
        if len(pages) == 1:
            return [exc]
        if is_out_of_memory(exc):
            _free_accelerator_memory()
            if on_shrink is not None:
                on_shrink(max(1, len(pages) // 2))
        half = len(pages) // 2
        return (generate_with_backoff(generate, pages[:half], on_shrink)
                + generate_with_backoff(generate, pages[half:], on_shrink))


def _free_accelerator_memory() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
