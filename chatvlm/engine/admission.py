"""Which waiting requests one prefill takes (pure Python: counts in, a choice out).

A prefill stalls every row that is decoding, so its size is bounded by a token budget:
the prefill computes `rows x longest prompt` tokens (left padding included), and takes
requests in stream order while that stays within `prefill_tokens`. At least one request
is always taken, however long its prompt.

LongRoPE (Phi-3): a prefill picks one factor set for all its rows, from its longest
prompt (long iff it is longer than the original context), while each page alone picks by
its own prompt. So a prefill takes prompts from one side of the original context only:
the side of the first request in stream order.

A request's prompt length is known once it has been prepared; the engine remembers it, so
a request held back is not prepared again for nothing (`fits`).
"""

from __future__ import annotations

from typing import Optional

DEFAULT_PREFILL_TOKENS = 8192   # rows x longest prompt per prefill: a few pages' worth


def prefill_tokens(counts: list[int]) -> int:
    """Tokens a left-padded prefill of prompts with `counts` tokens computes."""
    return len(counts) * max(counts) if counts else 0


def fits(counts: list[int], count: int, budget: int) -> bool:
    """Whether a prompt of `count` tokens can join a prefill of prompts with `counts` (an
    empty prefill takes anything)."""
    return not counts or prefill_tokens(counts + [count]) <= budget


def take_now(counts: list[int], *, budget: int, original: Optional[int] = None) -> list[int]:
    """Positions (in group order) of the prepared requests to prefill now; the others wait.
    The first request always goes; then requests on its side of LongRoPE's original
    context (if any), in order, while the prefill stays within `budget` tokens."""
    if not counts:
        return []
    side = original and counts[0] > original
    now, taken = [0], [counts[0]]
    for i in range(1, len(counts)):
        if original and (counts[i] > original) != side:
            continue
        if not fits(taken, counts[i], budget):
            break
        now.append(i)
        taken.append(counts[i])
    return now
