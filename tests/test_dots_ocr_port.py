"""dots.ocr port vs the official implementation (../shared/fixtures/dots_ocr/), plus
random checkpoints of other sizes so nothing is fitted to the one fixture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from chatvlm.models import dots_ocr
from chatvlm.models.dots_ocr import testing

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "dots_ocr"

needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "expected.safetensors").exists(),
    reason=f"dots.ocr reference fixture not found at {FIXTURE} (../shared beside the checkout)",
)

# Reference §4: SHA-256 of each official prompt's UTF-8 bytes.
PROMPT_SHA256 = {
    "prompt_layout_all_en": "16ff71ac5d218f35e5b3db41240b6e70741498bc099db3fa922ce1ff972e3b2f",
    "prompt_layout_only_en": "d10f3720942d901f61cd1c313a6ba8305ec5e9674c56907ea92f82ad0d5f5fbf",
    "prompt_ocr": "8ee4c4b75c200c7f8877e3344318a5bb2280f3878d42007b2c717b3c46a11865",
    "prompt_grounding_ocr": "b18d62ea1e6619773144ba448c1f149ff694f9a8b673472b7706ae67c0f110a9",
}


def rel_err(actual: torch.Tensor, ref: torch.Tensor) -> float:
    return float((actual.double() - ref.double()).abs().max() / ref.double().abs().max())


@pytest.fixture(scope="module")
def expected():
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "expected.safetensors"))


@pytest.fixture(scope="module")
def inputs_json():
    return json.loads((FIXTURE / "inputs.json").read_text())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return dots_ocr.from_pretrained(FIXTURE, dtype=torch.float32)


def fixture_tokenizer(inputs_json):
    """A real (fast) tokenizer built in the test: Qwen2's byte-level pre-tokenizer over a
    word-level vocabulary holding exactly the fixture's tokens at their official ids, plus
    the official special tokens. Enough to check prompt rendering -> ids end to end."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = inputs_json["special_token_ids"]
    vocab = {tok: i for tok, i in zip(inputs_json["tokens"], inputs_json["input_ids"])}
    vocab.update(specials)
    vocab["<unk>"] = 151999
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="<unk>")


# ------------------------------------------------------------------ prompts / processor


def test_prompts_verbatim():
    assert set(dots_ocr.PROMPTS) == set(PROMPT_SHA256)
    for name, text in dots_ocr.PROMPTS.items():
        assert hashlib.sha256(text.encode()).hexdigest() == PROMPT_SHA256[name], name


def test_smart_resize_official_limits():
    # Defaults are dots' own limits, not transformers' Qwen2-VL default (~11x smaller).
    proc = dots_ocr.DotsOCRProcessor()
    assert (proc.min_pixels, proc.max_pixels) == (3136, 11289600)
    w, h = proc.resized_size(1654, 2339)  # A4 at 200 DPI stays (nearly) full size
    assert (w % 28, h % 28) == (0, 0) and w * h <= 11289600 and w * h > 0.9 * 1654 * 2339
    assert dots_ocr.smart_resize(200, 150) == (196, 140)  # (h, w), fixture image
    h, w = dots_ocr.smart_resize(10000, 10000)
    assert h * w <= 11289600


@needs_fixture
def test_pixel_values_exact(expected):
    proc = dots_ocr.processor_from_pretrained(FIXTURE)
    assert proc.max_pixels == 40000  # read from the folder's preprocessor_config.json
    out = proc(images=[Image.open(FIXTURE / "test_image.png")])
    assert set(out) == {"pixel_values", "image_grid_thw"}
    assert out["pixel_values"].dtype == torch.float32
    assert torch.equal(out["image_grid_thw"], expected["image_grid_thw"])
    assert torch.equal(out["pixel_values"], expected["pixel_values"])  # bit for bit
    assert proc.resized_size(150, 200) == (140, 196)


