"""chatvlm.engine.moe: the static-shape MoE feed-forward equals the models' own MoE forward,
and the static decoder serves DeepSeek-OCR (our port) and DeepSeek-OCR-2 (transformers) with
`generate`'s tokens. Tiny random-weight models, fp32, CPU, greedy."""

from __future__ import annotations

import pytest
import torch

from chatvlm.config import BackendOptions, GenerationParams
from chatvlm.engine import STATIC, StaticDecoder
from chatvlm.engine.lm import find_lm
from chatvlm.engine.moe import StaticMoE, moe_unsupported
from chatvlm.registry import get_spec
from tests.conftest import tiny_backends
from tests.test_decode import _generated, _pages, assert_backend_decodes_like_generate
from tests.test_decode_graphs import FakeGraphs, _text_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def v1():
    """Our DeepSeek-OCR port: layer 0 dense, layers 1-2 MoE (8 experts, top-3, 2 shared)."""
    from chatvlm.models.deepseek_ocr.configuration import official_config_dict
    from chatvlm.models.deepseek_ocr.loading import build_from_config

    config = official_config_dict(vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
                                  num_hidden_layers=3, num_attention_heads=4, n_routed_experts=8,
                                  num_experts_per_tok=3, n_shared_experts=2, sam_width=32, sam_layers=2,
                                  sam_heads=2, sam_global_attn_indexes=(1,), sam_downsample_channels=(32, 64),
                                  clip_layers=1, clip_heads=4)
    model = build_from_config(config, dtype=torch.float32, device="cpu", seed=3)
    with torch.no_grad():                        # varied logits (no near-ties): scale the LM up a little
        for p in model.model.layers.parameters():
            p.mul_(2.0)
    return model


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return tiny_backends(tmp_path_factory)("deepseek_ocr2")


def _moe_blocks(model):
    parts = find_lm(model)
    assert parts.moe_layers and 0 not in parts.moe_layers          # DeepSeek: the first layer is dense
    return [parts.layers[i].mlp for i in parts.moe_layers]


@pytest.mark.parametrize("mode", ["gather", "dense", "auto"])
@pytest.mark.parametrize("rows", [1, 2, 5, 17])
def test_static_moe_equals_the_models_moe_forward(v1, v2, mode, rows):
    g = torch.Generator().manual_seed(rows)
    for block in _moe_blocks(v1) + _moe_blocks(v2.model):
        hidden = StaticMoE(block).hidden
        x = torch.randn(rows, 1, hidden, generator=g)
        with torch.inference_mode():
            ref = block(x)
            got = StaticMoE(block, mode)(x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_routing_really_matters(v1):
    """The check above can fail: the same experts with other routing weights give other outputs."""
    block = _moe_blocks(v1)[0]
    moe = StaticMoE(block, "dense")
    x = torch.randn(4, 1, moe.hidden, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = moe(x)
        idx, w = moe.route(x.reshape(-1, moe.hidden))
        moe.route = lambda flat: (idx.roll(1, dims=1), w)          # weights given to other experts
        assert not torch.allclose(moe(x), ref, atol=1e-4)


def test_port_experts_are_moved_not_copied(v1):
    block = _moe_blocks(v1)[0]
    moe = StaticMoE(block)
    again = StaticMoE(block)
    assert again.gate_up.data_ptr() == moe.gate_up.data_ptr()      # moved once
    inter = moe.inter
    for e, expert in enumerate(block.experts):
        assert expert.gate_proj.weight.data_ptr() == moe.gate_up[e, :inter].data_ptr()
        assert expert.up_proj.weight.data_ptr() == moe.gate_up[e, inter:].data_ptr()
        assert expert.down_proj.weight.data_ptr() == moe.down[e].data_ptr()


def test_unknown_mlp_is_refused():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Linear(2, 2)

    assert "neither a dense gated MLP" in moe_unsupported(Odd())


@pytest.mark.parametrize("batch", [1, 3, 6])
def test_port_decoder_same_tokens_as_generate(v1, batch):
    """DeepSeek-OCR v1 (our port's LM): rows of different lengths, dense first layer, MoE after."""
    inputs = _text_batch(batch, seed=batch, pad_id=2, lengths=(4, 20))
    ref = _generated(v1, None, inputs, 16, [1], 2)
    for dec in (StaticDecoder(v1), StaticDecoder(v1, bucketed=True, len_bucket=16),
                StaticDecoder(v1, graph_api=FakeGraphs(), len_bucket=16),
                StaticDecoder(v1, graph_api=FakeGraphs(), len_bucket=16, moe_mode="gather")):
        assert _generated(v1, dec, inputs, 16, [1], 2) == ref
    assert len({tuple(ids) for ids, _ in ref}) == batch           # rows really differ


def test_deepseek_ocr2_backend_uses_the_static_decoder(v2):
    """transformers' DeepSeek-OCR-2 (stacked experts) through the backend: generate's pages."""
    be = v2
    for pages in (_pages()[:1], _pages()):                          # one row (no padding) and three
        be.options.extra["decode"] = "hf"
        ref = be.generate_batch(pages, "text", GenerationParams(max_new_tokens=12))
        be.options.extra["decode"] = "auto"
        got = be.generate_batch(pages, "text", GenerationParams(max_new_tokens=12))
        facts = be.describe()
        assert facts["decode"] == STATIC, facts.get("decode_reason")
        assert [(r.text, r.output_tokens) for r in got] == [(r.text, r.output_tokens) for r in ref]
        assert facts["decode_steps"] > 0


def test_deepseek_ocr_backend_uses_the_static_decoder(tmp_path):
    """Our DeepSeek-OCR port through its backend (images, the official n-gram ban): same pages."""
    import json
    import shutil

    from chatvlm.models.deepseek_ocr.synthetic import build_byte_tokenizer
    from tests.conftest import FIXTURES

    fixture = FIXTURES / "deepseek_ocr"
    if not (fixture / "model.safetensors").exists():
        pytest.skip(f"DeepSeek-OCR fixture checkpoint not found at {fixture} (../shared beside the checkout)")
    for name in ("config.json", "model.safetensors", "processor_config.json"):
        shutil.copy(fixture / name, tmp_path / name)
    build_byte_tokenizer(tmp_path, vocab_size=json.loads((fixture / "config.json").read_text())["vocab_size"])
    spec = get_spec("deepseek_ocr")
    be = spec.backend_class()(spec, BackendOptions(model_path=tmp_path, device="cpu", extra={}))
    be.load()
    assert_backend_decodes_like_generate(be, _pages()[:2], max_new=16)
    be.close()
