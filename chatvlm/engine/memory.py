"""Batch sizing: how many pages fit in the accelerator's memory at once.

Model-agnostic: the backend hands in the numbers (KV bytes per token, a typical prompt's
token count) and callables (run a probe batch, free the cache), never itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..records import Page

PROBE_PAGE_SIZE = (1654, 2339)    # A4 at 200 DPI: what a page of a scanned document usually is


class MemoryMeter:
    """The memory counters the batch-size probe reads (bytes)."""

    def free(self) -> int: ...
    def allocated(self) -> int: ...
    def peak(self) -> int: ...
    def reset_peak(self) -> None: ...


class CudaMemory(MemoryMeter):
    def __init__(self, device: str):
        import torch
        self.torch, self.device = torch, torch.device(device)

    def free(self) -> int:
        return int(self.torch.cuda.mem_get_info(self.device)[0])

    def allocated(self) -> int:
        return int(self.torch.cuda.memory_allocated(self.device))

    def peak(self) -> int:
        return int(self.torch.cuda.max_memory_allocated(self.device))

    def reset_peak(self) -> None:
        self.torch.cuda.reset_peak_memory_stats(self.device)


def memory_meter(device: str) -> Optional[MemoryMeter]:
    """The accelerator's memory counters, or None on a CPU (no probe there)."""
    if not device.startswith("cuda"):
        return None
    return CudaMemory(device)


def probe_page(index: int = 0) -> Page:
    """A4 page at 200 DPI with lines of dark bars (text-like): the pixel count, not the
    content, decides a page's image tokens and so its memory."""
    from PIL import Image, ImageDraw

    width, height = PROBE_PAGE_SIZE
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(160, height - 160, 48):
        for x in range(140, width - 240, 180):
            draw.rectangle([x, y, x + 120 + (x * 7 + y) % 50, y + 22], fill=(20, 20, 20))
    return Page(source=Path(f"<probe page {index + 1}>"), doc_key="probe", page=1, image=image, index=index)


def page_memory_bytes(prompt_tokens: int, max_new_tokens: int, kv_bytes_per_token: int) -> int:
    """Memory one page costs in a batch: its KV cache for prompt + new tokens, with the
    same again for activations (vision tower, attention workspace, logits)."""
    return 2 * (prompt_tokens + max_new_tokens) * kv_bytes_per_token


def estimated_batch_size(meter: MemoryMeter, page_bytes: Callable[[], int],
                         fallback: int) -> tuple[int, Optional[int]]:
    """(batch size from the free memory and the per-page estimate, the estimate); where
    either cannot be read, (`fallback`, None)."""
    from ..scheduler import auto_batch_size
    try:
        free = meter.free()
        per_page = page_bytes()
    except Exception:
        return fallback, None
    return auto_batch_size(free, per_page), per_page


def measure_batch_size(run_probe: Callable[[list[Page], int], Any], meter: MemoryMeter,
                       release: Callable[[], None], *, max_new_tokens: int, kv_bytes_per_token: Callable[[], int],
                       probe_pages: int = 2, probe_tokens: int = 8,
                       margin: float = 0.8) -> tuple[int, dict[str, Any]]:
    """Run `probe_pages` A4 pages (200 DPI) through prefill and `probe_tokens` decode steps
    (`run_probe(pages, tokens)`); their peak memory above what the model holds, per page,
    plus the KV cache of the steps not run, divided into the memory then free (times the
    margin). Returns the size and the facts for the report."""
    from ..scheduler import free_memory, probe_batch_size

    pages_n = max(1, int(probe_pages))
    tokens = max(1, min(int(probe_tokens), max_new_tokens))
    pages = [probe_page(i) for i in range(pages_n)]
    free_memory(release)
    meter.reset_peak()
    held = meter.allocated()
    t0 = time.perf_counter()
    run_probe(pages, tokens)
    peak = max(0, meter.peak() - held)
    probe_s = time.perf_counter() - t0
    free_memory(release)     # the probe's own pool and cache go back first
    free = meter.free()
    kv = kv_bytes_per_token()
    size = probe_batch_size(free, peak, pages_n, tokens, max_new_tokens, kv, headroom=margin)
    facts = {"pages": pages_n, "new_tokens": tokens, "peak_mb": round(peak / 2**20, 1),
             "free_mb": round(free / 2**20, 1), "kv_kb_per_token": round(kv / 1024, 1), "margin": margin,
             "seconds": round(probe_s, 3)}
    return size, facts


