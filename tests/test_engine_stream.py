"""chatvlm.engine.stream: one continuous engine over a stream of pages.

A tiny random-weight Qwen2-VL checkpoint (real classes, fp32 on CPU, greedy) behind the
plain ModelAdapter of tests/test_engine_runner.py. Nine pages of different sizes that stop
at different points go through `GenerationRunner.generate_stream` with three rows, taken
lazily from a generator; each must come out with the tokens plain `model.generate` gives
it alone. Failures are injected where they happen for real: a processor that cannot take
one page, an out-of-memory error inside the decoder's step, an engine step that breaks.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from chatvlm.config import BackendOptions, GenerationParams
from chatvlm.engine import lm as decode
from chatvlm.engine.decoder import StaticDecoder
from chatvlm.engine.runner import GenerationRunner
from chatvlm.testing import build_tiny_checkpoint
from tests.conftest import noise_page_records
from tests.test_engine_runner import PlainQwenAdapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = [(120, 90), (64, 200), (300, 160), (90, 90), (200, 64), (150, 150), (70, 110), (180, 120), (100, 60)]
MAX_NEW = 24
PARAMS = GenerationParams(max_new_tokens=MAX_NEW, repetition_penalty=1.0, loop_guard=False)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    # a slight push towards EOS: pages stop at different points within the budget
    return PlainQwenAdapter(build_tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen"), eos_boost=1.5))


def _pages():
    return noise_page_records(SIZES, seed=5)


@pytest.fixture(scope="module")
def reference(adapter):
    """(text, output tokens, finish reason) of each page alone (one row, no engine)."""
    runner = GenerationRunner(adapter, BackendOptions(device="cpu", extra={"decode_slots": 0}), {})
    return [(r.text, r.output_tokens, r.finish_reason) for p in _pages() for r in runner.generate([p], "text", PARAMS)]


def _runner(adapter, slots=3, **extra):
    return GenerationRunner(adapter, BackendOptions(device="cpu", extra={"decode_slots": slots, **extra}), {})


def _lazy(pages, taken):
    """The pages one at a time, noting how many the stream has taken."""
    for page in pages:
        taken.append(page.index)
        yield page


def _texts(results):
    got = {}
    for page, raw in results:
        assert page.index not in got, "a page came out twice"
        got[page.index] = (raw.text, raw.output_tokens, raw.finish_reason) if raw.error is None else raw.error
    return [got[i] for i in sorted(got)], len(got)


def test_a_stream_gives_each_page_what_it_gets_alone(adapter, reference):
    lengths = {n for _, n, _ in reference}
    assert len(lengths) > 3 and any(reason == "stop" for _, _, reason in reference)   # really mixed
    runner = _runner(adapter)
    taken: list[int] = []
    stream = runner.generate_stream(_lazy(_pages(), taken), "text", PARAMS)
    order, taken_at_finish = [], []
    for page, raw in stream:
        order.append(page.index)
        taken_at_finish.append(len(taken))
        assert raw.generate_s > 0 and raw.preprocess_s > 0 and raw.extra["continuous"]
    assert sorted(order) == list(range(len(SIZES)))
    assert order != sorted(order)                       # short pages overtake long ones
    assert taken_at_finish[0] < len(SIZES)              # the first page came out before the stream ran dry
    stream = runner.generate_stream(iter(_pages()), "text", PARAMS)
    got, n = _texts(stream)
    assert n == len(SIZES) and got == reference
    facts = runner.facts
    assert facts["decode"] == decode.STATIC and facts["decode_continuous"] and facts["decode_slots"] == 3
    assert facts["continuous_prefills"] > 1 and stream.groups == facts["continuous_prepares"]
    assert 0 < stream.busy_s


def test_a_page_that_cannot_be_prepared_fails_alone(adapter, reference):
    pages = _pages()
    bad = pages[4]
    build = adapter.build_inputs

    def build_inputs(group, task, params):
        if any(p is bad for p in group):
            raise ValueError("cannot identify image file")
        return build(group, task, params)

    adapter.build_inputs = build_inputs
    try:
        runner = _runner(adapter)
        got, n = _texts(runner.generate_stream(iter(pages), "text", PARAMS))
    finally:
        del adapter.build_inputs
    assert n == len(SIZES)
    assert got[4] == "ValueError: cannot identify image file"
    assert [g for i, g in enumerate(got) if i != 4] == [r for i, r in enumerate(reference) if i != 4]
    assert runner.facts["decode_continuous"] and not runner.continuous_disabled


def test_out_of_memory_in_a_step_halves_the_rows_and_loses_no_page(adapter, reference, monkeypatch):
    """From the 6th step on, a step of more than one row runs out of memory: the engine
    starts again with half the rows, then one; every page comes out as alone."""
    calls = {"steps": 0, "raised": 0}
    step = StaticDecoder._run_step

    def step_on_a_full_card(self, b, *args, **kwargs):
        calls["steps"] += 1
        if calls["steps"] >= 6 and b > 1:
            calls["raised"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return step(self, b, *args, **kwargs)
    monkeypatch.setattr(StaticDecoder, "_run_step", step_on_a_full_card)
    runner = _runner(adapter, slots=4)
    shrunk = []
    stream = runner.generate_stream(iter(_pages()), "text", PARAMS, on_shrink=shrunk.append)
    given = []
    got = {}
    for page, raw in stream:
        given.append(page.index)
        got[page.index] = (raw.text, raw.output_tokens, raw.finish_reason)
    assert sorted(given) == list(range(len(SIZES)))     # every page once
    assert [got[i] for i in range(len(SIZES))] == reference
    assert calls["raised"] == 2 and shrunk == [2, 1]
    assert runner.decode_slots() == 1 and runner.facts["decode_slots_lowered_to"] == 1
    assert runner.facts["continuous_engines"] == 3 and runner.facts["decode_continuous"]


def test_a_page_out_of_memory_alone_is_retried_once_then_fails(adapter, reference, monkeypatch):
    pages = _pages()
    heavy = pages[2]
    prefill = StaticDecoder._prefill
    tries = []

    def prefill_on_a_full_card(self, inputs, *args, **kwargs):
        if inputs["input_ids"].shape[1] == heavy_len:
            tries.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (injected)")
        return prefill(self, inputs, *args, **kwargs)
    heavy_len = adapter.build_inputs([heavy], "text", PARAMS)["input_ids"].shape[1]
    assert all(adapter.build_inputs([p], "text", PARAMS)["input_ids"].shape[1] != heavy_len
               for p in pages if p is not heavy)
    monkeypatch.setattr(StaticDecoder, "_prefill", prefill_on_a_full_card)
    runner = _runner(adapter, slots=1, decode_refill_chunk=1)
    got, n = _texts(runner.generate_stream(iter(pages), "text", PARAMS))
    assert n == len(SIZES) and len(tries) == 2           # the first try, and once more alone
    assert "OutOfMemoryError" in got[2]
    assert [g for i, g in enumerate(got) if i != 2] == [r for i, r in enumerate(reference) if i != 2]


def test_a_broken_engine_hands_the_rest_to_the_batch_path(adapter, reference, monkeypatch):
    calls = {"steps": 0}
    step = StaticDecoder._run_step

    def breaking_step(self, b, *args, **kwargs):
        calls["steps"] += 1
        if calls["steps"] == 8:
            raise RuntimeError("illegal memory access in a continuous step")
        return step(self, b, *args, **kwargs)
    monkeypatch.setattr(StaticDecoder, "_run_step", breaking_step)
    runner = _runner(adapter)
    batches = []

    def fallback(batch):
        batches.append([p.index for p in batch])
        return runner.generate(batch, "text", PARAMS)
    got, n = _texts(runner.generate_stream(iter(_pages()), "text", PARAMS, fallback=fallback))
    assert n == len(SIZES) and got == reference
    assert batches and all(len(b) <= 3 for b in batches)
    assert not runner.facts["decode_continuous"] and "illegal memory access" in runner.facts["decode_continuous_reason"]
    assert runner.facts["continuous_engines"] == 1 and runner.facts["continuous_fallbacks"] == 1
    assert "illegal memory access" in runner.facts["continuous_first_fallback_reason"]
    assert runner.generate_stream(iter(_pages()), "text", PARAMS) is None    # off for the rest of the run


def test_a_stream_the_engine_declines_goes_batch_by_batch(adapter, reference):
    runner = _runner(adapter, decode_max_len=8)      # shorter than any prompt
    got, n = _texts(runner.generate_stream(iter(_pages()), "text", PARAMS))
    assert n == len(SIZES) and got == reference
    assert "cache limit" in runner.facts["decode_continuous_reason"]
    facts = runner.facts
    assert facts["continuous_engines"] == 1 and facts["continuous_fallbacks"] == 1
    assert facts["decode_fallbacks"] == 3 and "cache limit" in facts["decode_first_fallback_reason"]   # 9 pages, 3 a batch


def test_hold_keeps_new_pages_out_while_rows_decode(adapter, reference):
    """While `hold` says so, no new page is taken; with no row left it must let more in."""
    runner = _runner(adapter)
    taken: list[int] = []
    asked = []
    state = {"given": 0}

    def hold(idle):
        asked.append(idle)
        return not idle and len(taken) - state["given"] >= 2     # at most two pages out at a time

    stream = runner.generate_stream(_lazy(_pages(), taken), "text", PARAMS, hold=hold)
    got = {}
    for page, raw in stream:
        assert len(taken) - state["given"] <= 2
        state["given"] += 1
        got[page.index] = (raw.text, raw.output_tokens, raw.finish_reason)
    assert [got[i] for i in range(len(SIZES))] == reference
    assert asked                                       # asked before each new page
    assert runner.facts["continuous_prefill_rows_max"] <= 2
    assert runner.generate_stream([], "text", PARAMS) is not None
    assert list(runner.generate_stream([], "text", PARAMS)) == []
