"""The official windowed no-repeat n-gram guard, as a transformers LogitsProcessor.

DeepSeek-OCR's runners ban, at each step, every token that would complete an n-gram already
seen among the last `window_size` *generated* tokens, except whitelisted ids (``<td>``,
``</td>``: table cells legitimately repeat). transformers' own ``no_repeat_ngram_size``
looks at the whole sequence, prompt included, and has no window or whitelist.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from transformers import LogitsProcessor

from .processing import OFFICIAL_TOKEN_IDS

OFFICIAL_WHITELIST = frozenset({OFFICIAL_TOKEN_IDS["<td>"], OFFICIAL_TOKEN_IDS["</td>"]})
# (ngram_size, window_size) used by the official runners.
OFFICIAL_SETTINGS = {"pdf": (20, 50), "image": (30, 90), "eval": (40, 90)}


def banned_tokens(generated: list[int], ngram_size: int, window_size: int,
                  whitelist: Iterable[int] = ()) -> set[int]:
    """Tokens that would repeat an n-gram inside the window (the official rule, verbatim in
    behaviour: the window bounds where an earlier n-gram may *start*)."""
    if len(generated) < ngram_size:
        return set()
    prefix = tuple(generated[len(generated) - (ngram_size - 1):]) if ngram_size > 1 else ()
    banned = set()
    for i in range(max(0, len(generated) - window_size), len(generated) - ngram_size + 1):
        if tuple(generated[i:i + ngram_size - 1]) == prefix:
            banned.add(generated[i + ngram_size - 1])
    return banned - set(whitelist)


class WindowedNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Pass via ``generate(logits_processor=LogitsProcessorList([...]))``.

    `prompt_len` is the padded prompt length (``input_ids.shape[1]`` of a left-padded batch);
    when None it is taken from the first call, so use one instance per ``generate`` call.
    """

    def __init__(self, ngram_size: int, window_size: int = 100, prompt_len: int | None = None,
                 whitelist_token_ids: Iterable[int] = OFFICIAL_WHITELIST) -> None:
        if ngram_size <= 0 or window_size <= 0:
            raise ValueError("ngram_size and window_size must be positive")
        self.ngram_size, self.window_size = ngram_size, window_size
        self.prompt_len = prompt_len
        self.whitelist = frozenset(int(t) for t in whitelist_token_ids)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, ngram_size: int, window_size: int = 100,
                       prompt_len: int | None = None) -> "WindowedNoRepeatNGramLogitsProcessor":
        """Whitelist looked up by name, so it follows the tokenizer's ids (e.g. a tiny vocab)."""
        ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<td>", "</td>")]
        return cls(ngram_size, window_size, prompt_len, [i for i in ids if i is not None and i >= 0])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] < self.ngram_size:
            return scores
        for row, seq in enumerate(generated.tolist()):
            banned = banned_tokens(seq, self.ngram_size, self.window_size, self.whitelist)
            if banned:
                scores[row, list(banned)] = float("-inf")
        return scores
