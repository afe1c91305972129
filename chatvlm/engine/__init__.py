"""The model-agnostic generation engine: continuous batching over the static decoder.

Nothing here knows a model family: the backend hands the engine a `prepare` callable
(a group of requests -> model inputs and arguments for the model's own prefill, plus
logits processors), a stop-tracker factory and the token budget.

    continuous  continuous batching over the static decoder's slots
    batch       one batch through the static decoder, generate as the fallback
    generation  stop tracking, logits processors, generate() arguments, ids -> RawOutput
    memory      batch sizing: the measured probe, the KV-cache estimate
"""

from .continuous import ContinuousEngine, Finished, Prepared, continuous_unsupported

__all__ = ["ContinuousEngine", "Finished", "Prepared", "continuous_unsupported"]
