"""chatvlm.engine.admission: which prepared requests one prefill takes (pure Python)."""

from chatvlm.engine.admission import fits, prefill_tokens, take_now


def test_prefill_size_counts_the_padding():
    assert prefill_tokens([100, 300, 200]) == 900          # three rows padded to the longest
    assert prefill_tokens([]) == 0
    assert fits([], 10_000, 100)                           # an empty prefill takes anything
    assert fits([100, 200], 300, 900) and not fits([100, 200], 301, 900)


def test_take_now_keeps_stream_order_within_the_budget():
    assert take_now([300, 300, 300], budget=900) == [0, 1, 2]
    assert take_now([300, 300, 301], budget=900) == [0, 1]
    assert take_now([100, 500, 100], budget=900) == [0]          # two rows padded to 500: over
    assert take_now([5000, 10], budget=900) == [0]              # the first goes, however long
    assert take_now([], budget=900) == []


def test_take_now_keeps_one_side_of_longrope_s_original_context():
    # the first request's side: within (<= 48), then beyond (> 48)
    assert take_now([30, 52, 40, 48], budget=10_000, original=48) == [0, 2, 3]
    assert take_now([52, 30, 60], budget=10_000, original=48) == [0, 2]
    assert take_now([30, 52, 40], budget=10_000) == [0, 1, 2]   # no LongRoPE: no sides
