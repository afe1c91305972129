"""chatvlm.engine.decoder: the CUDA-graph pool lifecycle, proven on CPU through a fake graph API.

The fake keeps the CUDA caching allocator's rules for private graph pools:
`pool_handle()` only mints an id; the first capture into an id registers the pool; each
live graph holds one reference; when the last graph of a pool is freed its use count is
0 and the id stays registered, so capturing into it again is the allocator's
`use_count > 0` assert. Graphs "replay" by running the captured step again on the same
static buffers, so the decoder's tokens are checked against transformers' `generate`
while the lifecycle is checked by the fake.
"""

from __future__ import annotations

import weakref

import pytest
import torch

from chatvlm.engine import StaticDecoder
from tests.conftest import tiny_backends
from tests.test_decode import _generated

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StalePoolReuse(AssertionError):
    """c10's `it->second->use_count > 0 INTERNAL ASSERT FAILED` (CUDACachingAllocator)."""


class FakeGraphs:
    def __init__(self):
        self.next_id = 0
        self.use_count: dict[int, int] = {}      # registered pools (never unregistered: worst case)
        self.handles: list[int] = []             # minted, in order
        self.captures: list[tuple[int, object]] = []   # (pool, key-less record of each capture)
        self.synchronized = 0
        self.emptied = 0

    def pool_handle(self) -> int:
        self.next_id += 1
        self.handles.append(self.next_id)
        return self.next_id

    def capture(self, fn, pool):
        if pool in self.use_count and self.use_count[pool] == 0:
            raise StalePoolReuse(f"capture into pool {pool} whose graphs were all freed")
        self.use_count[pool] = self.use_count.get(pool, 0) + 1
        fn()
        fn()                                     # warm-up runs, as on CUDA
        fn()                                     # the capture itself runs the step once
        graph = FakeGraph(fn)
        weakref.finalize(graph, self._release, pool)
        self.captures.append((pool, id(graph)))
        return graph

    def _release(self, pool: int) -> None:
        self.use_count[pool] -= 1

    def live_graphs(self) -> int:
        return sum(self.use_count.values())

    def synchronize(self) -> None:
        self.synchronized += 1

    def empty_cache(self) -> None:
        self.emptied += 1


class FakeGraph:
    def __init__(self, fn):
        self.fn = fn
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        self.fn()


def test_fake_models_the_allocator_assert():
    """The pattern that crashed on the H200: drop all graphs of a pool, capture into it again."""
    api = FakeGraphs()
    pool = api.pool_handle()
    graphs = {1: api.capture(lambda: None, pool)}
    graphs[2] = api.capture(lambda: None, pool)         # a live pool takes more graphs
    graphs.clear()
    assert api.use_count[pool] == 0
    with pytest.raises(StalePoolReuse):
        api.capture(lambda: None, pool)
    api.capture(lambda: None, api.pool_handle())          # a fresh handle is fine


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_backends(tmp_path_factory)("qwen_vl_2b")


