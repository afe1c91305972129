"""chatvlm.engine.decoder: our static-cache decode loop gives transformers' `generate` tokens.

Tiny random-weight checkpoints (real config/model/processor classes), fp32 on CPU,
greedy; batches of pages of different sizes (left padding) and single pages. No mocks:
both paths run the real model.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from chatvlm.config import BackendOptions, GenerationParams
from chatvlm.engine import HF, STATIC, StaticDecoder, unsupported_reason
from chatvlm.loop_guard import make_tracker
from chatvlm.registry import get_spec
from chatvlm.testing import build_tiny_checkpoint
from tests.conftest import noise_page_records, tiny_backends

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = [(120, 90), (64, 200), (300, 160)]          # different image-token counts -> left padding


def _pages(sizes=SIZES, seed=0):
    return noise_page_records(sizes, seed)


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    return tiny_backends(tmp_path_factory)


def _run(be, pages, mode, max_new=24, **params):
    be.options.extra["decode"] = mode
    out = be.generate_batch(pages, "text", GenerationParams(max_new_tokens=max_new, **params))
    facts = be.describe()
    return [(r.text, r.output_tokens, r.finish_reason) for r in out], facts


@pytest.mark.parametrize("name", ["qwen_vl_2b", "qwen3_vl_2b", "got_ocr_hf"])
def test_backend_same_tokens_as_generate(backends, name):
    be = backends(name)
    pages = _pages()
    ref, facts = _run(be, pages, "hf")
    assert facts["decode"] == HF
    got, facts = _run(be, pages, "auto")
    assert facts["decode"] == STATIC, facts.get("decode_reason")
    assert got == ref
    assert facts["decode_steps"] > 0
    # single page (no padding) too
    ref1, _ = _run(be, pages[1:2], "hf")
    got1, facts = _run(be, pages[1:2], "fast")
    assert facts["decode"] == STATIC and got1 == ref1


def test_rows_finishing_early_are_compacted(backends):
    """Qwen2-VL: some rows stop within a few tokens; the batch shrinks, tokens unchanged
    (repetition penalty 1.05 is on: a row-indexed processor that follows compaction)."""
    be = backends("qwen_vl_2b")
    pages = _pages([(120, 90), (64, 200), (300, 160), (90, 90), (200, 64)], seed=3)
    ref, _ = _run(be, pages, "hf", max_new=40)
    got, facts = _run(be, pages, "fast", max_new=40)
    assert got == ref
    assert facts["repetition_penalty"] == 1.05
    lengths = sorted(n for _, n, _ in ref)
    assert lengths[0] < lengths[-1]                  # really different finishing points
    assert facts["decode_compactions"] >= 1
    assert facts["decode_row_steps"] < facts["decode_steps"] * len(pages)


def test_fallback_recorded_for_sampling_and_request(backends):
    be = backends("qwen_vl_2b")
    _, facts = _run(be, _pages()[:1], "auto", max_new=4, do_sample=True)
    assert facts["decode"] == HF and "sampling" in facts["decode_reason"]
    _, facts = _run(be, _pages()[:1], "hf", max_new=4)
    assert facts["decode"] == HF and "requested" in facts["decode_reason"]


# ------------------------------------------------------------------ decoder level

def _both(model, inputs, max_new, stop_ids, pad_id, **decoder_kwargs):
    """Token ids from generate and from StaticDecoder for the same inputs."""
    from transformers import GenerationConfig, StoppingCriteriaList

    batch, prompt_len = inputs["input_ids"].shape
    config = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=pad_id,
                              eos_token_id=stop_ids or None)
    results = []
    for fast in (False, True):
        tracker = make_tracker(prompt_len, batch, stop_ids=stop_ids)
        kwargs = dict(generation_config=config, stopping_criteria=StoppingCriteriaList([tracker]))
        with torch.inference_mode():
            if fast:
                dec = StaticDecoder(model, **decoder_kwargs)
                out = dec.generate(dict(inputs), kwargs, max_new_tokens=max_new, tracker=tracker,
                                   pad_token_id=pad_id)
            else:
                out = model.generate(**inputs, **kwargs)
        rows = []
        for r in range(batch):
            n, reason = tracker.result(r, out.shape[1] - prompt_len)
            rows.append((out[r, prompt_len:prompt_len + n].tolist(), reason))
        results.append(rows)
    return results


BATCH_ORDER = (1, 9, 4, 7, 2, 5, 3, 8, 6)       # every size 1..9; the cache grows, then is reused
SHORT_ORDER = (1, 9, 4, 6)                       # the slower tiny models: growth, then reuse


def _small_pages(n, seed):
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(40, 130)), int(rng.integers(40, 130))) for _ in range(n)]
    return _pages(sizes, seed=seed)


@pytest.mark.parametrize("name,order", [("qwen_vl_2b", BATCH_ORDER), ("qwen3_vl_2b", SHORT_ORDER),
                                        ("got_ocr_hf", SHORT_ORDER)])
def test_one_decoder_many_batches_of_every_size(backends, name, order):
    """Batches of 1..9 pages in a row through one decoder per read mode (exact-length reads,
    and the graph mode's bucketed reads run eagerly): generate's tokens every time."""
    be = backends(name)
    eager = StaticDecoder(be.model)
    bucketed = StaticDecoder(be.model, bucketed=True, len_bucket=32)
    for i, n in enumerate(order):
        inputs = be.to_device(be.build_inputs(_small_pages(n, seed=100 + i), "text", GenerationParams()))
        ref = _generated(be.model, None, inputs, 12, be.stop_token_ids(), be.pad_token_id())
        for dec in (eager, bucketed):
            assert _generated(be.model, dec, inputs, 12, be.stop_token_ids(), be.pad_token_id()) == ref, (n, dec.bucketed)
    assert bucketed.k.shape[1] == 9 and bucketed.stats.steps > 0


def assert_backend_decodes_like_generate(be, pages, max_new: int) -> None:
    """A loaded backend gives the same pages through our decoder (decode=auto) as through
    transformers `generate` (decode=hf), and auto really took our decoder."""
    be.options.extra["decode"] = "hf"
    ref = be.generate_batch(pages, "text", GenerationParams(max_new_tokens=max_new))
    be.options.extra["decode"] = "auto"
    got = be.generate_batch(pages, "text", GenerationParams(max_new_tokens=max_new))
    facts = be.describe()
    assert facts["decode"] == STATIC, facts.get("decode_reason")
    assert [(r.text, r.output_tokens) for r in got] == [(r.text, r.output_tokens) for r in ref]


def _generated(model, dec, inputs, max_new, stop_ids, pad_id):
    """Per row (generated ids, finish reason) from `generate` (dec None) or from `dec`."""
    from transformers import GenerationConfig, StoppingCriteriaList

    batch, prompt_len = inputs["input_ids"].shape
    config = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=pad_id,
                              eos_token_id=stop_ids or None)
    tracker = make_tracker(prompt_len, batch, stop_ids=stop_ids)
    kwargs = dict(generation_config=config, stopping_criteria=StoppingCriteriaList([tracker]))
    with torch.inference_mode():
        if dec is None:
            out = model.generate(**inputs, **kwargs)
        else:
            out = dec.generate(dict(inputs), kwargs, max_new_tokens=max_new, tracker=tracker, pad_token_id=pad_id)
    rows = []
    for r in range(batch):
        n, reason = tracker.result(r, out.shape[1] - prompt_len)
        rows.append((out[r, prompt_len:prompt_len + n].tolist(), reason))
    return rows


def test_bucketed_reads_same_tokens(backends):
    """The CUDA-graph read mode (fixed-length bucket + key mask), run eagerly on CPU."""
    be = backends("qwen3_vl_2b")
    inputs = be.to_device(be.build_inputs(_pages(), "text", GenerationParams()))
    ref, got = _both(be.model, inputs, 16, be.stop_token_ids(), be.pad_token_id(), bucketed=True, len_bucket=64)
    assert got == ref


@pytest.fixture(scope="module")
def dots(tmp_path_factory):
    from chatvlm.models import dots_ocr
    from chatvlm.models.dots_ocr import testing
    from chatvlm.models.dots_ocr.modeling import init_random_

    cfg = testing.config_dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              vision_embed_dim=32, vision_layers=1, vision_heads=2, vision_intermediate_size=48)
    folder = tmp_path_factory.mktemp("dots")
    testing.build_random_checkpoint(folder, cfg, seed=1, max_pixels=28 * 28 * 40)
    model = dots_ocr.from_pretrained(folder, dtype=torch.float32)
    init_random_(model, seed=2, std=0.3)      # varied tokens, no near-ties
    return model, dots_ocr.processor_from_pretrained(folder), cfg


def test_dots_ocr_qwen2_lm_same_tokens(dots):
    model, proc, cfg = dots
    images = [p.image for p in _pages([(90, 130), (200, 60), (60, 60)], seed=5)]
    rows = []
    for i, img in enumerate(images):
        grid = proc.preprocess_image(img)[1]
        rows.append(proc.expand_image_tokens([5 + i, 17, cfg["image_token_id"], 23] + list(range(30, 30 + 3 * i)),
                                             [grid]))
    inputs = {**proc.pad(rows, "left"), **proc.preprocess_images(images)}
    ref, got = _both(model, inputs, 24, [7], 0)
    assert got == ref
    assert any(reason == "stop" for _, reason in ref) or all(len(ids) == 24 for ids, _ in ref)


def _dots_inputs(proc, cfg, n, seed):
    images = [p.image for p in _small_pages(n, seed)]
    rows = [proc.expand_image_tokens([5 + i, 17, cfg["image_token_id"], 23] + list(range(30, 30 + 2 * i)),
                                     [proc.preprocess_image(img)[1]]) for i, img in enumerate(images)]
    return {**proc.pad(rows, "left"), **proc.preprocess_images(images)}


def test_dots_ocr_one_decoder_many_batches_of_every_size(dots):
    model, proc, cfg = dots
    eager = StaticDecoder(model)
    bucketed = StaticDecoder(model, bucketed=True, len_bucket=32)
    for i, n in enumerate(BATCH_ORDER):
        inputs = _dots_inputs(proc, cfg, n, seed=200 + i)
        ref = _generated(model, None, inputs, 16, [7], 0)
        for dec in (eager, bucketed):
            assert _generated(model, dec, inputs, 16, [7], 0) == ref, (n, dec.bucketed)


# ------------------------------------------------------------------ the cache is read only where filled

def _primed(model, batch=2, filled=37, **kwargs):
    dec = StaticDecoder(model, **kwargs)
    pr = dec.parts
    dec._ensure_pool(batch, 128)
    dec._ensure_rope(256, mrope=True)
    g = torch.Generator().manual_seed(0)
    dec.k[:, :batch, :, :filled] = torch.randn(dec.k[:, :batch, :, :filled].shape, generator=g)
    dec.v[:, :batch, :, :filled] = torch.randn(dec.v[:, :batch, :, :filled].shape, generator=g)
    dec.mask[:batch, :filled - 1] = True
    dec.mask[0, :3] = False                        # row 0 left-padded
    dec.tok[:batch] = torch.tensor([11, 42])
    dec.pos[:batch] = torch.tensor([40, 44])
    dec.wpos[:batch].fill_(filled - 1)             # the step writes slot filled-1
    assert pr.num_kv_heads < pr.num_heads          # GQA really exercised
    return dec


def test_step_reads_only_filled_cache(backends):
    model = backends("qwen_vl_2b").model
    filled = 37
    with torch.inference_mode():
        dec = _primed(model, filled=filled)
        ref = dec.step(2, filled).clone()
        # garbage (NaN) beyond the filled length: an exact-length read never sees it
        dec.k[:, :2, :, filled:] = float("nan")
        dec.v[:, :2, :, filled:] = float("nan")
        assert torch.equal(dec.step(2, filled), ref)
        # bucketed read (graph mode): reads 64 slots, masks the unfilled ones
        dec.k[:, :2, :, filled:] = 1e4
        dec.v[:, :2, :, filled:] = -1e4
        torch.testing.assert_close(dec.step(2, 64), ref, rtol=1e-5, atol=1e-5)
        # left padding is masked too: garbage in row 0's pad slots changes nothing
        dec.k[:, 0, :, :3] = 1e4
        torch.testing.assert_close(dec.step(2, filled), ref, rtol=1e-5, atol=1e-5)
        # ...while garbage inside the filled part does (the test can fail)
        dec.v[:, :2, :, 10] = 1e3
        assert not torch.allclose(dec.step(2, filled), ref)


def test_unsupported_reasons(backends):
    assert unsupported_reason(backends("qwen_vl_2b").model) is None
    assert "sampling" in unsupported_reason(backends("qwen_vl_2b").model, do_sample=True)
    assert "beam" in unsupported_reason(backends("qwen_vl_2b").model, num_beams=2)
    assert "no Llama-style decoder" in unsupported_reason(torch.nn.Linear(2, 2))


class _BrokenDecoder:
    """A decoder that fails the way a library mismatch would (an error inside the step)."""

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def generate(self, *args, **kwargs):
        self.calls += 1
        raise TypeError("rotary embedding got an unexpected keyword argument 'position_ids'")

    def release(self):
        pass


def test_broken_static_decoder_falls_back_to_generate_and_says_so(tmp_path):
    folder = build_tiny_checkpoint("qwen_vl_2b", tmp_path / "ckpt")
    spec = get_spec("qwen_vl_2b")
    be = spec.backend_class()(spec, BackendOptions(model_path=folder, device="cpu", extra={}))
    be.load()
    pages = _pages()
    reference, _ = _run(be, pages, "hf")
    broken = _BrokenDecoder(be.model)
    be.runner.decoder = broken
    fallback, facts = _run(be, pages, "auto")
    assert fallback == reference                      # no page lost, same tokens
    assert facts["decode"] == "hf-generate" and "static decoder failed" in facts["decode_reason"]
    _run(be, pages, "auto")
    assert broken.calls == 1                          # disabled for the rest of the run
    be.close()


# ------------------------------------------------------------------ failures: freed first, then generate or OOM

def _fail_step_after(dec, calls: int, exc: BaseException):
    """Fault injection: the decoder's step raises `exc` on its `calls`-th call."""
    real = dec.step
    count = {"n": 0}

    def step(*args, **kwargs):
        count["n"] += 1
        if count["n"] >= calls:
            raise exc
        return real(*args, **kwargs)

    dec.step = step
    return count


@pytest.fixture
def fresh_qwen(backends):
    """The shared Qwen2-VL backend with a new decoder, its decoder state restored afterwards."""
    be = backends("qwen_vl_2b")
    be.runner.decoder, be.runner.decode_disabled = None, None
    be.options.extra.pop("decode_max_len", None)
    yield be
    be.runner.decoder, be.runner.decode_disabled = None, None
    be.options.extra.pop("decode_max_len", None)


def test_error_inside_decode_frees_the_decoder_and_generate_gives_the_same_pages(fresh_qwen):
    be = fresh_qwen
    pages = _pages()
    reference, _ = _run(be, pages, "hf")
    be.options.extra["decode"] = "auto"
    dec = be.static_decoder(GenerationParams())
    count = _fail_step_after(dec, 3, RuntimeError("illegal memory access in a decode step"))
    got, facts = _run(be, pages, "auto")
    assert count["n"] == 3                       # it really failed mid-decode, after two steps
    assert got == reference
    assert facts["decode"] == HF and "illegal memory access" in facts["decode_reason"]
    assert dec.k is None and dec.graph_set is None and dec.rope_cos is None   # cache and graphs freed


def test_request_the_decoder_declines_goes_to_generate_for_that_batch_only(fresh_qwen):
    be = fresh_qwen
    pages = _pages()
    reference, _ = _run(be, pages, "hf")
    be.options.extra["decode_max_len"] = 8         # shorter than any prompt: declined at admission
    got, facts = _run(be, pages, "auto")
    assert got == reference
    assert facts["decode"] == HF and "cache limit" in facts["decode_reason"]
    dec = be.runner.decoder
    assert dec.stats.steps == 0 and dec.k is None   # declined before any decode work, nothing held
    dec.max_len = None                               # the next batch fits: the decoder serves it
    got, facts = _run(be, pages, "auto")
    assert got == reference and facts["decode"] == STATIC


def test_out_of_memory_in_the_decoder_propagates_after_freeing(fresh_qwen):
    """OOM is for the scheduler (split and retry), not for the generate fallback."""
    be = fresh_qwen
    pages = _pages()
    reference, _ = _run(be, pages, "hf")
    be.options.extra["decode"] = "auto"
    dec = be.static_decoder(GenerationParams())
    _fail_step_after(dec, 2, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(torch.OutOfMemoryError):
        be.generate_batch(pages, "text", GenerationParams(max_new_tokens=24))
    assert dec.k is None and dec.graph_set is None
    assert not be.runner.decode_disabled            # not a reason to stop using it
    del dec.step                                                 # memory back: smaller retries succeed
    for part in (pages[:1], pages[1:]):
        got, facts = _run(be, part, "auto")
        assert facts["decode"] == STATIC
        assert got == reference[pages.index(part[0]):pages.index(part[0]) + len(part)]
