"""The official windowed no-repeat n-gram guard (DeepSeek-OCR's anti-loop tool)."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList

from chatvlm.models.deepseek_ocr.ngram import (OFFICIAL_WHITELIST, WindowedNoRepeatNGramLogitsProcessor,
                                               banned_tokens)
from chatvlm.models.deepseek_ocr.testing import build_tiny_tokenizer


def test_bans_the_token_that_would_repeat_an_ngram():
    # generated: 5 6 7 | 5 6 -> "5 6 7" would repeat
    assert banned_tokens([5, 6, 7, 5, 6], ngram_size=3, window_size=100) == {7}
    assert banned_tokens([5, 6, 7, 5, 8], ngram_size=3, window_size=100) == set()
    assert banned_tokens([5, 6], ngram_size=3, window_size=100) == set()  # shorter than n


def test_window_limits_where_an_earlier_ngram_may_start():
    seq = [5, 6, 7] + [9] * 10 + [1, 2, 3, 5, 6]
    assert banned_tokens(seq, 3, window_size=100) == {7}
    # window 10: search starts at len-10 = 8, after the early "5 6 7"
    assert banned_tokens(seq, 3, window_size=10) == set()
    assert banned_tokens([9, 9, 9, 9], 2, window_size=2) == {9}


def test_table_cell_tags_are_exempt():
    td, td_end = sorted(OFFICIAL_WHITELIST)
    seq = [td, 4, td_end, td, 4]
    assert banned_tokens(seq, 3, 100) == {td_end} and banned_tokens(seq, 3, 100, OFFICIAL_WHITELIST) == set()


def test_processor_looks_at_generated_tokens_only_per_row():
    proc = WindowedNoRepeatNGramLogitsProcessor(ngram_size=2, window_size=50, prompt_len=3, whitelist_token_ids=[])
    ids = torch.tensor([[4, 4, 4, 1, 2, 1],    # generated 1 2 1 -> ban 2
                        [2, 1, 2, 3, 5, 6]])   # prompt "2 1 2" ignored; generated 3 5 6: nothing
    scores = proc(ids, torch.zeros(2, 10))
    assert torch.isinf(scores[0, 2]) and torch.isfinite(scores[0]).sum() == 9
    assert torch.isfinite(scores[1]).all()


def test_prompt_length_defaults_to_the_first_call(tmp_path):
    tok = build_tiny_tokenizer(tmp_path)
    proc = WindowedNoRepeatNGramLogitsProcessor.from_tokenizer(tok, ngram_size=2, window_size=10)
    assert proc.whitelist == {821, 822}  # <td>, </td> in the tiny vocabulary
    proc(torch.tensor([[7, 7, 7]]), torch.zeros(1, 16))  # first call: the prompt
    out = proc(torch.tensor([[7, 7, 7, 3, 9, 3]]), torch.zeros(1, 16))
    assert torch.isinf(out[0, 9]) and torch.isfinite(out[0]).sum() == 15
    assert isinstance(LogitsProcessorList([proc]), LogitsProcessorList)
