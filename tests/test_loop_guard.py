"""Loop guard: token-level detection, text trimming, per-row tracking, anti-repetition processors."""

import pytest
import torch

from chatvlm.loop_guard import (GenerationTracker, PaddingSafeRepetitionPenalty, WindowedNoRepeatNGram,
                                find_token_loop, is_markup_only, make_tracker, markup_window, trim_repetition)


# ----------------------------------------------------------------- token level

def test_exact_loop_found_with_start_and_period():
    prefix = list(range(100, 160))
    block = [7, 8, 9, 10, 11]
    ids = prefix + block * 60
    loop = find_token_loop(ids, min_repeats=8, min_span=256)
    assert loop is not None and loop.period == 5
    assert loop.start == len(prefix)
    assert ids[:loop.keep] == prefix + block


def test_short_or_legitimate_repeats_are_not_loops():
    dotted_leader = list(range(50)) + [13] * 40 + list(range(60, 90))       # "........" then text
    assert find_token_loop(dotted_leader) is None
    table = []
    for r in range(12):                                                      # 12 rows that differ in one id
        table += [1, 2, 3, 100 + r, 4, 5, 6, 7]
    assert find_token_loop(table) is None
    assert find_token_loop([5] * 100, min_span=256) is None                  # too short to judge


def test_near_periodic_low_diversity_tail_is_a_loop():
    ids = list(range(300, 400)) + ([9] * 19 + [10]) * 30                     # an n-gram ban breaking the period
    loop = find_token_loop(ids, min_repeats=8, min_span=256, max_period=8)
    assert loop is not None


# ----------------------------------------------------------------- text level

def test_trim_repetition_keeps_one_copy_of_the_repeated_block():
    head = "Invoice 42\nTotal: 100 EUR\n"
    text = head + "| 0 | 0 | 0 |\n" * 60 + "| 0 | 0"
    trimmed, did = trim_repetition(text)
    assert did
    assert trimmed.startswith(head)
    assert trimmed.count("| 0 | 0 | 0 |") == 1


def test_trim_repetition_repeated_lines_with_varying_whitespace():
    text = "Title\n\n" + "".join(f"the same line{' ' * (i % 3)}\n" for i in range(12))
    trimmed, did = trim_repetition(text)
    assert did and trimmed == "Title\n\nthe same line"


def test_trim_repetition_leaves_normal_text_alone():
    text = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))
    assert trim_repetition(text) == (text, False)
    short = "Contents ........................ 5\nIntro .......... 7"
    assert trim_repetition(short) == (short, False)


# ----------------------------------------------------------------- per-row tracker

def test_tracker_records_stop_loop_and_length_per_row():
    prompt_len = 3
    tracker = make_tracker(prompt_len, 3, stop_ids=[99], loop_guard=True, min_span=8, min_repeats=4, check_every=1)
    rows = [[1, 2, 3], [1, 2, 3], [0, 0, 1]]           # row 2 is left-padded
    gen = [[5, 6, 99, 0, 0, 0, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4, 4, 4, 4, 4], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]
    done_seen = []
    for step in range(1, 11):
        ids = torch.tensor([r + g[:step] for r, g in zip(rows, gen)])
        done_seen.append(tracker(ids, None).tolist())
    assert tracker.result(0, 10) == (3, "stop")                 # the stop token is counted
    assert tracker.result(1, 10) == (8, "loop")                 # stopped once 8 repeated tokens were seen
    assert tracker.result(2, 10) == (10, "length")
    assert done_seen[2] == [True, False, False]                 # only the finished row is stopped
    assert done_seen[7] == [True, True, False]


def test_tracker_stop_strings_use_decoded_tail():
    decode = lambda ids: "".join(chr(i) for i in ids)  # noqa: E731
    tracker = GenerationTracker(0, 1, stop_strings=["END"], decode=decode, loop_guard=False)
    text = [ord(c) for c in "abcEND"]
    for step in range(1, len(text) + 1):
        tracker(torch.tensor([text[:step]]))
    assert tracker.result(0, 6) == (6, "stop")


def test_tracker_loop_guard_off_never_stops():
    tracker = make_tracker(0, 1, loop_guard=False, min_span=4, min_repeats=2, check_every=1)
    for step in range(1, 30):
        assert not tracker(torch.tensor([[4] * step]), None).any()
    assert tracker.result(0, 29) == (29, "length")


# ----------------------------------------------------------------- anti-repetition processors

