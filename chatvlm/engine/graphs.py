"""CUDA graphs for the static decoder's step: the sizes they are captured at, the capture
calls (`CudaGraphs`, a seam: tests pass a fake with the same methods) and the set of graphs
that share one private memory pool (`GraphSet`, dropped whole, never graph by graph).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def batch_bucket(n: int) -> int:
    for b in BATCH_BUCKETS:
        if b >= n:
            return b
    return int(math.ceil(n / 256) * 256)


def _round_up(n: int, m: int) -> int:
    return int(math.ceil(n / m) * m)


class CudaGraphs:
    """The CUDA graph calls the decoder makes (a seam: tests pass a fake with the same methods)."""

    def __init__(self, device):
        self.device = torch.device(device)

    def pool_handle(self):
        return torch.cuda.graph_pool_handle()

    def capture(self, fn: Callable[[], Any], pool):
        """Warm `fn` up on a side stream, then capture it into `pool`; returns the graph."""
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            fn()
        return graph

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()


class GraphSet:
    """Graphs captured into one private pool, against one set of buffers.

    The pool handle lives exactly as long as the set: a set is dropped whole (never graph
    by graph), and a new set mints a new handle. `buffers` are the data pointers of every
    tensor the graphs read or write; capturing against other buffers is a bug.
    """

    def __init__(self, api, buffers: tuple):
        self.pool = api.pool_handle()
        self.buffers = buffers
        self.graphs: dict[tuple[int, int], Any] = {}

    def capture(self, api, key: tuple[int, int], fn: Callable[[], Any], buffers: tuple):
        assert key not in self.graphs, f"graph {key} captured twice"
        assert buffers == self.buffers, "decoder buffers moved while their graphs were alive"
        graph = api.capture(fn, self.pool)
        self.graphs[key] = graph
        return graph