@needs_fixture
def test_prompt_rendering_and_ids(expected, inputs_json):
    proc = dots_ocr.processor_from_pretrained(FIXTURE, tokenizer=fixture_tokenizer(inputs_json), framing="hf")
    assert proc.render_prompt("prompt_ocr") == inputs_json["chat_template_output"]
    batch = proc.build_batch([Image.open(FIXTURE / "test_image.png")], "prompt_ocr")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    # A batch of two pages of different sizes: left-padded, the fixture page unchanged.
    two = proc.build_batch([_image(280, 56, 9), Image.open(FIXTURE / "test_image.png")], "prompt_ocr")
    n = expected["input_ids"].shape[1]
    assert two["image_grid_thw"].tolist() == [[1, 4, 20], [1, 14, 10]]
    assert two["input_ids"].shape == (2, n)  # 20 image tokens < 35: row 0 is the padded one
    assert torch.equal(two["input_ids"][1], expected["input_ids"][0])
    assert two["attention_mask"][0].tolist() == [0] * 15 + [1] * (n - 15)
    assert two["input_ids"][0, :15].tolist() == [151680] * 15  # tokenizer's [PAD]
    # The vLLM/string framing behind the published scores.
    assert proc.render_prompt("prompt_ocr", framing="string") == (
        "<|user|><|img|><|imgpad|><|endofimg|>Extract the text content from this image.<|endofuser|><|assistant|>"
    )


# ------------------------------------------------------------------ model vs reference


@needs_fixture
def test_state_dict_names_equal_checkpoint(model):
    names = set(dots_ocr.read_checkpoint(FIXTURE).keys())
    assert set(model.state_dict().keys()) == names
    assert len(names) == 51
    assert not model.training