def _text_batch(batch: int, seed: int, pad_id: int, lengths=(3, 17)):
    """Left-padded text prompts of different lengths (no images: many rows stay cheap)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (batch,), generator=g).tolist()
    width = max(sizes)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for r, n in enumerate(sizes):
        ids[r, width - n:] = torch.randint(3, 250, (n,), generator=g)
        mask[r, width - n:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_pool_lifecycle_batch_1_then_64_then_growth_then_many(qwen):
    """One decoder for a whole run: warm-up at batch 1, a batch of 64, a longer batch (the
    cache grows), then many batches of mixed sizes. Tokens equal generate's every time; no
    pool handle is ever captured into after its graphs were freed (the fake would raise)."""
    model, pad, stops = qwen.model, qwen.pad_token_id(), qwen.stop_token_ids()
    api = FakeGraphs()
    dec = StaticDecoder(model, graph_api=api, len_bucket=16, sync_every=4)
    assert dec.use_graphs and dec.bucketed

    plan = [(1, 0, 6), (64, 1, 10), (5, 2, 40), (64, 3, 8)] + [(n, 10 + i, 7) for i, n in enumerate((3, 9, 1, 17, 2, 33))]
    for batch, seed, max_new in plan:
        inputs = _text_batch(batch, seed, pad)
        got = _generated(model, dec, inputs, max_new, stops, pad)
        assert got == _generated(model, None, inputs, max_new, stops, pad), (batch, seed)
    assert dec.stats.graph_replays > 0 and dec.stats.graphs_captured > 0
    # the cache grew for 64 rows and for the longer batch: each growth minted a new handle
    assert len(api.handles) == 3
    # once a new handle is taken, the old one never receives a capture again
    pools = [pool for pool, _ in api.captures]
    assert pools == sorted(pools) and set(pools) == set(api.handles)
    assert all(api.use_count[p] == 0 for p in api.handles[:-1])     # old graphs really freed
    live_pool = dec.graph_set.pool
    assert api.use_count[live_pool] == len(dec.graph_set.graphs) == api.live_graphs()
    assert dec.k.shape[1] == 64                        # batch bucket of the largest batch, kept
    # release drops graphs and handle together; the next batch captures into a fresh pool
    dec.release()
    assert dec.graph_set is None and dec.k is None and api.live_graphs() == 0
    inputs = _text_batch(4, 99, pad)
    assert _generated(model, dec, inputs, 5, stops, pad) == _generated(model, None, inputs, 5, stops, pad)
    assert dec.graph_set.pool == api.handles[-1] != live_pool


def test_smaller_batches_reuse_graphs_without_rebuild(qwen):
    """After the largest batch, smaller ones fit the cache: no new handle, graphs replayed."""
    model, pad, stops = qwen.model, qwen.pad_token_id(), qwen.stop_token_ids()
    api = FakeGraphs()
    dec = StaticDecoder(model, graph_api=api, len_bucket=64)
    _generated(model, dec, _text_batch(16, 0, pad), 6, stops, pad)
    handles, captured = len(api.handles), dec.stats.graphs_captured
    for i in range(6):
        _generated(model, dec, _text_batch(16, 0, pad), 6, stops, pad)
    assert len(api.handles) == handles
    assert dec.stats.graphs_captured == captured        # same keys: replayed, never recaptured


def test_rope_table_growth_drops_graphs_with_their_pool(qwen):
    model, pad, stops = qwen.model, qwen.pad_token_id(), qwen.stop_token_ids()
    api = FakeGraphs()
    dec = StaticDecoder(model, graph_api=api, len_bucket=16)
    inputs = _text_batch(2, 5, pad)
    _generated(model, dec, inputs, 4, stops, pad)
    first_pool = dec.graph_set.pool
    assert api.use_count[first_pool] > 0
    size = dec.rope_cos.shape[0]
    dec._ensure_rope(size + 1, mrope=True)                # a longer run: the table grows
    assert dec.graph_set is None and api.use_count[first_pool] == 0
    assert dec.rope_cos.shape[0] > size
    assert _generated(model, dec, inputs, 4, stops, pad) == _generated(model, None, inputs, 4, stops, pad)
    assert dec.graph_set.pool != first_pool


def test_capture_against_moved_buffers_is_refused(qwen):
    model, pad, stops = qwen.model, qwen.pad_token_id(), qwen.stop_token_ids()
    dec = StaticDecoder(model, graph_api=FakeGraphs(), len_bucket=16)
    _generated(model, dec, _text_batch(2, 5, pad), 4, stops, pad)
    dec.logits = dec.logits.clone()                       # a buffer reassigned behind the graphs' back
    with pytest.raises(AssertionError, match="buffers moved"):
        dec.graph_set.capture(dec.graph_api, (999, 16), lambda: None, dec._buffers())