def _reference_banned(ids, n, window, whitelist):
    """The official DeepSeek-OCR NoRepeatNGramLogitsProcessor rule, verbatim logic."""
    if len(ids) < n:
        return set()
    prefix = tuple(ids[-(n - 1):])
    banned = set()
    for i in range(max(0, len(ids) - window), len(ids) - n + 1):
        ngram = tuple(ids[i:i + n])
        if ngram[:-1] == prefix:
            banned.add(ngram[-1])
    return banned - set(whitelist)


@pytest.mark.parametrize("n,window", [(3, 10), (4, 50), (2, 5)])
def test_windowed_ngram_matches_the_official_rule(n, window):
    g = torch.Generator().manual_seed(n * 100 + window)
    proc = WindowedNoRepeatNGram(n, window, prompt_len=0, whitelist=[3])
    for _ in range(20):
        ids = torch.randint(0, 6, (60,), generator=g).tolist()
        assert proc.banned_tokens(ids) == _reference_banned(ids, n, window, [3])


def test_windowed_ngram_bans_per_row_after_the_prompt_only():
    proc = WindowedNoRepeatNGram(2, 90, prompt_len=2, whitelist=[])
    input_ids = torch.tensor([[5, 6, 1, 2, 1], [1, 2, 7, 8, 9]])
    scores = proc(input_ids, torch.zeros(2, 10))
    assert scores[0, 2] == float("-inf") and torch.isfinite(scores[0]).sum() == 9   # "1 2" seen -> ban 2 after 1
    assert torch.isfinite(scores[1]).all()                                           # prompt "1 2" does not count


def test_windowed_ngram_bans_the_token_that_would_repeat_an_ngram():
    guard = WindowedNoRepeatNGram(3, 100, prompt_len=0)
    assert guard.banned_tokens([5, 6, 7, 5, 6]) == {7}          # "5 6 7" would repeat
    assert guard.banned_tokens([5, 6, 7, 5, 8]) == set()
    assert guard.banned_tokens([5, 6]) == set()                 # shorter than n


def test_windowed_ngram_window_limits_where_an_earlier_ngram_may_start():
    seq = [5, 6, 7] + [9] * 10 + [1, 2, 3, 5, 6]
    assert WindowedNoRepeatNGram(3, 100, prompt_len=0).banned_tokens(seq) == {7}
    # window 10: the search starts at len - 10 = 8, after the early "5 6 7"
    assert WindowedNoRepeatNGram(3, 10, prompt_len=0).banned_tokens(seq) == set()
    assert WindowedNoRepeatNGram(2, 2, prompt_len=0).banned_tokens([9, 9, 9, 9]) == {9}


def test_windowed_ngram_exempts_the_official_table_cell_tags():
    from chatvlm.models.deepseek_ocr.processing import OFFICIAL_TOKEN_IDS

    td, td_end = OFFICIAL_TOKEN_IDS["<td>"], OFFICIAL_TOKEN_IDS["</td>"]
    seq = [td, 4, td_end, td, 4]
    assert WindowedNoRepeatNGram(3, 100, prompt_len=0).banned_tokens(seq) == {td_end}
    assert WindowedNoRepeatNGram(3, 100, prompt_len=0, whitelist=[td, td_end]).banned_tokens(seq) == set()


def test_repetition_penalty_ignores_left_padding():
    proc = PaddingSafeRepetitionPenalty(1.5, pad_lengths=[2, 0])
    scores = torch.tensor([[1.0, 2.0, -1.0, 3.0, 0.5]] * 2)
    input_ids = torch.tensor([[0, 0, 1, 2], [1, 2, 1, 2]])     # pad id 0 only in padding of row 0
    out = proc(input_ids, scores.clone())
    assert torch.equal(out[0], out[1])                         # same real tokens -> same scores
    assert out[0, 0] == 1.0                                    # the pad id is not penalised
    assert out[0, 1] == pytest.approx(2.0 / 1.5) and out[0, 2] == pytest.approx(-1.5)


def test_no_repeat_ngram_rows_bans_only_enabled_rows_and_follows_compaction():
    import torch

    from chatvlm.loop_guard import NoRepeatNGramRows

    ids = torch.tensor([[5, 1, 2, 3, 1, 2], [5, 1, 2, 3, 1, 2], [7, 7, 7, 7, 7, 7]])
    proc = NoRepeatNGramRows(3, [True, False, True])
    out = proc(ids, torch.zeros(3, 10))
    assert out[0, 3] == float("-inf") and torch.isfinite(out[0, :3]).all()   # "1 2 3" seen: 3 banned
    assert torch.isfinite(out[1]).all()                                      # row off: untouched
    assert out[2, 7] == float("-inf")
    kept = proc.select_rows([2, 1])                                          # after compaction
    assert kept.enabled == [True, False]
    out = kept(ids[[2, 1]], torch.zeros(2, 10))
    assert out[0, 7] == float("-inf") and torch.isfinite(out[1]).all()


