"""DeepSeek-OCR (v1) port against the official reference fixture (../shared/fixtures/deepseek_ocr).

Float tensors must match within 1e-4 * max|ref| in float32; MoE expert choices, argmax per
position, greedy tokens and the processor's token layout must match exactly. Random
checkpoints of other sizes prove nothing is fitted to the one fixture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessorList

from chatvlm.loop_guard import WindowedNoRepeatNGram
from chatvlm.models import deepseek_ocr
from chatvlm.models.deepseek_ocr.configuration import DeepseekOCRConfig
from chatvlm.models.deepseek_ocr.loading import _build_meta
from chatvlm.models.deepseek_ocr.processing import choose_grid
from chatvlm.models.deepseek_ocr.synthetic import build_byte_tokenizer
from chatvlm.models.deepseek_ocr.testing import write_random_checkpoint

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "deepseek_ocr"
MODES = ["tiny", "small", "base", "large", "gundam"]
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    if not (FIXTURE / "model.safetensors").exists():
        pytest.skip(f"reference fixture not found at {FIXTURE} (the shared/ folder beside the repo)")
    return FIXTURE


@pytest.fixture(scope="module")
def expected(fixture_dir):
    from safetensors.torch import load_file
    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="module")
def inputs(fixture_dir):
    return json.loads((fixture_dir / "inputs.json").read_text(encoding="utf-8"))["modes"]


@pytest.fixture(scope="module")
def model(fixture_dir):
    torch.manual_seed(0)
    return deepseek_ocr.from_pretrained(fixture_dir, dtype=torch.float32, device="cpu")


def _pixels(path: Path) -> torch.Tensor:
    u8 = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
    return (torch.from_numpy(u8.copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5


def _reference_inputs(fixture_dir, expected, inputs, mode):
    """Model inputs exactly as the official infer() built them (views from the shipped PNGs)."""
    views = inputs[mode]["views"]
    glob = _pixels(fixture_dir / views["global"])[None]
    crops = (torch.stack([_pixels(fixture_dir / c["file"]) for c in views["crops"]])
             if views.get("crops") else torch.zeros_like(glob))
    ids = expected[f"{mode}.input_ids"][None]
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), images=[(crops, glob)],
                images_seq_mask=expected[f"{mode}.images_seq_mask"][None].bool(),
                images_spatial_crop=expected[f"{mode}.images_spatial_crop"])


def _check_close(name: str, got: torch.Tensor, ref: torch.Tensor, errors: dict[str, float] | None = None) -> None:
    """max|got - ref| <= REL_TOL * max|ref|; the relative error goes into `errors` when given."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    rel = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
    if errors is not None:
        errors[name] = rel
    assert rel <= REL_TOL, f"{name}: max error {rel:.2e} x max|ref| > {REL_TOL}"


# ---------------------------------------------------------------------------------------------
# fixture: loading, forward, generate, processor
# ---------------------------------------------------------------------------------------------

def test_fixture_loads_with_zero_missing_or_unexpected_keys(model):
    assert model.loading_info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    assert sum(p.numel() for p in model.parameters()) == 1_348_000
    assert not model.training and model.dtype == torch.float32


