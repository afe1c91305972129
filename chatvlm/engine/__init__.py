"""The model-agnostic generation engine: the static decoder and continuous batching over it.

Nothing here knows a model family: a model adapter (`runner.ModelAdapter`) hands the
engine its inputs for a group of requests, stop tokens, logits processors and the token
budget, as data and callables.

    adapter     the ModelAdapter protocol: what the engine needs from a model
    requests    what passes between the engine and its caller per request
    runner      which path a batch takes (continuous / batch / generate), its RawOutputs
    decoder     StaticDecoder: greedy decode with a static KV cache and our own step
    lm          the language model's parts (find_lm), what the decoder declines (Unsupported)
    cache       the slot cache buffers (grown, filled from a prefill, rows moved)
    rope        cos/sin tables, positions, LongRoPE's two factor sets
    graphs      CUDA graphs: capture sizes, the capture seam, one pool per graph set
    moe         static-shape mixture-of-experts feed-forward (DeepSeek-MoE)
    continuous  continuous batching over the static decoder's slots
    stream      a stream of pages through one continuous engine, failures without losing pages
    admission   which waiting requests one prefill takes (token budget, LongRoPE sides)
    batch       one batch through the static decoder, generate as the fallback
    generation  stop tracking, logits processors, generate() arguments, ids -> RawOutput
    memory      batch sizing: the measured probe, the KV-cache estimate

The package itself imports no torch: importing an adapter's module (`chatvlm models` reads
class attributes) stays cheap; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ContinuousEngine": "continuous", "Finished": "requests", "Prepared": "requests",
            "continuous_unsupported": "continuous", "GenerationRunner": "runner", "ModelAdapter": "adapter",
            "StaticDecoder": "decoder", "HF": "lm", "STATIC": "lm", "Unsupported": "lm", "unsupported_reason": "lm"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
