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


def bucketed_windows(pages: Iterable[Page], batch_size: Callable[[], int], cost: Callable[[Page], float],
                     window_batches: int = 4) -> Iterator[tuple[list[Page], list[list[Page]]]]:
    """Group pages into batches of similar cost (e.g. image-token count).

    Pages are taken a window at a time (window_batches batches' worth), sorted by cost
    inside the window and cut into batches, so a batch does not pad a small page up to a
    big one. The first window of a large batch holds a quarter of it, so the first page is
    written early. Yields (window in input order, batches); the caller writes results of the
    window in input order, so outputs and the manifest keep the input's order. Pages that
    failed to render come back as batches of one.
    """
    window: list[Page] = []

    def flush() -> tuple[list[Page], list[list[Page]]]:
        good = sorted((p for p in window if p.ok), key=cost)
        size = max(1, batch_size())
        groups = [good[i:i + size] for i in range(0, len(good), size)]
        groups += [[p] for p in window if not p.ok]
        return list(window), groups

    first = True
    for page in pages:
        window.append(page)
        size = max(1, batch_size())
        # A large batch starts with a quarter of itself, so the first page is written early;
        # full windows after. Small batches (under 8) start whole.
        first_size = (size + 3) // 4 if size >= 8 else size
        if len(window) >= (first_size if first else size * window_batches):
            yield flush()
            window = []
            first = False
    if window:
        yield flush()


def auto_batch_size(free_bytes: int, per_page_bytes: int, headroom: float = 0.8, cap: int = 256) -> int:
    """The largest power-of-two batch whose per-page memory fits in the free memory.

    An estimate, not a promise: the out-of-memory back-off catches what it gets wrong and
    the smaller size is kept from then on.
    """
    if per_page_bytes <= 0 or free_bytes <= 0:
        return 1
    fits = int(free_bytes * headroom // per_page_bytes)
    size = 1
    while size * 2 <= min(fits, cap):
        size *= 2
    return size


def kv_cache_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Keys and values of one token across all layers."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def is_out_of_memory(exc: BaseException) -> bool:
    name = exc.__class__.__name__
    return name in ("OutOfMemoryError", "MemoryError") or "out of memory" in str(exc).lower()


def probe_batch_size(free_bytes: int, probe_peak_bytes: int, probe_pages: int, probe_new_tokens: int,
                     max_new_tokens: int, kv_bytes_per_token: int, headroom: float = 0.8, cap: int = 256) -> int:
    """Batch size from a measured probe: `probe_pages` pages run through prefill and
    `probe_new_tokens` decode steps took `probe_peak_bytes` above the memory held before.

    One page then costs its share of that peak plus the KV cache of the decode steps the
    probe did not run (max_new_tokens - probe_new_tokens). The free memory times `headroom`
    (the safety margin: pages bigger than the probe's, allocator fragmentation) is divided
    by that, rounded down to a power of two.
    """
    per_page = probe_peak_bytes / max(1, probe_pages)
    per_page += max(0, max_new_tokens - probe_new_tokens) * max(0, kv_bytes_per_token)
    return auto_batch_size(free_bytes, int(per_page), headroom=headroom, cap=cap)


def generate_with_backoff(generate: Callable[[list[Page]], list], pages: list[Page],
                          on_shrink: Optional[Callable[[int], None]] = None,
                          release: Optional[Callable[[], None]] = None) -> list:
    """Run a batch; on failure split it in halves and retry, so no page is lost.

    After an out-of-memory error everything the failed attempt held is freed first
    (`release`: the backend's caches, then Python garbage and the CUDA cache), and the
    caller is told (on_shrink) the smaller size to use from now on. A page fails for
    out-of-memory only when it fails alone on an emptied card: a single page that hit
    it is retried once after the memory is freed. Any other error splits the batch the
    same way, so one bad page cannot take its neighbours with it; a single page that
    still fails comes back as the exception object in its slot.
    """
    outputs, error = _attempt(generate, pages)
    if error is None:
        return outputs
    out_of_memory = is_out_of_memory(error)
    if out_of_memory:
        # The traceback holds the failed attempt's frames (and their tensors): drop it first.
        error.__traceback__ = None
        free_memory(release)
    if len(pages) == 1:
        if not out_of_memory:
            return [error]
        del error
        outputs, error = _attempt(generate, pages)   # alone, on an emptied card
        if error is None:
            return outputs
        error.__traceback__ = None
        free_memory(release)
        return [error]
    half = len(pages) // 2
    if out_of_memory and on_shrink is not None:
        on_shrink(max(1, len(pages) - half))
    del error
    return (generate_with_backoff(generate, pages[:half], on_shrink, release)
            + generate_with_backoff(generate, pages[half:], on_shrink, release))


def _attempt(generate: Callable[[list[Page]], list], pages: list[Page]) -> tuple[Optional[list], Optional[BaseException]]:
    """(outputs, None) or (None, the exception): the caller handles the failure outside the
    `except` block, where the failed frames are no longer alive."""
    try:
        outputs = generate(pages)
        if len(outputs) != len(pages):
            raise RuntimeError(f"backend returned {len(outputs)} outputs for {len(pages)} pages")
        return outputs, None
    except Exception as exc:
        return None, exc


def split_to_size(batch: list[Page], size: int) -> list[list[Page]]:
    """A batch cut into pieces of at most `size` pages (a size learnt after the batch was formed)."""
    size = max(1, size)
    return [batch[i:i + size] for i in range(0, len(batch), size)] or [batch]


def failure_reason(outcome) -> Optional[str]:
    """Why a slot of generate_with_backoff's result failed, or None when it holds a good output."""
    if isinstance(outcome, BaseException):
        return f"{outcome.__class__.__name__}: {outcome}"
    return getattr(outcome, "error", None) or None


def free_memory(release: Optional[Callable[[], None]] = None) -> None:
    """Give back what a failed attempt held: the backend's own caches (`release`), Python
    garbage (tensors kept alive by reference cycles), then the CUDA allocator's cache."""
    if release is not None:
        try:
            release()
        except Exception:
            pass   # freeing must never turn one failure into two
    import gc
    gc.collect()
    try:
        import sys
        if "torch" in sys.modules:
            import torch
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    except Exception:
        pass