@pytest.mark.parametrize("mode", MODES)
def test_forward_and_greedy_match_reference(mode, model, fixture_dir, expected, inputs):
    """One `generate` call per mode: hooks record the prefill step's intermediate tensors
    (vision runs only there), the new tokens are the greedy ids."""
    batch = _reference_inputs(fixture_dir, expected, inputs, mode)
    errors: dict[str, float] = {}
    inner = model.model
    seen: dict[str, Any] = {"sam": [], "clip": [], "proj": []}

    def first(key, value):  # hooks must return None
        seen.setdefault(key, value)

    hooks = [
        inner.sam_model.register_forward_hook(lambda m, a, o: seen["sam"].append(o)),
        inner.vision_model.register_forward_hook(lambda m, a, o: seen["clip"].append(o)),
        inner.projector.register_forward_hook(lambda m, a, o: seen["proj"].append(o)),
        inner.layers[0].register_forward_pre_hook(lambda m, a: first("embeds", a[0])),
        inner.layers[0].register_forward_hook(lambda m, a, o: first("layer0", o)),
        inner.layers[1].mlp.gate.register_forward_hook(lambda m, a, o: first("gate", o)),
        inner.norm.register_forward_hook(lambda m, a, o: first("final_norm", o)),
    ]
    try:
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    finally:
        for h in hooks:
            h.remove()
    prompt_len = batch["input_ids"].shape[1]
    assert out[0, prompt_len:].tolist() == expected[f"{mode}.greedy_ids"].tolist()
    assert len(seen["sam"]) == (2 if inputs[mode]["has_local_crops"] else 1)  # prefill only

    # DeepEncoder stages: crops first (when tiled), then the global view, as the reference.
    views = (["crops"] if inputs[mode]["has_local_crops"] else []) + ["global"]
    for i, view in enumerate(views):
        for stage, key in (("sam", "sam_out"), ("clip", "clip_out"), ("proj", "projector_out")):
            _check_close(f"{mode}.{key}.{view}", seen[stage][i], expected[f"{mode}.{key}.{view}"], errors)
    mask = batch["images_seq_mask"][0]
    _check_close(f"{mode}.vision_embeds", seen["embeds"][0][mask], expected[f"{mode}.vision_embeds"], errors)
    for name, got, key in (("inputs_embeds", seen["embeds"][0], "0_inputs_embeds"),
                           ("layer0_out", seen["layer0"][0], "1_layer0_out"),
                           ("final_norm_out", seen["final_norm"][0], "2_final_norm_out")):
        _check_close(f"{mode}.{name}", got, expected[f"{mode}.hidden_states.{key}"], errors)

    # MoE routing of layer 1: the same expert set at every token, raw (unrenormalised) weights.
    idx, weight = seen["gate"]
    order = idx.argsort(dim=-1)
    assert torch.equal(idx.gather(-1, order), expected[f"{mode}.layer1_moe_topk_idx_sorted"])
    _check_close(f"{mode}.moe_weights", weight.gather(-1, order), expected[f"{mode}.layer1_moe_topk_weight_sorted"],
                 errors)

    # Full prompt logits (generate only keeps the last position, so apply the head here).
    with torch.no_grad():
        logits = model.lm_head(seen["final_norm"][0]).float()
    if f"{mode}.logits" in expected:
        _check_close(f"{mode}.logits", logits, expected[f"{mode}.logits"], errors)
    _check_close(f"{mode}.logits_last8", logits[-8:], expected[f"{mode}.logits_last8"], errors)
    top_values, top_ids = logits.topk(5, dim=-1)
    _check_close(f"{mode}.logits_top5", top_values, expected[f"{mode}.logits_top5_values"], errors)
    _check_close(f"{mode}.logsumexp", logits.logsumexp(-1), expected[f"{mode}.logits_logsumexp"], errors)
    assert torch.equal(top_ids[:, 0], expected[f"{mode}.logits_top5_ids"][:, 0]), "argmax differs"
    worst = max(errors, key=errors.get)
    print(f"[deepseek_ocr] {mode}: max |port-ref|/max|ref| {errors[worst]:.2e} ({worst}); "   # shown with -s
          f"logits {errors[mode + '.logits_last8']:.2e}, vision_embeds {errors[mode + '.vision_embeds']:.2e}")


@pytest.mark.parametrize("mode", ["tiny", "small"])
def test_plain_forward_logits(mode, model, fixture_dir, expected, inputs):
    """The documented call: model(input_ids, attention_mask, images, images_seq_mask,
    images_spatial_crop).logits -> [1, L, vocab]."""
    batch = _reference_inputs(fixture_dir, expected, inputs, mode)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 1024)
    _check_close(f"{mode}.forward_logits", logits[0], expected[f"{mode}.logits"])


