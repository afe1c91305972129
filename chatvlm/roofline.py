"""The roofline of a page: the least time this card could take for it, next to the time it took.

Two measured limits of the card, once per run (`measure_peaks`): the matmul rate (a short
timed square matmul in the dtype the models run in: bf16 on a GPU, float32 on a CPU, and
labelled so) and the memory bandwidth (a large device-to-device copy, read + write).

Two counts per model, on one page (`count_page`): the FLOPs of its prefill (vision encoder
and language model over the prompt) and of one decode step, by
`torch.utils.flop_counter.FlopCounterMode` around a two-token generation through
transformers' `generate` (our static decoder's CUDA graphs would replay unseen); and the
bytes one decode step reads: the parameters of the modules that ran in that step (the
vision tower does not run; an embedding table is read one row per token) plus the KV cache.

`page_limit` turns these into seconds for a page in a batch of B pages generating T tokens
each: the prefill at the FLOP limit, and T - 1 decode steps, each at the slower of its FLOP
limit (B times a step's FLOPs) and its bandwidth limit (the weights once, plus B rows of KV
cache at the mean context length), shared by the B pages. The bench reports that limit and
`% of limit` = limit / measured seconds per page (100 % would be the card's limit).

What is left out, so the limit is a lower bound: element-wise work, attention kernels with
no FLOP formula (a flash-attn too old to register torch ops), the prefill's memory traffic,
and for MoE models the experts the other rows of a batch choose (one token reads only its
own experts).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

GPU_MATMUL_N = 8192          # one bf16 matmul of 8192^3 is 1.1 TFLOP: ~2 ms on an H100/H200
GPU_COPY_BYTES = 1 << 30     # 1 GiB copied (2 GiB moved): well past any cache
CPU_MATMUL_N = 1024
CPU_COPY_BYTES = 128 << 20


# --------------------------------------------------------------------------- the card's limits

def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device, repeats: int) -> float:
    """Shortest wall time of `fn` over `repeats` runs after one warm-up (least disturbed run)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peaks(device: str = "cpu", dtype=None, matmul_n: Optional[int] = None,
                  copy_bytes: Optional[int] = None, repeats: Optional[int] = None) -> dict[str, Any]:
    """The matmul rate (FLOP/s) and memory bandwidth (bytes/s) of `device` in `dtype`.

    On a CPU the rate is measured in float32 whatever is asked (that is what models run in
    there) and the dtype says so."""
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtype = dtype if (cuda and dtype is not None) else (torch.bfloat16 if cuda else torch.float32)
    n = int(matmul_n or (GPU_MATMUL_N if cuda else CPU_MATMUL_N))
    size = int(copy_bytes or (GPU_COPY_BYTES if cuda else CPU_COPY_BYTES))
    reps = int(repeats or (10 if cuda else 3))
    started = time.perf_counter()
    with torch.inference_mode():
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        c = torch.empty(n, n, device=dev, dtype=dtype)
        matmul_s = _best_time(lambda: torch.mm(a, b, out=c), dev, reps)
        del a, b, c
        src = torch.empty(size, device=dev, dtype=torch.uint8).fill_(1)
        dst = torch.empty_like(src)
        copy_s = _best_time(lambda: dst.copy_(src), dev, reps)
        del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "matmul_tflops": round(2 * n ** 3 / matmul_s / 1e12, 4), "matmul_n": n,
        "bandwidth_gb_s": round(2 * size / copy_s / 1e9, 3), "copy_bytes": size,
        "seconds": round(time.perf_counter() - started, 3),
    }


# --------------------------------------------------------------------------- one page's work

def flash_attn_flops(q, k, *args, **kwargs) -> int:
    """flash-attn's forward, q/k [batch, length, heads, head_dim]: q.k and p.v, 2 FLOPs a
    multiply-add each (causal masking not subtracted, as for PyTorch's attention)."""
    batch, q_len, heads, dim = q.shape
    return 4 * batch * heads * q_len * int(k.shape[1]) * dim


def flash_attn_varlen_flops(q, k, v, cu_seqlens_q, cu_seqlens_k, *args, **kwargs) -> int:
    """flash-attn's packed forward, q [tokens, heads, head_dim]: per sequence as above."""
    heads, dim = int(q.shape[1]), int(q.shape[2])
    lq = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
    lk = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist()
    return sum(4 * heads * dim * a * b for a, b in zip(lq, lk))


def _raw(formula):
    """A formula that gets the op's tensors (it reads sequence lengths), not only their shapes."""
    def counted(*args, out_val=None, **kwargs):
        return formula(*args, **kwargs)
    counted._get_raw = True
    return counted


