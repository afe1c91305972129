"""The model-agnostic generation engine: the static decoder and continuous batching over it.

Nothing here knows a model family: the backend hands the engine a `prepare` callable
(a group of requests -> model inputs and arguments for the model's own prefill, plus
logits processors), a stop-tracker factory and the token budget.

    decoder     StaticDecoder: greedy decode with a static KV cache and our own step
    lm          the language model's parts (find_lm), what the decoder declines (Unsupported)
    cache       the slot cache buffers (grown, filled from a prefill, rows moved)
    rope        cos/sin tables, positions, LongRoPE's two factor sets
    graphs      CUDA graphs: capture sizes, the capture seam, one pool per graph set
    moe         static-shape mixture-of-experts feed-forward (DeepSeek-MoE)
    continuous  continuous batching over the static decoder's slots
    admission   which waiting requests one prefill takes (token budget, LongRoPE sides)
    batch       one batch through the static decoder, generate as the fallback
    generation  stop tracking, logits processors, generate() arguments, ids -> RawOutput
    memory      batch sizing: the measured probe, the KV-cache estimate
"""

from .continuous import ContinuousEngine, Finished, Prepared, continuous_unsupported
from .decoder import StaticDecoder
from .lm import HF, STATIC, Unsupported, unsupported_reason

__all__ = ["ContinuousEngine", "Finished", "Prepared", "continuous_unsupported", "StaticDecoder",
           "HF", "STATIC", "Unsupported", "unsupported_reason"]
