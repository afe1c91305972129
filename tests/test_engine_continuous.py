"""chatvlm.engine: continuous batching gives every page the tokens it gets alone.

Tiny random-weight checkpoints (Qwen2-VL, Qwen3-VL, GOT-OCR2, DeepSeek-OCR2 with its MoE
language model, Phi-3.5-vision with LongRoPE; real config/model/processor classes), fp32 on CPU,
greedy. A batch of pages of different sizes (different prompt lengths) and different
stop points runs through the engine with fewer slots than pages, so finished rows are
refilled mid-decode; each page must come out token for token as when it runs alone
through transformers' `generate`. No mocks: both paths run the real model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatvlm.config import BackendOptions, GenerationParams
from chatvlm.engine import STATIC, StaticDecoder
from chatvlm.registry import get_spec
from chatvlm.testing import build_tiny_checkpoint
from tests.conftest import noise_page_records, tiny_backends

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = [(120, 90), (64, 200), (300, 160), (90, 90), (200, 64), (150, 150), (70, 110)]


def _pages(sizes=SIZES, seed=3):
    return noise_page_records(sizes, seed)


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    return tiny_backends(tmp_path_factory, eos_boost=EOS_BOOST)


EOS_BOOST = {"qwen_vl_2b": 1.5, "got_ocr_hf": 1.5, "qwen3_vl_2b": 5.0, "deepseek_ocr2": 4.0}
MAX_NEW = 32


def _run(be, pages, *, slots=0, mode="fast", max_new=MAX_NEW):
    be.options.extra["decode"] = mode
    be.options.extra["decode_slots"] = slots
    out = be.generate_batch(pages, "text", GenerationParams(max_new_tokens=max_new))
    return [(r.text, r.output_tokens, r.finish_reason) for r in out], dict(be.describe())


def _alone(be, pages, max_new=MAX_NEW):
    """Each page on its own through transformers' generate."""
    return [_run(be, [p], mode="hf", max_new=max_new)[0][0] for p in pages]


@pytest.mark.parametrize("name", ["qwen_vl_2b", "qwen3_vl_2b", "got_ocr_hf", "deepseek_ocr2"])
def test_continuous_batch_equals_each_page_alone(backends, name):
    be = backends(name)
    pages = _pages()
    reference = _alone(be, pages)
    got, facts = _run(be, pages, slots=3)
    assert facts["decode"] == STATIC and facts.get("decode_continuous"), facts.get("decode_continuous_reason")
    assert got == reference
    lengths = [n for _, n, _ in reference]
    assert len(set(lengths)) > 2, lengths                         # really different stop points
    assert any(reason == "stop" for _, _, reason in reference)
    assert facts["continuous_prefills"] > 1                       # slots were refilled mid-run
    # a row decodes exactly until its page ends: one step per token after the prefill's first
    assert facts["continuous_busy_row_steps"] == sum(max(0, n - 1) for n in lengths)
    # no hole is ever computed on CPU: refills fill them, and once the pages run out the
    # busy rows move down
    assert facts["continuous_row_steps"] == facts["continuous_busy_row_steps"]


def test_prefills_are_sized_by_prompt_tokens(backends, monkeypatch):
    """A token budget per prefill (rows x longest prompt, padding included): four free
    slots, prompts of 346-380 tokens, 800 tokens per prefill: two pages per prefill, the
    others wait (prepared again on their own), and every page comes out as alone."""
    from chatvlm.engine import continuous

    be = backends("qwen_vl_2b")
    pages = _pages()
    reference = _alone(be, pages)
    monkeypatch.setattr(continuous, "DEFAULT_PREFILL_TOKENS", 800)
    got, facts = _run(be, pages, slots=4)
    assert facts.get("decode_continuous"), facts.get("decode_continuous_reason")
    assert got == reference
    assert facts["continuous_prefill_budget"] == 800
    assert facts["continuous_prefill_rows_max"] == 2 and facts["continuous_prefill_tokens_max"] <= 800
    assert facts["continuous_prefills"] >= 4 and facts["continuous_prepares"] > facts["continuous_prefills"]
    assert len({n for _, n, _ in reference}) > 2


