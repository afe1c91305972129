"""What passes between the continuous engine and its caller, request by request: a group
ready for the model's prefill, a request finished or failed, and the error `prepare` raises
for requests that cannot be prepared."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prepared:
    """A group of requests ready for the model's prefill (built by the backend)."""
    inputs: dict               # model inputs on the device; input_ids / attention_mask [n, length]
    gen_kwargs: dict           # `generate` arguments (generation_config, logits_processor, ...)
    processors: list = field(default_factory=list)   # logits processors for the group's rows


@dataclass
class Finished:
    """One request done."""
    index: int                 # its place in the request stream
    request: Any
    tokens: list[int]          # generated ids up to the end (a stop token included)
    reason: str                # "stop" | "loop" | "length"
    input_tokens: int          # real (unpadded) prompt tokens
    tracker: Any               # the request's stop tracker (loop details)


@dataclass
class Failed:
    """One request whose inputs could not be prepared (its own `RequestError`)."""
    index: int
    request: Any
    error: BaseException


class RequestError(Exception):
    """Raised by `prepare`: the group's requests themselves cannot be prepared (a bad image, a
    processor error), so the engine finds the bad one and goes on; `error` is the cause."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error
