"""chatvlm.engine.decoder on Phi-3 (Phi-3.5-vision's language model, transformers `Phi3ForCausalLM`):
fused `qkv_proj` / `gate_up_proj` and LongRoPE. Tiny random-weight models, fp32, CPU, greedy:
the static decoder gives `generate`'s tokens, also where the sequence crosses the original
context (short factors, then the long ones, as transformers switches in a batch), and the
continuous engine gives every request the tokens `generate` gives it alone, whichever
side of the original context its prompt and its decode fall on."""

from __future__ import annotations

import pytest
import torch

from chatvlm.engine import StaticDecoder, Unsupported, unsupported_reason
from chatvlm.engine.lm import find_lm
from tests.test_decode import _generated
from tests.test_decode_graphs import FakeGraphs, _text_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD, EOS = 0, 2


def _phi3(original: int, seed: int = 0, **sizes):
    from chatvlm.models.phi3_vision.modeling import build_from_config
    from chatvlm.models.phi3_vision.testing import randomize_, tiny_config

    model = build_from_config(tiny_config(original_max_position_embeddings=original, **sizes), dtype=torch.float32)
    randomize_(model, seed)
    return model


@pytest.fixture(scope="module")
def phi3():
    """Original context 64: short pages decode with the short factors, longer ones cross over."""
    return _phi3(64)


def test_phi3_lm_is_on_the_fast_path(phi3):
    parts = find_lm(phi3)
    assert parts.fused_qkv and parts.longrope_original == 64
    assert parts.num_heads == parts.num_kv_heads == 4
    assert unsupported_reason(phi3) is None


@pytest.mark.parametrize("batch,lengths,max_new", [
    (1, (10, 10), 20),        # within the original context throughout: short factors only
    (3, (5, 30), 20),         # rows of different lengths, all short
    (4, (20, 40), 40),        # crosses 64 during decode: the batch switches to the long factors
    (2, (70, 80), 12),        # the prompt alone is past 64: long factors from the prefill on
])
def test_phi3_decoder_same_tokens_as_generate(phi3, batch, lengths, max_new):
    inputs = _text_batch(batch, seed=batch, pad_id=PAD, lengths=lengths)
    ref = _generated(phi3, None, inputs, max_new, [EOS], PAD)
    for dec in (StaticDecoder(phi3), StaticDecoder(phi3, bucketed=True, len_bucket=16),
                StaticDecoder(phi3, graph_api=FakeGraphs(), len_bucket=16)):
        assert _generated(phi3, dec, inputs, max_new, [EOS], PAD) == ref, dec.use_graphs
    assert len({tuple(ids) for ids, _ in ref}) == batch


def test_crossing_recomputes_the_cache_like_transformers(phi3):
    """transformers' Phi-3 recomputes the whole KV cache (long factors) once the sequence
    outgrows the original context; the decoder does the same, once, and it matters."""
    inputs = _text_batch(4, seed=4, pad_id=PAD, lengths=(20, 40))
    width = inputs["input_ids"].shape[1]
    ref = _generated(phi3, None, inputs, 40, [EOS], PAD)
    assert max(len(ids) for ids, _ in ref) > 64 - width + 2        # rows really decode past the crossing
    dec = StaticDecoder(phi3)
    assert _generated(phi3, dec, inputs, 40, [EOS], PAD) == ref
    assert dec.stats.recomputes == 1
    stale = StaticDecoder(phi3)
    stale._longrope_recompute_slot = lambda prompt_len: None       # keep the short-rotated keys
    assert _generated(phi3, stale, inputs, 40, [EOS], PAD) != ref


def test_sliding_window_longer_requests_are_declined():
    model = _phi3(64, num_hidden_layers=1)
    model.model.config.sliding_window = 40
    dec = StaticDecoder(model)
    inputs = _text_batch(2, seed=0, pad_id=PAD, lengths=(20, 30))
    with pytest.raises(Unsupported, match="sliding window"):
        _generated(model, dec, inputs, 16, [EOS], PAD)
    assert dec.k is None and dec.stats.steps == 0


def test_phi3_vision_backend_uses_the_static_decoder(tmp_path):
    """Phi-3.5-vision through its backend (images, HD crops): the static decoder, generate's pages."""
    from chatvlm.config import BackendOptions
    from chatvlm.registry import get_spec
    from tests.test_decode import _pages, assert_backend_decodes_like_generate
    from tests.test_phi3_backend import FIXTURE, copy_checkpoint

    if not (FIXTURE / "model.safetensors").exists():
        pytest.skip(f"Phi-3.5-vision fixture checkpoint not found at {FIXTURE} (../shared beside the checkout)")
    spec = get_spec("phi3_vision")
    be = spec.backend_class()(spec, BackendOptions(model_path=copy_checkpoint(tmp_path / "ckpt"), device="cpu",
                                                   extra={"num_crops": 2}))
    be.load()
    assert_backend_decodes_like_generate(be, _pages()[:2], max_new=12)
    be.close()


# ----------------------------------------------------------------------------- the continuous engine