def test_no_cache_generation_eager_attention_and_bf16(model, fixture_dir, expected, inputs):
    batch = _reference_inputs(fixture_dir, expected, inputs, "tiny")
    greedy = expected["tiny.greedy_ids"].tolist()
    with torch.no_grad():
        # Without a KV cache every step recomputes the prompt, vision included.
        out = model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=False)
        assert out[0, -8:].tolist() == greedy
        eager = deepseek_ocr.from_pretrained(fixture_dir, device="cpu", attn_implementation="eager")
        _check_close("tiny.eager_logits", eager(**batch).logits[0], expected["tiny.logits"])
        bf16 = deepseek_ocr.from_pretrained(fixture_dir, dtype=torch.bfloat16, device="cpu")
        logits = bf16(**batch).logits[0]
    assert logits.dtype == torch.float32  # logits are returned in float32 whatever the dtype
    cos = torch.nn.functional.cosine_similarity(logits.flatten(), expected["tiny.logits"].flatten(), dim=0)
    assert cos > 0.999


def test_batched_left_padded_generation_equals_single_pages(model, fixture_dir):
    """Two pages of different lengths, views and prompts in one left-padded batch: the same
    greedy tokens as one page at a time (fp32). (Gundam tiles in a batch: see the random
    checkpoint test.)"""
    page = Image.open(fixture_dir / "test_image.png").convert("RGB")
    proc = deepseek_ocr.processor_from_pretrained(fixture_dir)
    singles = [proc(images=[page.crop((100, 50, 700, 450))], prompt=deepseek_ocr.PROMPT_FREE_OCR, mode="tiny"),
               proc(images=[page], prompt=deepseek_ocr.PROMPT_MARKDOWN, mode="small")]
    batch = deepseek_ocr.collate(singles, pad_token_id=proc.pad_token_id)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # really padded
    guard = WindowedNoRepeatNGram(20, 50, prompt_len=batch["input_ids"].shape[1])   # the official PDF runner's setting
    with torch.no_grad():
        batched = model.generate(**batch, max_new_tokens=8, do_sample=False,
                                 logits_processor=LogitsProcessorList([guard]))
        for row, single in enumerate(singles):
            alone = model.generate(**single, max_new_tokens=8, do_sample=False)
            new_batched = batched[row, batch["input_ids"].shape[1]:].tolist()
            assert new_batched == alone[0, single["input_ids"].shape[1]:].tolist()


# ---------------------------------------------------------------------------------------------
# nothing fitted to the fixture: other sizes, other seeds, the real architecture
# ---------------------------------------------------------------------------------------------

def test_random_checkpoint_of_other_sizes_round_trips_and_runs(tmp_path):
    sizes = dict(seed=7, vocab_size=640, hidden_size=48, intermediate_size=96, moe_intermediate_size=24,
                 num_hidden_layers=3, num_attention_heads=3, n_routed_experts=5, num_experts_per_tok=2,
                 n_shared_experts=1, first_k_dense_replace=1, sam_width=24, sam_layers=4, sam_heads=2,
                 sam_global_attn_indexes=(1, 3), sam_downsample_channels=(40, 48), clip_layers=1, clip_heads=2)
    config = write_random_checkpoint(tmp_path, **sizes)
    assert config["vision_config"]["width"]["clip-l-14-224"]["width"] == 48
    model = deepseek_ocr.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")
    assert model.loading_info["missing_keys"] == [] and model.loading_info["unexpected_keys"] == []
    assert [type(layer.mlp).__name__ for layer in model.model.layers] == ["DeepseekV2MLP", "DeepseekOCRMoE",
                                                                           "DeepseekOCRMoE"]
    assert len(model.model.layers[1].mlp.experts) == 5

    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert set(saved) == set(model.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())

    proc = deepseek_ocr.processor_from_pretrained(tmp_path)  # tiny tokenizer written beside it
    assert proc.tokenizer is not None and proc.image_token_id == 128815 % 640
    # Gundam in a batch: one page with 2x1 tiles, one without (zero placeholder), other prompts.
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (300, 660, 3), dtype=np.uint8)),
             Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))]
    prompts = [deepseek_ocr.PROMPT_MARKDOWN, "<image>\nSomething else entirely."]
    batch = proc.batch(pages, prompts, mode="gundam")
    assert batch["images_spatial_crop"].tolist() == [[2, 1], [1, 1]]
    with torch.no_grad():
        batched = model.generate(**batch, max_new_tokens=5, do_sample=False)
        for row, (page, prompt) in enumerate(zip(pages, prompts)):
            single = proc(images=[page], prompt=prompt, mode="gundam")
            alone = model.generate(**single, max_new_tokens=5, do_sample=False)
            new_batched = batched[row, batch["input_ids"].shape[1]:].tolist()
            assert new_batched == alone[0, single["input_ids"].shape[1]:].tolist()
    assert isinstance(proc.decode(batched[0]), str)

    # A stray or missing parameter is an error, not a silent random init.
    saved["model.extra.weight"] = torch.zeros(1)
    from safetensors.torch import save_file
    save_file(saved, str(tmp_path / "model.safetensors"))
    with pytest.raises(deepseek_ocr.CheckpointMismatchError):
        deepseek_ocr.from_pretrained(tmp_path, device="cpu")


