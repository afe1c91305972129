"""On a CUDA machine only (skipped elsewhere): the static decoder with real CUDA graphs.

The CPU suite proves the graph-pool lifecycle through a fake (test_decode_graphs.py); this
runs the same run shape on the real allocator: a warm-up at batch 1, a batch of 64 (the
cache grows, graphs are dropped and a fresh pool is taken), a longer batch (grows again),
many batches of mixed sizes, `release()` and a batch after it. fp32, tiny random Qwen2-VL;
tokens are compared with transformers' `generate` on the same card.
"""

from __future__ import annotations

import pytest
import torch

from chatvlm.config import BackendOptions
from chatvlm.engine import StaticDecoder
from chatvlm.engine.graphs import CudaGraphs
from chatvlm.registry import get_spec
from chatvlm.testing import build_tiny_checkpoint
from tests.test_decode import _generated
from tests.test_decode_graphs import _text_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_real_cuda_graphs_across_pool_growth_and_many_batches(tmp_path):
    folder = build_tiny_checkpoint("qwen_vl_2b", tmp_path / "qwen")
    spec = get_spec("qwen_vl_2b")
    be = spec.backend_class()(spec, BackendOptions(model_path=folder, device="cuda", dtype="float32", extra={}))
    be.load()
    model, pad, stops = be.model, be.pad_token_id(), be.stop_token_ids()
    dec = StaticDecoder(model, len_bucket=16)
    assert dec.use_graphs and isinstance(dec.graph_api, CudaGraphs)
    pools = []
    plan = [(1, 0, 6), (64, 1, 10), (5, 2, 40), (64, 3, 8)] + [(n, 10 + i, 7) for i, n in enumerate((3, 9, 1, 17, 2, 33))]
    for batch, seed, max_new in plan:
        inputs = {k: v.cuda() for k, v in _text_batch(batch, seed, pad).items()}
        got = _generated(model, dec, inputs, max_new, stops, pad)
        assert got == _generated(model, None, inputs, max_new, stops, pad), (batch, seed)
        if dec.graph_set is not None and (not pools or pools[-1] != dec.graph_set.pool):
            pools.append(dec.graph_set.pool)
    assert len(pools) == 3 and len(set(pools)) == 3          # one fresh pool per growth
    assert dec.stats.graphs_captured > 0 and dec.stats.graph_replays > dec.stats.graphs_captured
    dec.release()
    assert dec.graph_set is None and dec.k is None
    inputs = {k: v.cuda() for k, v in _text_batch(4, 99, pad).items()}
    assert _generated(model, dec, inputs, 5, stops, pad) == _generated(model, None, inputs, 5, stops, pad)
    be.close()