def _prefills_between_steps(model, requests, budget: int):
    """(each request's tokens, the prefill sizes before the first step, the prefill sizes
    between any two later steps) from the engine with 5 slots and `budget` tokens per step."""
    from tests.test_decode_phi3 import _engine_tokens

    decoder = StaticDecoder(model)
    events, real_prefill, real_step = [], decoder._prefill, decoder._run_step

    def prefill(inputs, gen_kwargs):
        events.append(inputs["input_ids"].numel())       # rows x longest prompt
        return real_prefill(inputs, gen_kwargs)

    def step(b, filled):
        events.append("step")
        return real_step(b, filled)

    decoder._prefill, decoder._run_step = prefill, step
    got, engine, _ = _engine_tokens(model, requests, slots=5, decoder=decoder, prefill_tokens=budget)
    first = events.index("step")
    runs, run = [], []
    for event in events[first:] + ["step"]:
        if event == "step":
            runs += [run] if run else []
            run = []
        else:
            run.append(event)
    assert [t for _, t in engine.stats.prefill_sizes] == [e for e in events if e != "step"]
    return got, events[:first], runs


def test_refills_do_not_stall_decoding_rows_beyond_the_budget():
    """Between two steps of decoding rows, the prefills take the budget (the last may go
    over by one request); with no row decoding, prefills follow one another. Five rows
    end together and their slots are refilled over several steps; uneven prompts and stop
    points, every request as alone."""
    from tests.test_decode_phi3 import _alone_tokens, _phi3, _prompt

    model = _phi3(4096, seed=2)          # LongRoPE far away: plain prefills and steps
    lengths = [12, 40, 25, 33, 8, 50, 18, 44, 29, 15, 37, 21, 46, 30]
    requests = [(i, _prompt(i, n), 6 if i < 5 else 3 + (7 * i) % 17) for i, n in enumerate(lengths)]
    reference = _alone_tokens(model, requests)
    assert len({len(ids) for ids in reference}) > 4
    got, first_fill, runs = _prefills_between_steps(model, requests, 64)
    assert got == reference
    assert sum(first_fill) > 64                          # no row was decoding yet
    assert runs and all(sum(r[:-1]) < 64 for r in runs), runs
    assert max(sum(r) for r in runs) < 64 + max(lengths), runs
    # the check could fail: without the budget, the five free slots are refilled at once
    got, _, runs = _prefills_between_steps(model, requests, 8192)
    assert got == reference and max(sum(r) for r in runs) >= 64 + max(lengths), runs


def test_one_slot_and_more_slots_than_needed(backends):
    be = backends("qwen_vl_2b")
    pages = _pages()[:4]
    reference = _alone(be, pages)
    got, facts = _run(be, pages, slots=1)
    assert got == reference and facts["continuous_prefills"] >= 4
    # slots >= pages: the batch runs as one (the compacting decoder), same pages
    got, facts = _run(be, pages, slots=8)
    assert got == reference


def test_continuous_takes_fewer_steps_than_batch_by_batch(backends):
    """Three slots, seven pages: batch by batch (the compacting decoder) waits for each
    batch's longest page; refilled slots do not."""
    be = backends("qwen_vl_2b")
    pages = _pages()
    be.runner.decoder = None
    whole = []
    for part in (pages[:3], pages[3:6], pages[6:]):
        whole += _run(be, part, slots=0)[0]
    steps_batched = be.runner.decoder.stats.steps
    be.runner.decoder = None
    got, facts = _run(be, pages, slots=3)
    assert got == whole
    assert facts["continuous_steps"] < steps_batched
    assert facts["continuous_compactions"] >= 1      # a late page outlived earlier ones: rows moved down
    be.runner.decoder = None


