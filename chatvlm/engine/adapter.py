"""The model adapter protocol: what the engine needs from a model, as data and callables
(chatvlm.backends.hf.HFBackend and its subclasses implement it)."""

from __future__ import annotations

from typing import Any, Optional, Protocol

from ..config import GenerationParams


class ModelAdapter(Protocol):
    """What the engine needs from a model: data and callables, nothing else."""

    model: Any                          # the loaded model (its generate; the static decoder serves it)
    device: str
    loop_settings: dict[str, Any]       # loop-guard thresholds (loop_guard.GenerationTracker keywords)

    def build_inputs(self, requests: list, task: str, params: GenerationParams) -> dict:
        """The model inputs for a group of requests (one processor call, left-padded)."""

    def to_device(self, inputs: dict) -> dict:
        """`build_inputs`' output on the model's device and dtype."""

    def stop_token_ids(self) -> list[int]: ...
    def stop_strings(self) -> list[str]: ...

    def logits_processors(self, task: str, params: GenerationParams, inputs: dict) -> list:
        """The model's own processors (anti-repetition bans and the like) for this batch."""

    def repetition_penalty(self, params: GenerationParams) -> float: ...
    def max_new_tokens(self, params: GenerationParams) -> int: ...

    def max_positions(self) -> Optional[int]:
        """The language model's context length (None: unknown, no cap)."""

    def pad_token_id(self) -> int: ...
    def bos_token_id(self) -> Optional[int]: ...

    def decode(self, ids: list[int]) -> str:
        """Generated ids as the page's text."""

    def decode_raw(self, ids: list[int]) -> str:
        """Ids as text with special tokens kept (stop strings, loop detection)."""
