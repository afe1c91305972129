"""The roofline: the card's limits, a page's FLOP and byte counts on a tiny real model, the limit's arithmetic."""

from __future__ import annotations

import pytest

from chatvlm import roofline
from chatvlm.config import BackendOptions, GenerationParams

from .test_bench import TINY_QWEN2_VL


def test_page_limit_hand_computed_memory_bound():
    counts = {"prompt_tokens": 1000, "prefill_flops": 2e12, "decode_step_flops": 4e9,
              "decode_weight_bytes": 4e9, "kv_bytes_per_token": 1e5}
    peaks = {"matmul_tflops": 1000.0, "bandwidth_gb_s": 4000.0}           # 1e15 FLOP/s, 4e12 B/s
    limit = roofline.page_limit(counts, peaks, batch=8, tokens_per_page=101)
    assert limit["prefill_s"] == pytest.approx(2e-3)
    # a step: weights once + 8 rows of KV at the mean context 1000 + 101/2 tokens
    step_memory = (4e9 + 8 * 1e5 * 1050.5) / 4e12
    assert limit["decode_step_memory_s"] == pytest.approx(step_memory)
    assert limit["decode_step_compute_s"] == pytest.approx(8 * 4e9 / 1e15)
    assert limit["decode_bound"] == "memory"
    assert limit["decode_s"] == pytest.approx(100 * step_memory / 8)      # 100 steps shared by 8 pages
    assert limit["limit_s"] == pytest.approx(2e-3 + 100 * step_memory / 8)


def test_page_limit_compute_bound_and_percent():
    counts = {"prompt_tokens": 10, "prefill_flops": 1e12, "decode_step_flops": 1e10,
              "decode_weight_bytes": 1e6, "kv_bytes_per_token": 0}
    peaks = {"device": "cuda", "dtype": "bfloat16", "matmul_tflops": 100.0, "bandwidth_gb_s": 1000.0}
    row = roofline.roofline_row(counts, peaks, batch=4, tokens_per_page=11, pages_per_s=5.0)
    assert row["decode_bound"] == "compute"
    limit = 1e12 / 1e14 + 10 * (4 * 1e10 / 1e14) / 4                    # 0.01 + 0.001
    assert row["limit_s"] == pytest.approx(limit, rel=1e-5)
    assert row["measured_s_per_page"] == pytest.approx(0.2)
    assert row["percent_of_limit"] == pytest.approx(100 * limit / 0.2, rel=1e-3)
    assert roofline.roofline_row(counts, peaks, 4, None, 5.0) is None     # no tokens: no limit


def test_measure_peaks_on_cpu_is_float32_and_labelled():
    import torch

    peaks = roofline.measure_peaks("cpu", torch.bfloat16, matmul_n=128, copy_bytes=1 << 20, repeats=2)
    assert peaks["dtype"] == "float32" and peaks["device"] == "cpu"
    assert peaks["matmul_tflops"] > 0 and peaks["bandwidth_gb_s"] > 0 and peaks["matmul_n"] == 128


def test_count_page_on_a_tiny_qwen2_vl_matches_the_hand_count():
    pytest.importorskip("transformers")
    import torch

    from chatvlm.backends.base import create_backend
    from chatvlm.engine.memory import probe_page
    from chatvlm.registry import get_spec

    backend = create_backend(get_spec("qwen_vl_2b"), BackendOptions(synthetic=True, extra={"config": TINY_QWEN2_VL}))
    backend.load()
    try:
        counts = roofline.count_page(backend, probe_page(), "markdown",
                                     GenerationParams(max_new_tokens=8, max_pixels=40_000))
        model = backend.model
        text = TINY_QWEN2_VL["text_config"]
        lm = {n: m for n, m in model.named_modules() if "visual" not in n}
        linear = sum(m.weight.numel() for m in lm.values() if isinstance(m, torch.nn.Linear))
        # one token: 2 FLOPs per weight of every language-model matmul (lm_head included), plus
        # attention over the prompt and itself: q.k and a.v, 2 * heads * head_dim each per layer
        heads, head_dim = text["num_attention_heads"], text["hidden_size"] // text["num_attention_heads"]
        context = counts["prompt_tokens"] + 1
        attention = text["num_hidden_layers"] * 2 * (2 * heads * head_dim * context)
        assert counts["decode_step_flops"] == 2 * linear + attention
        assert counts["prefill_flops"] > counts["prompt_tokens"] * 2 * (linear - text["vocab_size"] * text["hidden_size"])
        # bytes a step reads: the language model's own weights (no vision tower), one embedding row
        own = sum(p.numel() for n, m in lm.items() if not isinstance(m, torch.nn.Embedding)
                  for p in m.parameters(recurse=False))
        assert counts["decode_weight_bytes"] == 4 * (own + text["hidden_size"])
        assert counts["decode_weight_bytes"] < counts["model_weight_bytes"]
        assert counts["kv_bytes_per_token"] == backend.kv_bytes_per_token()
        # the counting pass leaves the backend's choices as they were
        assert "decode" not in backend.options.extra and "decode" not in backend.describe()
    finally:
        backend.close()


def test_flash_attn_formulas_agree_with_pytorch_attention():
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    q, k = torch.empty(2, 7, 4, 8), torch.empty(2, 11, 4, 8)          # flash-attn: [batch, length, heads, dim]
    assert roofline.flash_attn_flops(q, k, k) == sdpa_flop_count((2, 4, 7, 8), (2, 4, 11, 8), (2, 4, 11, 8))
    # packed: two sequences of 3 and 5 tokens (queries and keys alike) = the two counted alone
    packed = torch.empty(8, 4, 8)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    alone = sum(roofline.flash_attn_flops(torch.empty(1, n, 4, 8), torch.empty(1, n, 4, 8)) for n in (3, 5))
    assert roofline.flash_attn_varlen_flops(packed, packed, packed, cu, cu) == alone


def test_bench_measures_the_card_once_for_the_run(tmp_path, monkeypatch):
    from chatvlm import bench
    from chatvlm.bench.runner import _measure_card
    from chatvlm.config import RunConfig
    from chatvlm.records import Reporter
    from chatvlm.registry import get_spec

    monkeypatch.setattr(roofline, "CPU_MATMUL_N", 128)
    monkeypatch.setattr(roofline, "CPU_COPY_BYTES", 1 << 20)
    config = bench.BenchConfig(base=RunConfig(inputs=[], out=tmp_path, backend=BackendOptions(device="cpu")))
    peaks: list = []
    _measure_card(config, get_spec("qwen_vl_2b"), peaks, Reporter())
    assert [(p["device"], p["dtype"], p["matmul_n"]) for p in peaks] == [("cpu", "float32", 128)]