def test_out_of_memory_in_the_engine_propagates_after_freeing(backends):
    be = backends("qwen_vl_2b")
    pages = _pages()[:4]
    be.runner.decoder = None
    be.options.extra["decode"] = "fast"
    dec = be.static_decoder(GenerationParams())
    real_step, calls = dec.step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(*args, **kwargs)

    dec.step = step
    be.options.extra["decode_slots"] = 2
    with pytest.raises(torch.OutOfMemoryError):
        be.generate_batch(pages, "text", GenerationParams(max_new_tokens=MAX_NEW))
    assert dec.k is None and dec.graph_set is None                # freed before propagating
    assert be.decode_slots() == 1                                  # fewer rows from now on
    del dec.step
    try:
        got, facts = _run(be, pages, slots=2)
        assert got == _alone(be, pages) and facts["decode_slots"] == 1   # the next run is served
    finally:
        be.runner.decoder = be.runner.slots_cap = None


def test_a_batch_the_engine_declines_runs_as_one(backends):
    be = backends("qwen_vl_2b")
    pages = _pages()[:4]
    be.runner.decoder = None
    be.options.extra["decode_max_len"] = 8            # shorter than any prompt: declined
    try:
        got, facts = _run(be, pages, slots=2)
    finally:
        be.options.extra.pop("decode_max_len")
        be.runner.decoder = None
    assert not facts["decode_continuous"] and "cache limit" in facts["decode_continuous_reason"]
    assert got == _alone(be, pages)


def test_continuous_under_graphs_keeps_the_pool_lifecycle(backends):
    """Through the fake CUDA-graph API (the allocator's pool rules): batch-size and length
    buckets, the cache growing mid-run for a longer prompt (the graph set dropped whole,
    a fresh pool for the next captures), same tokens as each page alone."""
    from tests.test_decode_graphs import FakeGraphs

    be = backends("qwen_vl_2b")
    pages = _pages()
    reference = _alone(be, pages)
    fake = FakeGraphs()
    be.runner.decoder = StaticDecoder(be.model, graph_api=fake, len_bucket=16, sync_every=4)
    try:
        # short prompts first, the longest last: the cache must grow while rows are decoding
        order = sorted(range(len(pages)), key=lambda i: pages[i].image.size[0] * pages[i].image.size[1])
        got, facts = _run(be, [pages[i] for i in order], slots=3)
        dec = be.runner.decoder
    finally:
        be.runner.decoder = None
    assert facts.get("decode_continuous"), facts.get("decode_continuous_reason")
    assert got == [reference[i] for i in order]
    assert dec.stats.graphs_captured > 0 and dec.stats.graph_replays > 0
    assert len(fake.handles) >= 2                   # grown mid-run: a new set, a new pool
    assert fake.live_graphs() == len(dec.graph_set.graphs)


PHI3_ORIGINAL = 720      # the tiny Phi-3's original context: prompts here are 688, 712 and 844 tokens


@pytest.fixture(scope="module")
def phi3_backend(tmp_path_factory):
    """Phi-3.5-vision's backend on the tiny random checkpoint (LongRoPE, fused projections,
    HD crops: pages of different shapes give prompts of different lengths)."""
    from chatvlm.models.phi3_vision.synthetic import build_byte_tokenizer
    from chatvlm.models.phi3_vision.testing import write_random_checkpoint

    folder = tmp_path_factory.mktemp("phi3")
    write_random_checkpoint(folder, num_crops=4, original_max_position_embeddings=PHI3_ORIGINAL)
    build_byte_tokenizer(folder, vocab_size=512)
    spec = get_spec("phi3_vision")
    be = spec.backend_class()(spec, BackendOptions(model_path=folder, device="cpu", extra={"num_crops": 4}))
    be.load()
    with torch.no_grad():     # a push towards the stop token: pages end at different points
        be.model.get_output_embeddings().weight[be.stop_token_ids()[0]].mul_(1.5)
    return be


def test_phi3_longrope_rows_on_both_sides_and_crossing_equal_each_page_alone(phi3_backend):
    """Pages beyond LongRoPE's original context (844 tokens: long factors from the prefill
    on) and within it (712, 688 tokens: short factors, until their decode crosses it and the
    sequence is recomputed, images included) share the engine: every page as alone."""
    be = phi3_backend
    pages = _pages()
    budget = 48
    reference = _alone(be, pages, max_new=budget)
    got, facts = _run(be, pages, slots=3, max_new=budget)
    assert facts.get("decode_continuous"), facts.get("decode_continuous_reason")
    assert got == reference
    lengths = [n for _, n, _ in reference]
    assert len(set(lengths)) > 2, lengths
    # the 712- and 688-token pages (1 and 4) run past the crossing (10 and 34 tokens in)
    assert lengths[1] > PHI3_ORIGINAL - 712 + 1 and lengths[4] > PHI3_ORIGINAL - 688 + 1, lengths
    assert facts["continuous_recomputes"] == 2
    assert facts["continuous_prefills"] > 2