# ----------------------------------------------------------------- forms and tables are not loops
#
# Outputs written as the models emit them; one token per character (decode = chr), which
# makes a row 30-50 tokens long, as long as or longer than with a real BPE tokenizer.

def char_ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def char_decode(ids) -> str:
    return "".join(chr(int(i)) for i in ids)


BLANK_FORM_MD = (
    "# Equipment checkout form\n\nDepartment: ________________  Date: ____________\n\n"
    "| No. | Item | Serial number | Signature |\n|-----|------|---------------|-----------|\n"
    + "|     |      |               |           |\n" * 20
    + "\nReturned in good condition: ____________\n\nApproved by: ____________\n")
BLANK_TABLE_HTML = (
    "<table><tr><th>Date</th><th>Description</th><th>Debit</th><th>Credit</th></tr>"
    + "<tr><td></td><td></td><td></td><td></td></tr>" * 20
    + "</table>\n\nTotals carried forward to page 2.\n")
CONTENTS = ("## Contents\n\n" + "".join(f"{title} {'.' * 60} {page}\n" for title, page in
            [("Introduction", 1), ("Methods", 4), ("Results", 9), ("Discussion", 15)])
            + "\n" + ("-" * 72 + "\n") * 12 + "\nNotes:\n" + ("_" * 72 + "\n") * 20 + "\nEnd of form.\n")


@pytest.mark.parametrize("page", [BLANK_FORM_MD, BLANK_TABLE_HTML, CONTENTS], ids=["md-rows", "html-rows", "leaders"])
def test_blank_forms_and_tables_are_not_loops(page):
    ids = char_ids(page)
    repeat_end = page.rindex("|\n" if page is BLANK_FORM_MD else ("</tr>" if page is BLANK_TABLE_HTML else "_\n"))
    cut_in_rows = ids[:repeat_end]           # what the guard sees while the model is in the rows
    assert find_token_loop(cut_in_rows) is not None       # the plain rule would stop the page here ...
    assert find_token_loop(cut_in_rows, decode=char_decode) is None     # ... markup repeats are exempt
    # Through the tracker, step by step, as during generation: the page is never stopped.
    tracker = GenerationTracker(0, 1, decode=char_decode)
    for step in range(8, len(ids) + 1, 8):                   # the guard looks every 8 tokens
        assert not tracker(torch.tensor([ids[:step]])).any()
    assert tracker.result(0, len(ids)) == (len(ids), "length")
    # A page that ran out of tokens inside the rows keeps them (text-level trim).
    assert trim_repetition(page[:repeat_end]) == (page[:repeat_end], False)


def test_true_loops_are_still_cut():
    sentence = "The committee approved the budget for the next fiscal year. "
    text_row = "<tr><td>Total</td><td>0.00</td><td>0.00</td></tr>"
    md_row = "| Signature | ____ | Date | ____ |\n"
    for block in (sentence, text_row, md_row):
        page = "# Minutes\n\nOpening remarks.\n\n" + block * 50
        loop = find_token_loop(char_ids(page), decode=char_decode)
        assert loop is not None and loop.period == len(block)
        trimmed, did = trim_repetition(page)
        assert did and trimmed.count(block.strip()) == 1
    # A model stuck emitting empty rows is stopped too, past what a page can hold.
    stuck = BLANK_TABLE_HTML.split("</table>")[0] + "<tr><td></td><td></td><td></td><td></td></tr>" * 300
    ids = char_ids(stuck)
    loop = find_token_loop(ids[-markup_window():], decode=char_decode)
    assert loop is not None and loop.repeats >= 100
    tracker = GenerationTracker(0, 1, decode=char_decode)
    for step in range(8, len(ids) + 1, 8):
        if tracker(torch.tensor([ids[:step]])).any():
            break
    n, reason = tracker.result(0, len(ids))
    assert reason == "loop" and n < len(ids)
    trimmed, did = trim_repetition(stuck)
    assert did and trimmed.count("<tr><td></td>") == 1


@pytest.mark.parametrize("text, markup", [
    ("<tr><td></td><td></td></tr>\n", True),
    ("td></td><td></td></tr><tr><", True),               # a repeat starts anywhere in a row
    ("<td colspan=\"2\"></td>", True),
    ("|     |     |\n|-----|:---:|\n", True),
    (" & & \\\\ \\hline\n", True),                         # LaTeX tabular row
    ("........ ________ ---- ==== …… —— ", True),
    ("<tr><td>Total</td></tr>", False),
    ("| 1 | |\n", False),
    ("Signature: ____\n", False),
])
def test_is_markup_only(text, markup):
    assert is_markup_only(text) is markup