def _counter():
    """FlopCounterMode, also counting attention kernels with no formula upstream: the CPU's fused
    attention and, where installed, flash-attn's forwards (those registered as torch ops)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    extra = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        extra[cpu_sdpa] = lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    for name, formula in (("_flash_attn_forward", flash_attn_flops),
                          ("_flash_attn_varlen_forward", flash_attn_varlen_flops)):
        try:
            extra[getattr(torch.ops.flash_attn, name)] = _raw(formula)
        except (AttributeError, RuntimeError):
            pass                 # flash-attn not installed, or an older one without torch ops
    return FlopCounterMode(display=False, custom_mapping=extra)


class _DecodeStepReads:
    """Bytes of parameters read by the modules that run while `active` (one decode step)."""

    def __init__(self):
        self.active = False
        self.params: dict[int, int] = {}
        self.embedding_bytes = 0

    def __call__(self, module, args, output):
        import torch
        if not self.active:
            return
        if isinstance(module, torch.nn.Embedding):
            ids = args[0] if args else None
            rows = int(ids.numel()) if isinstance(ids, torch.Tensor) else 1
            self.embedding_bytes += rows * module.embedding_dim * module.weight.element_size()
            return
        for p in module.parameters(recurse=False):
            self.params[id(p)] = p.numel() * p.element_size()

    @property
    def weight_bytes(self) -> int:
        return sum(self.params.values()) + self.embedding_bytes


def count_page(backend, page, task: str, params) -> Optional[dict[str, Any]]:
    """FLOPs of one page's prefill and of one decode step, and the bytes a decode step reads.

    Runs `page` once more through the backend's generation (two tokens, transformers'
    `generate`, batch of one); the backend's own facts are left as they were. None for a
    backend without a torch model (tesseract)."""
    model = getattr(backend, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return None              # tesseract: no torch model (and no torch import for it)
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    options = getattr(backend, "options", None)
    extra = options.extra if options is not None else {}
    saved_decode = extra.get("decode", None)
    facts = getattr(backend, "_facts", None)
    saved_facts = dict(facts) if isinstance(facts, dict) else None
    marks: list[int] = []                 # FLOPs counted when each top-level forward began
    reads = _DecodeStepReads()
    counter = _counter()

    def on_forward(module, args):
        marks.append(counter.get_total_flops())
        reads.active = len(marks) == 2    # the second forward is the first decode step

    started = time.perf_counter()
    probe = dataclasses.replace(params, max_new_tokens=2, batch_size=1, loop_guard=False)
    extra["decode"] = "hf"
    pre = model.register_forward_pre_hook(on_forward)
    post = torch.nn.modules.module.register_module_forward_hook(reads)
    try:
        with counter:
            raw = backend.generate_batch([dataclasses.replace(page, timings={})], task, probe)
    finally:
        pre.remove()
        post.remove()
        if saved_decode is None:
            extra.pop("decode", None)
        else:
            extra["decode"] = saved_decode
        if saved_facts is not None:
            facts.clear()
            facts.update(saved_facts)
    total = counter.get_total_flops()
    prompt = int(raw[0].input_tokens) if raw and raw[0].input_tokens else None
    if len(marks) >= 2:
        prefill, step = marks[1], total - marks[1]
    else:                                 # the page ended on its first token: no decode step seen
        prefill, step = total, None
    kv = None
    if hasattr(backend, "kv_bytes_per_token"):
        try:
            kv = int(backend.kv_bytes_per_token())
        except Exception:
            kv = None
    return {
        "prompt_tokens": prompt,
        "prefill_flops": int(prefill),
        "decode_step_flops": int(step) if step is not None else None,
        "decode_weight_bytes": reads.weight_bytes if step is not None else None,
        "model_weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "kv_bytes_per_token": kv,
        "seconds": round(time.perf_counter() - started, 3),
    }


# --------------------------------------------------------------------------- the limit

def page_limit(counts: dict[str, Any], peaks: dict[str, Any], batch: int, tokens_per_page: float) -> dict[str, Any]:
    """Seconds one page needs at the card's limits, in a batch of `batch` pages of
    `tokens_per_page` generated tokens (see the module's docstring)."""
    flops = peaks["matmul_tflops"] * 1e12
    bandwidth = peaks["bandwidth_gb_s"] * 1e9
    batch = max(1, int(batch))
    prefill_s = counts["prefill_flops"] / flops
    steps = max(0.0, float(tokens_per_page) - 1)
    out: dict[str, Any] = {"batch": batch, "tokens_per_page": round(float(tokens_per_page), 2),
                           "prefill_s": prefill_s}
    step_flops = counts.get("decode_step_flops")
    weights = counts.get("decode_weight_bytes")
    if step_flops is None or weights is None:
        out.update(decode_s=None, decode_bound=None, limit_s=prefill_s)
        return out
    context = (counts.get("prompt_tokens") or 0) + tokens_per_page / 2
    step_bytes = weights + batch * (counts.get("kv_bytes_per_token") or 0) * context
    compute_s = batch * step_flops / flops
    memory_s = step_bytes / bandwidth
    decode_s = steps * max(compute_s, memory_s) / batch
    out.update(decode_step_compute_s=compute_s, decode_step_memory_s=memory_s,
               decode_bound="memory" if memory_s >= compute_s else "compute",
               decode_s=decode_s, limit_s=prefill_s + decode_s)
    return out


def roofline_row(counts: Optional[dict[str, Any]], peaks: Optional[dict[str, Any]], batch: int,
                 tokens_per_page: Optional[float], pages_per_s: Optional[float]) -> Optional[dict[str, Any]]:
    """bench.json's `roofline` of a model: the counts, the limit per page, the measured seconds
    per page (1 / pages/s) and `percent_of_limit`; None when something is missing."""
    if not counts or not peaks or not tokens_per_page:
        return None
    limit = page_limit(counts, peaks, batch, tokens_per_page)
    measured = 1.0 / pages_per_s if pages_per_s else None
    percent = 100.0 * limit["limit_s"] / measured if measured else None
    rounded = {k: (_sig(v) if isinstance(v, float) else v) for k, v in limit.items()}
    return {**counts, **rounded, "measured_s_per_page": _sig(measured) if measured else None,
            "percent_of_limit": _sig(percent, 4) if percent is not None else None,
            "peaks": {k: peaks[k] for k in ("device", "dtype", "matmul_tflops", "bandwidth_gb_s")}}


def _sig(value: float, digits: int = 6) -> float:
    """`value` to `digits` significant digits (the limits span microseconds to minutes)."""
    return float(f"{value:.{digits}g}")