ORIGINAL = 48
# (prompt tokens, own token budget): prompts beyond the original context (long factors
# from the prefill on), one exactly at it (the first step crosses), rows that cross
# mid-decode, one on its last token, rows that never reach it
REQUESTS = [(30, 30), (52, 10), (40, 25), (20, 12), (48, 6), (47, 30), (60, 8), (46, 4), (12, 40), (35, 20)]


@pytest.fixture(scope="module")
def phi3_48():
    return _phi3(ORIGINAL, seed=1)


def _prompt(i: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randint(3, 250, (n,), generator=g).tolist()


def _left_padded(prompts: list[list[int]]) -> dict:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _engine_tokens(model, requests, *, slots=3, decoder=None, **engine_options):
    """Each request's tokens from the continuous engine (requests: (index, prompt, budget))."""
    from transformers import GenerationConfig

    from chatvlm.engine import ContinuousEngine, Prepared
    from chatvlm.loop_guard import make_tracker

    prepared_groups = []

    def prepare(group):
        prepared_groups.append([index for index, _, _ in group])
        config = GenerationConfig(max_new_tokens=64, do_sample=False, num_beams=1, pad_token_id=PAD,
                                  eos_token_id=[EOS])
        return Prepared(_left_padded([prompt for _, prompt, _ in group]), {"generation_config": config})

    engine = ContinuousEngine(decoder or StaticDecoder(model), slots=slots, prepare=prepare,
                              new_tracker=lambda request: make_tracker(0, 1, stop_ids=[EOS]),
                              max_new_tokens=64, request_budget=lambda request: request[2], **engine_options)
    got = {done.index: done.tokens for done in engine.run(requests)}
    return [got[i] for i in range(len(requests))], engine, prepared_groups


def _alone_tokens(model, requests):
    return [_generated(model, None, _left_padded([prompt]), budget, [EOS], PAD)[0][0]
            for _, prompt, budget in requests]


def _requests():
    return [(i, _prompt(i, n), budget) for i, (n, budget) in enumerate(REQUESTS)]


def test_engine_rows_crossing_longrope_equal_each_request_alone(phi3_48):
    """Rows on both sides of the original context and rows crossing it share steps and
    prefills: every request gets its tokens alone (its own factor set per position, the
    whole sequence recomputed when it first outgrows the original context)."""
    requests = _requests()
    reference = _alone_tokens(phi3_48, requests)
    crossing = [len(ids) >= ORIGINAL - len(prompt) + 2 for (_, prompt, _), ids in zip(requests, reference)
                if len(prompt) <= ORIGINAL]
    assert sum(crossing) >= 4 and not all(crossing)
    for decoder in (StaticDecoder(phi3_48),
                    StaticDecoder(phi3_48, graph_api=FakeGraphs(), len_bucket=16)):
        prefills, real_prefill = [], decoder._prefill

        def prefill(inputs, gen_kwargs):
            prefills.append(inputs["attention_mask"].sum(dim=1).tolist())
            return real_prefill(inputs, gen_kwargs)

        decoder._prefill = prefill
        got, engine, groups = _engine_tokens(phi3_48, requests, decoder=decoder)
        assert got == reference, decoder.use_graphs
        assert engine.stats.recomputes == sum(crossing)
        assert prefills.count([ORIGINAL + 1]) == sum(crossing)       # each crossing row re-run alone
        # the first group (30, 52, 40 tokens) is prefilled as two; no prefill mixes the sides
        assert groups[0] == [0, 1, 2] and prefills[0] == [30, 40]
        assert all(len({n > ORIGINAL for n in counts}) == 1 for counts in prefills), prefills


def test_engine_longrope_needs_the_split_prefills(phi3_48, monkeypatch):
    """The check above could fail: a prefill mixing both sides gives the short prompts the
    long factors (transformers picks one set per call), and their tokens change."""
    from chatvlm.engine import admission, continuous

    requests = _requests()[:3]                      # 30 and 40 tokens within, 52 beyond
    reference = _alone_tokens(phi3_48, requests)
    monkeypatch.setattr(continuous, "take_now", lambda counts, budget, original: admission.take_now(
        counts, budget=budget))
    got, _, groups = _engine_tokens(phi3_48, requests)
    assert groups[0] == [0, 1, 2] and got != reference


def test_engine_crossing_needs_the_recompute(phi3_48, monkeypatch):
    """...and transformers' recompute at the crossing changes what the crossing rows get
    (without it, keys cached before the crossing would keep the short rotation)."""
    from transformers.models.phi3.modeling_phi3 import Phi3ForCausalLM

    requests = [r for r in _requests() if r[2] > ORIGINAL - len(r[1]) + 2 and len(r[1]) <= ORIGINAL][:2]
    reference = _alone_tokens(phi3_48, requests)
    got, engine, _ = _engine_tokens(phi3_48, requests)
    assert got == reference and engine.stats.recomputes == 2

    def keep_the_cache(self, *args, **kwargs):          # generate's own preparation: no cache drop
        return super(Phi3ForCausalLM, self).prepare_inputs_for_generation(*args, **kwargs)

    monkeypatch.setattr(Phi3ForCausalLM, "prepare_inputs_for_generation", keep_the_cache)
    assert _alone_tokens(phi3_48, requests) != reference
