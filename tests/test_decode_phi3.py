"""chatvlm.decode on Phi-3 (Phi-3.5-vision's language model, transformers `Phi3ForCausalLM`):
fused `qkv_proj` / `gate_up_proj` and LongRoPE. Tiny random-weight models, fp32, CPU, greedy:
the static decoder gives `generate`'s tokens, also where the sequence crosses the original
context (short factors, then the long ones, as transformers switches in a batch)."""

from __future__ import annotations

import pytest
import torch

from chatvlm import decode
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
    parts = decode.find_lm(phi3)
    assert parts.fused_qkv and parts.longrope_original == 64
    assert parts.num_heads == parts.num_kv_heads == 4
    assert decode.unsupported_reason(phi3) is None


@pytest.mark.parametrize("batch,lengths,max_new", [
    (1, (10, 10), 20),        # within the original context throughout: short factors only
    (3, (5, 30), 20),         # rows of different lengths, all short
    (4, (20, 40), 40),        # crosses 64 during decode: the batch switches to the long factors
    (2, (70, 80), 12),        # the prompt alone is past 64: long factors from the prefill on
])
def test_phi3_decoder_same_tokens_as_generate(phi3, batch, lengths, max_new):
    inputs = _text_batch(batch, seed=batch, pad_id=PAD, lengths=lengths)
    ref = _generated(phi3, None, inputs, max_new, [EOS], PAD)
    for dec in (decode.StaticDecoder(phi3), decode.StaticDecoder(phi3, bucketed=True, len_bucket=16),
                decode.StaticDecoder(phi3, graph_api=FakeGraphs(), len_bucket=16)):
        assert _generated(phi3, dec, inputs, max_new, [EOS], PAD) == ref, dec.use_graphs
    assert len({tuple(ids) for ids, _ in ref}) == batch


def test_crossing_recomputes_the_cache_like_transformers(phi3):
    """transformers' Phi-3 recomputes the whole KV cache (long factors) once the sequence
    outgrows the original context; the decoder does the same, once, and it matters."""
    inputs = _text_batch(4, seed=4, pad_id=PAD, lengths=(20, 40))
    width = inputs["input_ids"].shape[1]
    ref = _generated(phi3, None, inputs, 40, [EOS], PAD)
    assert max(len(ids) for ids, _ in ref) > 64 - width + 2        # rows really decode past the crossing
    dec = decode.StaticDecoder(phi3)
    assert _generated(phi3, dec, inputs, 40, [EOS], PAD) == ref
    assert dec.stats.recomputes == 1
    stale = decode.StaticDecoder(phi3)
    stale._longrope_recompute_slot = lambda prompt_len: None       # keep the short-rotated keys
    assert _generated(phi3, stale, inputs, 40, [EOS], PAD) != ref


def test_sliding_window_longer_requests_are_declined():
    model = _phi3(64, num_hidden_layers=1)
    model.model.config.sliding_window = 40
    dec = decode.StaticDecoder(model)
    inputs = _text_batch(2, seed=0, pad_id=PAD, lengths=(20, 30))
    with pytest.raises(decode.Unsupported, match="sliding window"):
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