def probed_batch_size(measure: Callable[[], int], estimate: Callable[[], int],
                      release: Callable[[], None]) -> tuple[int, Optional[str]]:
    """(batch size, why the probe failed or None): the measured size; where the probe
    fails, its memory goes back first, then an out-of-memory error means even the probe's
    small batch did not fit (one page at a time) and any other failure the estimate."""
    from ..scheduler import free_memory, is_out_of_memory

    try:
        return measure(), None
    except Exception as exc:
        exc.__traceback__ = None
        free_memory(release)
        failure = f"failed: {exc.__class__.__name__}: {exc}"[:300]
        return (1 if is_out_of_memory(exc) else estimate()), failure


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Keys and values of one token of one page across the language model's layers, from a
    transformers config (its text config where it has one)."""
    from ..scheduler import kv_cache_bytes_per_token

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_attention_heads"))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return kv_cache_bytes_per_token(int(text.num_hidden_layers), kv_heads, head_dim, dtype_bytes)


class BatchSizer:
    """The run's batch size: --batch-size, else on an accelerator the measured probe (once
    per token budget), else one page. The probe's facts (or why it failed) and the size go
    into `facts` for the report."""

    def __init__(self, facts: dict[str, Any]):
        self.facts = facts
        self._known: dict[int, int] = {}     # token budget -> measured size

    def choose(self, requested: Optional[int], budget: int, meter: Optional[MemoryMeter],
               measure: Callable[[], int], estimate: Callable[[], int], release: Callable[[], None]) -> int:
        """`measure()`: the probe's size; `estimate()`: the KV-cache estimate where the probe
        fails for another reason than memory; `release()` frees the caches."""
        if requested:
            return requested
        if meter is None:
            return 1
        if budget in self._known:
            return self._known[budget]
        size, failure = probed_batch_size(measure, estimate, release)
        if failure:
            self.facts["auto_batch_probe"] = failure
        self.facts["auto_batch_size"] = size
        self._known[budget] = size
        return size

    def estimate(self, meter: MemoryMeter, page_bytes: Callable[[], int], fallback: int) -> int:
        """The batch size from the free memory and the per-page estimate (`fallback` where
        either cannot be read); the estimate goes into the facts."""
        size, per_page = estimated_batch_size(meter, page_bytes, fallback)
        if per_page is not None:
            self.facts["estimated_page_memory_mb"] = round(per_page / 2**20, 1)
        return size

    def measure(self, run_batch: Callable[[list[Page], int], Any], meter: MemoryMeter, release: Callable[[], None],
                *, max_new_tokens: int, kv_bytes_per_token: Callable[[], int], settings: dict[str, Any]) -> int:
        """The measured probe (`measure_batch_size`): `run_batch(pages, tokens)` generates
        `tokens` new tokens for a batch of pages; `settings` (options.extra) may set
        probe_pages, probe_tokens and probe_margin."""
        size, facts = measure_batch_size(
            run_batch, meter, release, max_new_tokens=max_new_tokens, kv_bytes_per_token=kv_bytes_per_token,
            probe_pages=int(settings.get("probe_pages", 2)), probe_tokens=int(settings.get("probe_tokens", 8)),
            margin=float(settings.get("probe_margin", 0.8)))
        self.facts["auto_batch_probe"] = facts
        return size