def test_phi3_at_a_budget_beyond_the_original_context_the_engine_serves_the_pages(phi3_backend):
    """A budget that alone reaches past the original context (Phi-3.5-vision's default 4096
    new tokens against 4096 positions): the engine serves the batch. The crossing page is
    prepared once more, alone, for its recompute."""
    be = phi3_backend
    pages = [_pages()[i] for i in (3, 5, 1)]        # two end early, the 712-token page crosses
    build, calls = be.build_inputs, []

    def build_inputs(group, task, params):
        calls.append(len(group))
        return build(group, task, params)

    be.build_inputs = build_inputs
    try:
        got, facts = _run(be, pages, slots=2, max_new=PHI3_ORIGINAL + 1)
    finally:
        del be.build_inputs
    assert facts.get("decode_continuous"), facts.get("decode_continuous_reason")
    assert calls == [2, 1, 1] and facts["continuous_recomputes"] == 1
    assert got == _alone(be, pages, max_new=PHI3_ORIGINAL + 1)


def test_continuous_is_on_by_default_at_the_runs_batch_size(backends):
    """decode_slots defaults to the batch size the run chose where the static decoder serves
    the model; -O decode_slots=0 turns it off, -O decode=hf has no engine, one page at a
    time has nothing to refill alongside."""
    be = backends("qwen_vl_2b")
    saved = dict(be.options.extra)
    try:
        be.options.extra.pop("decode_slots", None)
        be.options.extra["decode"] = "auto"
        assert be.default_batch_size(GenerationParams(batch_size=3)) == 3
        assert be.decode_slots() == 3
        be.options.extra["decode_slots"] = "0"
        assert be.decode_slots() == 0
        be.options.extra["decode_slots"] = "5"
        assert be.decode_slots() == 5
        be.options.extra.pop("decode_slots")
        be.options.extra["decode"] = "hf"
        assert be.decode_slots() == 0
        be.options.extra["decode"] = "auto"
        be.default_batch_size(GenerationParams(batch_size=1))
        assert be.decode_slots() == 0
    finally:
        be.options.extra.clear()
        be.options.extra.update(saved)
        be.runner.batch_size = None


def test_the_api_goes_through_the_engine(tmp_path):
    """chatvlm.load_model(...).ocr_batch: a batch size of two, five images: one window to the
    engine, every text as the page alone."""
    import chatvlm

    folder = build_tiny_checkpoint("qwen_vl_2b", tmp_path / "ckpt", eos_boost=1.5)
    images = [p.image for p in _pages()[:5]]
    opts = dict(model_path=folder, device="cpu", max_new_tokens=24)
    alone = chatvlm.load_model("qwen_vl_2b", batch_size=1, decode="hf", **opts)
    try:
        reference = [alone.ocr(image) for image in images]
    finally:
        alone.close()
    model = chatvlm.load_model("qwen_vl_2b", batch_size=2, **opts)
    try:
        got = model.ocr_batch(images)
        facts = model.backend.describe()
    finally:
        model.close()
    assert got == reference
    assert facts["decode_continuous"] and facts["decode_slots"] == 2 and facts["continuous_prefills"] > 1


