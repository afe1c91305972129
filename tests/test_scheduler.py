"""Prefetching, bucketing and OOM back-off, with pages the test makes itself."""

import threading
import time
from pathlib import Path

from chatvlm.records import Page
from chatvlm.scheduler import Job, bucketed_windows, generate_with_backoff, is_out_of_memory, rendered_pages


def page(i: int, width: int = 100) -> Page:
    return Page(source=Path(f"doc{i}.png"), doc_key=f"doc{i}", page=1, index=i)


class Canvas:
    def __init__(self, width):
        self.size = (width, 10)


def test_prefetch_is_bounded_and_ordered():
    rendered = []
    lock = threading.Lock()

    def render(i):
        def go():
            with lock:
                rendered.append(i)
            return Canvas(10 + i)
        return go

    jobs = (Job(page=page(i), render=render(i)) for i in range(50))
    consumed = []
    for p in rendered_pages(jobs, prefetch=4, workers=2):
        time.sleep(0.002)
        # never more than `prefetch` pages rendered beyond what has been consumed
        assert len(rendered) <= len(consumed) + 1 + 4
        consumed.append(p.index)
    assert consumed == list(range(50))


def test_render_failure_becomes_a_page_error():
    from chatvlm.errors import InputError

    def bad():
        raise InputError("cannot render page 3: broken stream")

    (p,) = list(rendered_pages([Job(page=page(0), render=bad)]))
    assert not p.ok and "broken stream" in p.error and "render" in p.timings


def test_buckets_group_similar_pages_and_keep_window_order():
    widths = [900, 100, 880, 120, 910, 90, 870, 130]
    pages = []
    for i, w in enumerate(widths):
        p = page(i)
        p.image = Canvas(w)
        pages.append(p)
    pages[3].image = None
    pages[3].error = "unreadable"
    windows = list(bucketed_windows(pages, lambda: 2, lambda p: p.size[0], window_batches=3))
    assert [len(w) for w, _ in windows] == [2, 6]                # a small batch starts whole
    window, groups = windows[1]
    assert [p.index for p in window] == list(range(2, 8))        # input order kept for writing
    sizes = [[p.size[0] for p in g] for g in groups if g[0].ok]
    assert sizes == [[90, 130], [870, 880], [910]]               # similar sizes batched together
    big = list(bucketed_windows(pages * 4, lambda: 8, lambda p: p.size[0], window_batches=2))
    assert [len(w) for w, _ in big] == [2, 16, 14]               # a large batch starts with a quarter
    assert [g for g in groups if not g[0].ok] == [[pages[3]]]


def test_backoff_splits_until_it_fits_and_isolates_a_bad_page():
    calls = []

    def generate(batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        if any(p.index == 5 for p in batch):
            raise ValueError("page 5 is cursed")
        return [f"ok{p.index}" for p in batch]

    shrunk = []
    out = generate_with_backoff(generate, [page(i) for i in range(8)], shrunk.append)
    assert out[:5] == ["ok0", "ok1", "ok2", "ok3", "ok4"]
    assert isinstance(out[5], ValueError) and out[6:] == ["ok6", "ok7"]
    assert shrunk and min(shrunk) <= 2
    assert is_out_of_memory(RuntimeError("CUDA out of memory")) and not is_out_of_memory(ValueError("x"))


def test_auto_batch_size_from_free_memory():
    from chatvlm.scheduler import auto_batch_size, kv_cache_bytes_per_token

    # Qwen2-VL-2B LM in bf16: 28 layers, 2 KV heads of 128 -> 28 KiB per token
    per_token = kv_cache_bytes_per_token(28, 2, 128, 2)
    assert per_token == 28 * 1024
    per_page = 2 * (1344 + 512) * per_token           # ~100 MiB with activations
    assert auto_batch_size(70 * 2**30, per_page) == 256   # an H100 after loading: capped
    assert auto_batch_size(10 * 2**30, per_page) == 64
    assert auto_batch_size(100 * 2**20, per_page) == 1
    assert auto_batch_size(0, per_page) == 1
