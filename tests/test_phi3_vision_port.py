"""Phi-3.5-vision port: checked against the official implementation's fixture and on fresh
random checkpoints of other sizes, so nothing is fitted to the one fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from chatvlm.models import phi3_vision
from chatvlm.models.phi3_vision.processing import hd_grid
from chatvlm.models.phi3_vision.synthetic import build_byte_tokenizer, special_token_ids
from chatvlm.models.phi3_vision.testing import write_random_checkpoint

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "phi3_vision"
REL_TOL = 1e-5  # max |port - reference| <= REL_TOL * max |reference|, fp32

needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "model.safetensors").is_file(),
    reason=f"reference fixture not found at {FIXTURE} (the shared folder sits next to the repo checkout)",
)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = rel_err(actual, expected)
    assert err <= REL_TOL, f"{what}: relative max error {err:.3g} > {REL_TOL}"
    return err


def checkpoint_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for file in phi3_vision.checkpoint_files(folder):
        with safe_open(str(file), framework="pt") as fh:
            names |= set(fh.keys())
    return names


# ---- fixture: the official implementation's tensors ------------------------------------


@pytest.fixture(scope="module")
def expected():
    return load_file(str(FIXTURE / "expected.safetensors"))


@needs_fixture
def test_fixture_preprocessing(expected):
    proc = phi3_vision.processor_from_pretrained(FIXTURE)
    assert proc.num_crops == 4
    out = proc(images=[Image.open(FIXTURE / "test_image.png")])
    assert torch.equal(out["pixel_values"], expected["pixel_values"]), "pixel_values must be exact"
    assert torch.equal(out["image_sizes"], expected["image_sizes"])
    inputs = json.loads((FIXTURE / "inputs.json").read_text())
    assert out["num_img_tokens"] == inputs["num_img_tokens"] == [469]


@needs_fixture
def test_fixture_prompt_layout(tmp_path):
    """Placeholder layout with a tokenizer carrying the official special ids: BOS per text
    chunk, 469 x -1 where <|image_1|> was, the prompt ending on <|assistant|> (rstrip)."""
    tok = build_byte_tokenizer(tmp_path / "tok", vocab_size=32064)
    proc = phi3_vision.processor_from_pretrained(FIXTURE, tokenizer=tok)
    inputs = json.loads((FIXTURE / "inputs.json").read_text())
    prompt = phi3_vision.format_prompt("What is written?")
    assert prompt == inputs["prompt"]
    batch = proc(images=[Image.open(FIXTURE / "test_image.png")], text=prompt)
    ids = batch["input_ids"][0].tolist()
    ref = inputs["input_ids"]
    span = inputs["image_token_span"]
    # Same structure as the official ids (the text pieces differ: our tokenizer is byte-level).
    assert ids[:2] == ref[:2] == [1, 32010]
    start = ids.index(-1)
    assert ids[start : start + span["count"]] == [-1] * span["count"]
    assert ids[start + span["count"]] == 1 == ref[span["end_inclusive"] + 1]  # second BOS
    assert ids.count(-1) == ref.count(-1) == 469
    assert ids[-1] == ref[-1] == 32001 and 32007 in ids
    assert torch.equal(batch["attention_mask"], torch.ones_like(batch["input_ids"]))


@needs_fixture
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fixture_activations_and_greedy(expected, attn):
    model = phi3_vision.from_pretrained(FIXTURE, dtype=torch.float32, attn_implementation=attn)
    assert not model.training
    assert set(model.state_dict().keys()) == checkpoint_names(FIXTURE)
    assert model.load_report == {"missing": [], "unexpected": []}

    pv, sizes, ids = expected["pixel_values"], expected["image_sizes"], expected["input_ids"]
    vision = model.vision
    errors = {}
    with torch.no_grad():
        vm = vision.img_processor.vision_model
        errors["clip_hidden_states_0"] = assert_close(
            vm.pre_layrnorm(vm.embeddings(pv[0, :3])), expected["clip_hidden_states_0"], "CLIP embeddings"
        )
        clip = vision.clip_features(pv[0])  # all 5 views, zero padding included
        errors["clip_patch_features"] = assert_close(clip, expected["clip_patch_features"], "CLIP features")
        errors["hd_features"] = assert_close(vision.hd_tokens(clip, 2, 1), expected["hd_features"], "HD features")
        feats = vision(pv, sizes)
        assert len(feats) == 1
        errors["image_features"] = assert_close(feats[0], expected["image_features"], "image features")
        embeds = model.embed_inputs(ids, pv, sizes)
        errors["inputs_embeds"] = assert_close(embeds, expected["inputs_embeds"], "inputs_embeds")

        mask = torch.ones_like(ids)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes)
        assert out.logits.shape == (1, 484, 32064)
        logits = out.logits[0]
        errors["logits_last8"] = assert_close(logits[-8:], expected["logits_last8"], "logits")
        assert torch.equal(logits.argmax(-1), expected["logits_argmax"])
        errors["logits_logsumexp"] = assert_close(logits.logsumexp(-1), expected["logits_logsumexp"], "logsumexp")

        hidden = model.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[0]
        errors["last_hidden_state"] = assert_close(hidden, expected["last_hidden_state"], "last hidden state")

        gen = model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes,
            max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True,
        )
        assert torch.equal(gen.sequences[0, :484], ids[0]), "generate returns prompt + new ids"
        assert gen.sequences[0, 484:].tolist() == expected["greedy_tokens"].tolist()
        step_logits = torch.stack([s[0] for s in gen.scores])
        errors["greedy_step_logits"] = assert_close(step_logits, expected["greedy_step_logits"], "greedy step logits")

        print(f"[{attn}] relative max errors: " + ", ".join(f"{k}={v:.2e}" for k, v in errors.items()))
        if attn != "eager":
            return  # full recompute (no KV cache) once is enough
        no_cache = model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes,
            max_new_tokens=8, do_sample=False, use_cache=False,
        )
        assert no_cache[0, 484:].tolist() == expected["greedy_tokens"].tolist()


@needs_fixture
def test_fixture_left_padded_batch(expected):
    """Row 0 = the fixture prompt, row 1 = a shorter prompt (padded on the left) with the
    same image at a different crop count: each row must give its single-row tokens."""
    model = phi3_vision.from_pretrained(FIXTURE, dtype=torch.float32)
    proc = phi3_vision.processor_from_pretrained(FIXTURE, num_crops=2)
    image = Image.open(FIXTURE / "test_image.png").resize((200, 300))
    small = proc(images=[image])
    n_tokens = small["num_img_tokens"][0]
    ids0 = expected["input_ids"][0]
    ids1 = torch.tensor([1, 32010, 29871, 13] + [-1] * n_tokens + [1, 29871, 13, 32007, 29871, 13, 32001])
    assert len(ids1) < len(ids0) and n_tokens != 469
    batch_ids = torch.full((2, len(ids0)), 32000)
    batch_ids[0] = ids0
    batch_ids[1, -len(ids1) :] = ids1
    mask = (torch.arange(len(ids0)) >= len(ids0) - len(ids1)).long()[None].repeat(2, 1)
    mask[0] = 1
    pv = torch.zeros(2, 5, 3, 336, 336)
    pv[0] = expected["pixel_values"][0]
    pv[1, : small["pixel_values"].shape[1]] = small["pixel_values"][0]
    sizes = torch.cat([expected["image_sizes"], small["image_sizes"]])
    with torch.no_grad():
        both = model.generate(input_ids=batch_ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes,
                              max_new_tokens=8, do_sample=False)
        alone = model.generate(input_ids=ids1[None], attention_mask=torch.ones(1, len(ids1), dtype=torch.long),
                               pixel_values=small["pixel_values"], image_sizes=small["image_sizes"],
                               max_new_tokens=8, do_sample=False)
    assert both[0, -8:].tolist() == expected["greedy_tokens"].tolist()
    assert both[1, -8:].tolist() == alone[0, -8:].tolist()


# ---- random checkpoints of other sizes ---------------------------------------------------

RANDOM_CASES = {
    "gqa-2shards-alias": dict(seed=7, shards=2, with_wte_alias=True, vocab_size=448, hidden_size=48,
                              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=80, clip_hidden_size=24, clip_layers=3, clip_heads=3,
                              clip_intermediate_size=40),
    "bf16-file-wide": dict(seed=11, dtype=torch.bfloat16, vocab_size=640, hidden_size=96, num_hidden_layers=1,
                           num_attention_heads=6, intermediate_size=128, clip_hidden_size=48, clip_layers=2,
                           clip_heads=4, clip_intermediate_size=96),
}


def page_images():
    """Two pages whose HD grids differ (1x1 and 2x1 crops at num_crops=2; 2x2 and 3x1 at 4)."""
    landscape = Image.new("RGB", (500, 300), (240, 240, 240))
    portrait = Image.new("RGB", (200, 700), (255, 255, 255))
    for x in range(0, 500, 37):
        landscape.paste((20, 20, 160), (x, 40, x + 15, 260))
    for y in range(0, 700, 53):
        portrait.paste((120, 10, 10), (20, y, 180, y + 9))
    return [landscape, portrait]


@pytest.mark.parametrize("case", sorted(RANDOM_CASES))
def test_random_checkpoint_roundtrip_and_batching(tmp_path, case):
    spec = dict(RANDOM_CASES[case])
    ckpt = tmp_path / "ckpt"
    config = write_random_checkpoint(ckpt, num_crops=2, **spec)
    vocab = config["vocab_size"]
    tok = build_byte_tokenizer(ckpt, vocab_size=vocab)
    stop = special_token_ids(vocab)

    model = phi3_vision.from_pretrained(ckpt, dtype=torch.float32)
    names = checkpoint_names(ckpt) - {"model.vision_embed_tokens.wte.weight"}
    assert set(model.state_dict().keys()) == names
    assert model.load_report == {"missing": [], "unexpected": []}
    assert stop["<|end|>"] in model.generation_config.eos_token_id

    proc = phi3_vision.processor_from_pretrained(ckpt, tokenizer=tok)
    assert proc.num_crops == 2  # read from the folder's preprocessor_config.json
    assert proc.stop_token_ids() == [stop["<|end|>"], stop["<|endoftext|>"], 2]
    images = page_images()
    prompts = [phi3_vision.format_prompt(phi3_vision.OCR_PROMPTS["text"]),
               phi3_vision.format_prompt(phi3_vision.OCR_PROMPTS["markdown"])]
    batch = proc.build_batch(prompts, images)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    assert proc(images=images)["num_img_tokens"] == [313, 469]
    assert [int((row == -1).sum()) for row in batch["input_ids"]] == [313, 469]
    assert batch["pixel_values"].shape == (2, 3, 3, 336, 336)
    assert batch["pixel_values"][0, 2:].abs().sum() == 0  # 1x1 grid: zero view pads to num_crops+1
    assert batch["attention_mask"][1].all() and not batch["attention_mask"][0].all()
    assert (batch["input_ids"][0, : int((batch["attention_mask"][0] == 0).sum())] == tok.pad_token_id).all()

    # Greedy, no stop token, so every row produces exactly 8 new tokens.
    gen_kwargs = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        batched = model.generate(**batch, **gen_kwargs)
        batched_logits = model(**batch).logits
        for i in range(2):
            single = proc.build_batch([prompts[i]], [images[i]])
            n = single["input_ids"].shape[1]
            alone = model.generate(**single, **gen_kwargs)
            assert batched[i, width:].tolist() == alone[0, n:].tolist(), f"row {i}: batched != single-page tokens"
            alone_logits = model(**single).logits[0]
            assert rel_err(batched_logits[i, -n:], alone_logits) < 1e-4
            text = proc.decode(alone[0, n:])
            assert isinstance(text, str) and text

    # The images matter: blank pixels change the logits.
    with torch.no_grad():
        blank = model(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).logits
    assert rel_err(blank[:, -1], batched_logits[:, -1]) > 1e-3

    # Same weights in bf16 run and agree closely with fp32 on the first-step logits.
    model_bf16 = phi3_vision.from_pretrained(ckpt, dtype=torch.bfloat16)
    assert model_bf16.lm_head.weight.dtype == torch.bfloat16
    assert model_bf16.model.rotary_emb.inv_freq.dtype == torch.float32
    with torch.no_grad():
        low = model_bf16(**batch).logits[:, -1].float()
    cos = torch.nn.functional.cosine_similarity(low, batched_logits[:, -1], dim=-1)
    assert (cos > 0.99).all(), cos


def test_long_rope_switch_keeps_the_image(tmp_path):
    """Crossing original_max_position_embeddings during generation makes Phi-3 drop its KV
    cache and re-run the whole sequence with the long RoPE factors; the image must be
    embedded again for that re-run. Cached generation must equal full recompute."""
    tok = build_byte_tokenizer(tmp_path / "tok", vocab_size=384)
    proc = phi3_vision.Phi3VImageProcessor(num_crops=1, tokenizer=tok)
    batch = proc.build_batch([phi3_vision.format_prompt("read")], [page_images()[0]])
    n = batch["input_ids"].shape[1]
    ckpt = tmp_path / "ckpt"
    write_random_checkpoint(ckpt, seed=5, vocab_size=384, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, clip_hidden_size=16,
                            clip_layers=1, clip_heads=2, clip_intermediate_size=32,
                            original_max_position_embeddings=n + 3)
    model = phi3_vision.from_pretrained(ckpt, dtype=torch.float32)
    kwargs = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        cached = model.generate(**batch, **kwargs)
        full = model.generate(**batch, use_cache=False, **kwargs)
    assert cached[0, n:].tolist() == full[0, n:].tolist()


def test_checkpoint_keys_alias_and_mismatch(tmp_path):
    ckpt = tmp_path / "ckpt"
    write_random_checkpoint(ckpt, seed=1, vocab_size=384, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64, clip_hidden_size=16,
                            clip_layers=1, clip_heads=2, clip_intermediate_size=32)
    tensors = load_file(str(ckpt / "model.safetensors"))
    reference = phi3_vision.from_pretrained(ckpt).state_dict()

    # The embedding stored only under the official `wte` alias still loads, into embed_tokens.
    aliased = dict(tensors)
    aliased["model.vision_embed_tokens.wte.weight"] = aliased.pop("model.embed_tokens.weight")
    save_file(aliased, str(ckpt / "model.safetensors"))
    loaded = phi3_vision.from_pretrained(ckpt).state_dict()
    assert set(loaded) == set(reference)
    assert torch.equal(loaded["model.embed_tokens.weight"], reference["model.embed_tokens.weight"])

    # A missing and an unexpected tensor are errors that name the keys.
    tensors["model.extra.weight"] = torch.zeros(1)
    del tensors["model.vision_embed_tokens.glb_GN"]
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(phi3_vision.CheckpointKeyError, match="glb_GN"):
        phi3_vision.from_pretrained(ckpt)


def test_full_size_architecture_on_meta():
    """The real-size model from the official full config: 4.147B parameters, official names."""
    full = FIXTURE / "full_config.json"
    if not full.is_file():
        pytest.skip(f"{full} not found")
    model = phi3_vision.build_from_config(json.loads(full.read_text()), dtype=torch.bfloat16, device="meta")
    assert model.config._attn_implementation == "sdpa"  # flash_attention_2 in the file is never required
    assert sum(p.numel() for p in model.parameters()) == 4_146_621_440
    keys = set(model.state_dict())
    assert "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.23.mlp.fc2.weight" in keys
    assert "model.layers.31.self_attn.qkv_proj.weight" in keys
    assert model.vision.glb_GN.shape == (1, 1, 4096) and model.vision.sub_GN.shape == (1, 1, 1, 4096)


def test_hd_grid_and_token_counts():
    # A4 page at 1700x2200 (reference numbers): 16 crops -> 1344x1344, 4x4, 2509 tokens.
    assert hd_grid(1700, 2200, 16)[2:] == (1344, 1344)
    assert phi3_vision.num_image_tokens(4, 4) == 2509
    assert hd_grid(1700, 2200, 4)[2:] == (672, 672)
    assert phi3_vision.num_image_tokens(2, 2) == 757
    # The fixture's portrait: 260x620 -> 336 wide, 672 high.
    assert hd_grid(260, 620, 4)[2:] == (336, 672)
    # The test pages: 500x300 and 200x700.
    assert hd_grid(500, 300, 4)[2:] == (672, 672) and hd_grid(200, 700, 4)[2:] == (336, 1008)
    assert hd_grid(500, 300, 2)[2:] == (336, 336) and hd_grid(200, 700, 2)[2:] == (336, 672)
    assert phi3_vision.DEFAULT_NUM_CROPS == 4 and phi3_vision.OCR_NUM_CROPS == 16