@needs_fixture
def test_vision_and_logits_match_reference(model, expected):
    tol = 1e-5
    got: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            got[name] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    vt, lm = model.vision_tower, model.model
    hooks = [vt.patch_embed.register_forward_hook(keep("vision.patch_embed_out"))]
    hooks += [b.register_forward_hook(keep(f"vision.block_out.{i}")) for i, b in enumerate(vt.blocks)]
    hooks += [vt.post_trunk_norm.register_forward_hook(keep("vision.post_trunk_norm_out"))]
    hooks += [vt.register_forward_hook(keep("vision.features"))]
    hooks += [layer.register_forward_hook(keep(f"lm.layer_out.{i}")) for i, layer in enumerate(lm.layers)]
    hooks += [lm.norm.register_forward_hook(keep("lm.final_norm_out"))]
    args = {k: expected[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    try:
        with torch.no_grad():
            logits = model(**args).logits
            got["lm.inputs_embeds"] = model.embed_with_images(
                args["input_ids"], args["pixel_values"], args["image_grid_thw"]
            )
            got["vision.rotary_pos_emb"] = vt.rot_pos_emb(args["image_grid_thw"])
    finally:
        for h in hooks:
            h.remove()

    assert logits.shape == (1, 47, 151936)
    pos = expected["logits.last8_positions"]
    got["logits.last8"] = logits[:, pos]
    top = logits.topk(5, dim=-1)
    got["logits.top5_values"] = top.values
    got["logits.logsumexp"] = logits.logsumexp(-1)

    errors = {}
    for name, value in got.items():
        ref = expected[name]
        assert value.shape == ref.shape, name
        errors[name] = rel_err(value, ref)
    print("max |port - ref| / max |ref|:", json.dumps({k: f"{v:.2e}" for k, v in errors.items()}, indent=1))
    bad = {k: v for k, v in errors.items() if v > tol}
    assert not bad, bad
    assert torch.equal(top.indices, expected["logits.top5_ids"])
    assert torch.equal(logits.argmax(-1), expected["logits.argmax"])


@needs_fixture
def test_greedy_tokens_match_reference(model, expected, inputs_json):
    args = {k: expected[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    out = model.generate(**args, max_new_tokens=8, do_sample=False)
    assert torch.equal(out[:, :47], expected["input_ids"])  # prompt + new ids, like HF
    assert torch.equal(out[:, 47:], expected["generated_ids"])
    assert out[0, 47:].tolist() == inputs_json["generation"]["generated_ids"]


@needs_fixture
def test_bf16_load_runs(expected):
    m = dots_ocr.from_pretrained(FIXTURE, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    assert m.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE stays exact
    args = {k: expected[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    with torch.no_grad():
        logits = m(**args).logits[:, expected["logits.last8_positions"]].float()
    # The reference itself in bf16 is off by ~1e-2 relative (fixture README); just sanity.
    assert rel_err(logits, expected["logits.last8"]) < 0.1


# ------------------------------------------------------------------ other checkpoints


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    cfg = testing.config_dict(
        hidden_size=24, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
        vision_embed_dim=40, vision_layers=2, vision_heads=2, vision_intermediate_size=56,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("dots_random")
    # Sharded on purpose: exercises model.safetensors.index.json.
    testing.build_random_checkpoint(folder, cfg, seed=7, max_shard_bytes=60_000, max_pixels=28 * 28 * 40)
    return folder, cfg


def test_random_checkpoint_roundtrip(random_checkpoint):
    folder, cfg = random_checkpoint
    assert (folder / "model.safetensors.index.json").exists()
    state = dots_ocr.read_checkpoint(folder)
    model = dots_ocr.from_pretrained(folder, dtype=torch.float32)
    sd = model.state_dict()
    assert set(sd) == set(state)  # zero missing / unexpected
    assert all(torch.equal(sd[k], state[k]) for k in state)
    assert model.config.image_token_id == cfg["image_token_id"] == 900
    # A checkpoint with a tensor too many or too few is refused.
    with pytest.raises(ValueError, match="missing"):
        dots_ocr.check_keys(model, [k for k in state if "post_trunk_norm" not in k])
    with pytest.raises(ValueError, match="unexpected"):
        dots_ocr.check_keys(model, list(state) + ["vision_tower.extra.weight"])


def _rows(proc, images, image_token_id):
    """Prompt ids without a tokenizer: a few text ids around one image token per page."""
    rows = []
    for i, img in enumerate(images):
        grid = proc.preprocess_image(img)[1]
        ids = [5 + i, 17, image_token_id, 23] + list(range(30, 30 + 3 * i))  # different lengths
        rows.append(proc.expand_image_tokens(ids, [grid]))
    return rows


def test_batch_matches_single_on_other_sizes(random_checkpoint):
    """Several images of different sizes in one packed vision sequence + left padding must
    give the same logits and greedy tokens as one page at a time."""
    folder, cfg = random_checkpoint
    model = dots_ocr.from_pretrained(folder, dtype=torch.float32)
    proc = dots_ocr.processor_from_pretrained(folder)
    images = [_image(90, 130, 1), _image(200, 60, 2), _image(90, 130, 3)]  # two share a size
    rows = _rows(proc, images, cfg["image_token_id"])
    batch = {**proc.pad(rows, "left"), **proc.preprocess_images(images)}
    assert batch["image_grid_thw"].shape == (3, 3)
    assert batch["pixel_values"].shape[1] == 588
    assert batch["attention_mask"][:, 0].tolist() != [1, 1, 1]  # really left-padded

    with torch.no_grad():
        logits_b = model(**batch).logits
    gen_b = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=None)
    width = batch["input_ids"].shape[1]
    for i, img in enumerate(images):
        single = {**proc.pad([rows[i]]), **proc.preprocess_images([img])}
        n = len(rows[i])
        with torch.no_grad():
            logits_s = model(**single).logits
        assert rel_err(logits_b[i, width - n :], logits_s[0]) < 1e-5
        gen_s = model.generate(**single, max_new_tokens=6, do_sample=False, eos_token_id=None)
        assert gen_b[i, width:].tolist() == gen_s[0, n:].tolist()


def test_vision_attention_is_block_diagonal(random_checkpoint):
    """Packed images attend only within themselves: features of a packed pair equal those
    of each image alone (no dense [N, N] mask is built anywhere)."""
    folder, _ = random_checkpoint
    model = dots_ocr.from_pretrained(folder, dtype=torch.float32)
    proc = dots_ocr.processor_from_pretrained(folder)
    a, b = proc.preprocess_images([_image(60, 200, 4)]), proc.preprocess_images([_image(150, 120, 5)])
    both = proc.preprocess_images([_image(60, 200, 4), _image(150, 120, 5)])
    with torch.no_grad():
        fa = model.vision_tower(a["pixel_values"], a["image_grid_thw"])
        fb = model.vision_tower(b["pixel_values"], b["image_grid_thw"])
        fab = model.vision_tower(both["pixel_values"], both["image_grid_thw"])
    assert rel_err(fab, torch.cat([fa, fb])) < 1e-5


@needs_fixture
def test_full_config_structure():
    """The real-size architecture (for `bench --synthetic`) builds instantly on meta with the
    official 643 tensor names and 3.04 B parameters."""
    m = dots_ocr.build_from_config(FIXTURE / "full_config.json", dtype=torch.bfloat16, device="meta")
    sd = m.state_dict()
    assert len(sd) == 643
    assert round(sum(t.numel() for t in sd.values()) / 1e9, 2) == 3.04
    assert sd["vision_tower.merger.mlp.0.weight"].shape == (6144, 6144)
    assert sd["vision_tower.blocks.41.attn.qkv.weight"].shape == (4608, 1536)
    assert sd["lm_head.weight"].shape == (151936, 1536)