def test_real_size_architecture_matches_official_names_and_shapes():
    shapes_file = FIXTURE / "real_param_shapes.json"
    if not shapes_file.exists():
        pytest.skip(f"reference fixture not found at {FIXTURE}")
    official = json.loads(shapes_file.read_text(encoding="utf-8"))
    config = DeepseekOCRConfig(**json.loads((FIXTURE / "full_config.json").read_text(encoding="utf-8")))
    meta = _build_meta(config, torch.bfloat16)
    ours = {k: list(v.shape) for k, v in meta.state_dict().items()}
    assert sorted(set(ours) - set(official)) == [] and sorted(set(official) - set(ours)) == []
    assert ours == official
    assert sum(p.numel() for p in meta.parameters()) == 3_336_106_240


def test_build_from_config_gives_a_working_model():
    config = deepseek_ocr.official_config_dict(
        vocab_size=256, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, n_routed_experts=4, num_experts_per_tok=2, sam_width=16, sam_layers=2,
        sam_heads=2, sam_global_attn_indexes=(1,), sam_downsample_channels=(16, 32), clip_layers=1, clip_heads=2)
    model = deepseek_ocr.build_from_config(config, dtype=torch.float32, device="cpu", seed=3)
    proc = deepseek_ocr.DeepseekOCRProcessor(vocab_size=256)
    enc = proc(images=[Image.new("RGB", (500, 300), "white")], prompt=deepseek_ocr.PROMPT_FREE_OCR, mode="tiny")
    with torch.no_grad():
        out = model(**enc)
    assert out.logits.shape == (1, enc["input_ids"].shape[1], 256) and torch.isfinite(out.logits).all()


# ---------------------------------------------------------------------------------------------
# processor rules that need no fixture
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,grid", [((1200, 800), (3, 2)), ((800, 1200), (2, 3)), ((1700, 2200), (2, 3)),
                                       ((1000, 1000), (2, 2)),
                                       # 7.5:1 ties 7x1 and 8x1; the larger grid only for a large image
                                       ((3000, 400), (7, 1)), ((7500, 1000), (8, 1))])
def test_gundam_grid_choice(size, grid):
    assert choose_grid(*size) == grid


def test_token_counts_per_mode():
    proc = deepseek_ocr.DeepseekOCRProcessor()
    assert [proc.num_image_tokens(1200, 800, m) for m in MODES] == [73, 111, 273, 421, 893]
    assert proc.num_image_tokens(600, 400, "gundam") == 273  # both sides <= 640: no tiles


def test_tiny_tokenizer_has_official_specials_inside_the_vocab(tmp_path):
    tok = build_byte_tokenizer(tmp_path, vocab_size=1024)
    ids = tok.convert_tokens_to_ids(["<image>", "<|grounding|>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"])
    assert ids == [815, 820, 816, 817, 818, 819]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    text = "<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nHello"
    encoded = tok.encode(text, add_special_tokens=False)
    assert max(encoded) < 1024 and tok.decode(encoded) == text