def test_a_page_whose_inputs_fail_is_isolated_and_the_engine_stays_on(backends):
    """A page the processor cannot take fails alone (the scheduler splits the batch); the
    other pages come out as alone, and the engine serves the next batch."""
    from chatvlm.scheduler import generate_with_backoff

    be = backends("qwen_vl_2b")
    pages = _pages()[:5]
    reference = _alone(be, pages)
    bad = pages[2]
    build = be.build_inputs

    def build_inputs(group, task, params):
        if any(p is bad for p in group):
            raise ValueError(f"{bad.source}: cannot read the image")
        return build(group, task, params)

    be.build_inputs = build_inputs
    be.options.extra.update(decode="fast", decode_slots=2)
    try:
        outs = generate_with_backoff(
            lambda b: be.generate_batch(b, "text", GenerationParams(max_new_tokens=MAX_NEW)), pages)
    finally:
        del be.build_inputs
    assert isinstance(outs[2], ValueError) and "p2.png" in str(outs[2])
    got = [(r.text, r.output_tokens, r.finish_reason) for i, r in enumerate(outs) if i != 2]
    assert got == [ref for i, ref in enumerate(reference) if i != 2]
    assert not be.runner.continuous_disabled
    got, facts = _run(be, pages[:3], slots=2)
    assert facts["decode_continuous"] and got == reference[:3]


def test_pipeline_hands_a_whole_window_to_the_continuous_decoder(tmp_path):
    """`chatvlm ocr -O decode_slots=2` (and by default with --batch-size 2): the run's five
    pages stream through the engine with two rows; every page's text and token count
    are those of the page alone. `-O decode_slots=0` decodes batch by batch, same pages."""
    import json

    from typer.testing import CliRunner

    from chatvlm.cli import app

    examples = Path(__file__).resolve().parent.parent / "examples"
    folder = build_tiny_checkpoint("qwen_vl_2b", tmp_path / "ckpt", eos_boost=1.5)

    def run(out, *options):
        result = CliRunner().invoke(app, ["ocr", str(examples), "-o", str(out), "--model", "qwen_vl_2b",
                                          "--model-path", str(folder), "--max-new-tokens", "24",
                                          "--max-pixels", "60000", *options])
        assert result.exit_code == 0, result.output
        entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        pages = {(e["source"], e["page"]): e for e in entries}
        texts = {key: ((out / next(f for f in e["outputs"] if f.endswith(".txt"))).read_text(),
                       e["output_tokens"], e["finish_reason"]) for key, e in pages.items()}
        return texts, json.loads((out / "report.json").read_text())

    alone, _ = run(tmp_path / "alone", "--batch-size", "1", "-O", "decode=hf")
    got, report = run(tmp_path / "continuous", "--batch-size", "2", "-O", "decode_slots=2")
    assert len(got) == 5 and got == alone
    engine = report["engine"]
    assert engine["decode_continuous"] and engine["continuous_prefills"] > 1
    # the default: as many rows as the batch size
    got, report = run(tmp_path / "default", "--batch-size", "2")
    assert got == alone
    assert report["engine"]["decode_continuous"] and report["engine"]["decode_slots"] == 2
    # -O decode_slots=0: batch by batch, same pages
    got, report = run(tmp_path / "off", "--batch-size", "2", "-O", "decode_slots=0")
    assert got == alone and report["engine"]["decode_continuous"] is False and report["engine"]["decode_slots"] == 0
    assert "decode_slots=0" in report["engine"]["decode_continuous_reason"]


def test_a_broken_engine_is_reported_and_the_pages_decode_batch_by_batch(backends):
    be = backends("qwen_vl_2b")
    pages = _pages()[:4]
    reference = _alone(be, pages)
    be.runner.decoder = None
    be.options.extra.update(decode="fast", decode_slots=2)
    dec = be.static_decoder(GenerationParams())
    real_step, calls = dec._run_step, {"n": 0}

    def run_step(b, filled):
        calls["n"] += 1
        if calls["n"] == 3 and b > 1:
            raise RuntimeError("illegal memory access in a continuous step")
        return real_step(b, filled)

    dec._run_step = run_step
    try:
        got, facts = _run(be, pages, slots=2)
        assert calls["n"] > 3                                 # failed mid-run, then the batch path ran
        assert got == reference
        assert not facts["decode_continuous"] and "illegal memory access" in facts["decode_continuous_reason"]
        assert facts["decode"] == STATIC               # the static decoder still serves the pages
    finally:
        be.runner.decoder = be.runner.continuous_disabled = None
