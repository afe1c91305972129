"""The four transformers-native models on tiny random-weight checkpoints (real config,
processor and model classes; tokenizer built in code), loaded through each backend's own
load(): batching == one page at a time, structure, prompts, postprocessing, loop guard,
chat, and `chatvlm ocr/layout --model NAME --model-path DIR` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from chatvlm.backends.base import create_backend
from chatvlm.config import BackendOptions, GenerationParams
from chatvlm.records import Page, RawOutput
from chatvlm.registry import get_spec
from chatvlm.testing import build_tiny_checkpoint
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ["qwen_vl_2b", "qwen3_vl_2b", "got_ocr_hf", "deepseek_ocr2"]
SIZES = [(300, 200), (900, 1300), (640, 480), (200, 700)]      # (w, h): different token counts per page
MAX_NEW = 24
PARAMS = GenerationParams(max_new_tokens=MAX_NEW, max_pixels=28 * 28 * 100, min_pixels=28 * 28 * 4)




@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    built = {}

    def get(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build_tiny_checkpoint(name, tmp_path_factory.mktemp(name), **kwargs)
        return built[key]
    return get


@pytest.fixture(scope="module")
def loaded(checkpoints):
    cache = {}

    def get(name):
        if name not in cache:
            # eos_boost: rows of one batch stop at different steps (some run to the budget)
            backend = create_backend(get_spec(name), BackendOptions(model_path=checkpoints(name, eos_boost=3.0)))
            backend.load()
            cache[name] = backend
        return cache[name]
    yield get
    for backend in cache.values():
        backend.close()


def noise_pages(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [Page(source=Path(f"doc{i}.png"), doc_key=f"doc{i}", page=1, index=i,
                 image=Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
            for i, (w, h) in enumerate(sizes)]


# ----------------------------------------------------------------- batching

@pytest.mark.parametrize("name", MODELS)
def test_batched_run_equals_one_page_at_a_time(loaded, name):
    backend = loaded(name)
    assert backend.describe()["dtype"] == "float32" and backend.load_s > 0
    pages = noise_pages()
    batch = backend.generate_batch(pages, "markdown", PARAMS)
    single = [backend.generate_batch([p], "markdown", PARAMS)[0] for p in pages]
    assert len(batch) == len(pages)
    for b, s in zip(batch, single):
        assert (b.text, b.output_tokens, b.finish_reason, b.input_tokens) == \
               (s.text, s.output_tokens, s.finish_reason, s.input_tokens)
        assert b.finish_reason in ("stop", "length")
        assert 1 <= b.output_tokens <= MAX_NEW
        if b.finish_reason == "length":
            assert b.output_tokens == MAX_NEW
        assert b.generate_s > 0 and b.extra["batch_size"] == len(pages)
    # the batch really was padded (pages of different prompt lengths) and rows ended at different steps
    assert len({b.input_tokens for b in batch}) >= 2
    assert len({b.output_tokens for b in batch}) >= 2
    assert any(b.finish_reason == "stop" for b in batch)


@pytest.mark.parametrize("name", MODELS)
def test_prompt_is_trimmed_from_the_output(loaded, name):
    backend = loaded(name)
    raw = backend.generate_batch(noise_pages(SIZES[:1]), "text", PARAMS)[0]
    for marker in ("<|im_start|>", "assistant\n", "Read all the text", "OCR:", "Free OCR", "<image>",
                   "<｜end▁of▁sentence｜>"):
        assert marker not in raw.text


# ----------------------------------------------------------------- prompts

def test_qwen_prompts_and_pixel_budget(loaded):
    q2, q3 = loaded("qwen_vl_2b"), loaded("qwen3_vl_2b")
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert q2.render_prompt("Read all the text in the image.") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + vision
        + "Read all the text in the image.<|im_end|>\n<|im_start|>assistant\n")
    assert q3.render_prompt("qwenvl markdown") == (
        "<|im_start|>user\n" + vision + "qwenvl markdown<|im_end|>\n<|im_start|>assistant\n")
    assert q3.prompt_for("markdown") == "qwenvl markdown"
    spec = get_spec("qwen_vl_2b")
    assert q2.processor.image_processor.size == {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    page = noise_pages([(1200, 1600)])
    for budget in (28 * 28 * 16, 28 * 28 * 64):
        inputs = q2.build_inputs(page, "text", GenerationParams(max_pixels=budget))
        assert int(inputs["image_grid_thw"].prod()) // 4 <= budget // (28 * 28)
        assert inputs["input_ids"].shape[0] == 1


def test_got_prompts_plain_format_and_crops(loaded):
    got = loaded("got_ocr_hf")
    tail = "<|im_end|><|im_start|>assistant\n"
    assert got.render_prompt("text").endswith("</img>\n OCR: " + tail)
    assert got.render_prompt("markdown").endswith("</img>\n OCR with format: " + tail)
    assert got.render_prompt("text").startswith(
        "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail.<|im_end|>")
    tall = got.render_prompt("text", width=300, height=1000)
    assert tall.endswith(" OCR upon the patch reference: " + tail)
    assert tall.count("<imgpad>") > got.render_prompt("text").count("<imgpad>")
    assert not got.use_crops(1700, 2200) and got.use_crops(2000, 600)


def test_got_no_repeat_ngram_on_single_view_pages_static_equals_generate(checkpoints):
    # A near-zero random model repeats one token: the authors' no_repeat_ngram_size=20 must
    # break the run at the 20th copy on single-view pages and leave tiled pages alone, the
    # same through chatvlm's static decoder and through transformers generate, batched or not.
    folder = checkpoints("got_ocr_hf", init_std=0.02)
    pages = noise_pages([(300, 300), (900, 300), (400, 500)])     # the 900x300 page is tiled
    params = GenerationParams(max_new_tokens=48, loop_guard=False)
    runs = {}
    for decode in ("auto", "hf"):
        for size in (20, 0):
            backend = create_backend(get_spec("got_ocr_hf"), BackendOptions(
                model_path=folder, extra={"decode": decode, "no_repeat_ngram_size": size}))
            backend.load()
            assert backend.single_view_rows(backend.build_inputs(pages, "text", params)) == [True, False, True]
            runs[decode, size] = [(r.text, r.output_tokens) for r in backend.generate_batch(pages, "text", params)]
            facts = backend.describe()
            assert facts["decode"] == ("chatvlm-static" if decode == "auto" else "hf-generate")
            assert facts["no_repeat_ngram"]["ngram_size"] == (size or None)
            if decode == "auto" and size:
                assert [(r.text, r.output_tokens) for r in
                        (backend.generate_batch([p], "text", params)[0] for p in pages)] == runs[decode, size]
            backend.close()
    assert runs["auto", 20] == runs["hf", 20] and runs["auto", 0] == runs["hf", 0]
    banned, free = runs["auto", 20], runs["auto", 0]
    assert free[0][0] == "\n" * 48                                        # the loop the ban is for
    assert banned[0][0] != free[0][0] and "\n" * 20 not in banned[0][0]    # single view: broken at 20
    assert banned[1] == free[1]                                           # tiled: no ban (authors' chat_crop)
    assert get_spec("got_ocr_hf").extra["no_repeat_ngram_size"] == 20


def test_got_no_repeat_ngram_survives_batch_compaction(checkpoints):
    # Rows that stop early are compacted out of the static decoder's batch; the per-row
    # ban follows the rows that are left (select_rows) and matches generate.
    folder = checkpoints("got_ocr_hf", init_std=0.02, eos_boost=4.0)
    pages = noise_pages([(300, 300), (900, 300), (400, 500), (500, 300)])
    params = GenerationParams(max_new_tokens=48, loop_guard=False)
    runs = {}
    for decode in ("auto", "hf"):
        backend = create_backend(get_spec("got_ocr_hf"), BackendOptions(
            model_path=folder, extra={"decode": decode, "no_repeat_ngram_size": 3}))
        backend.load()
        runs[decode] = [(r.text, r.output_tokens, r.finish_reason) for r in backend.generate_batch(pages, "text", params)]
        if decode == "auto":
            assert backend.runner.decoder.stats.compactions >= 1
        backend.close()
    assert runs["auto"] == runs["hf"]
    assert len({n for _, n, _ in runs["auto"]}) >= 2                     # rows ended at different steps


def test_deepseek_prompt_is_bos_plus_raw_prompt(loaded):
    ds = loaded("deepseek_ocr2")
    inputs = ds.build_inputs(noise_pages([(300, 200)]), "text", PARAMS)
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == 0                                               # BOS, no chat roles
    text = ds.tokenizer.decode(ids[1:], skip_special_tokens=False)
    assert text == "<image>" * 257 + "\nFree OCR."                  # 256 global + separator, no tiles
    assert ds.prompt_for("layout") == "<image>\n<|grounding|>Convert the document to markdown."
    procs = ds.logits_processors("layout", PARAMS, inputs)
    assert procs[0].n == 20 and procs[0].w == 90 and len(procs[0].whitelist) == 2


# ----------------------------------------------------------------- postprocessing (pure)

def _page(w=1000, h=2000):
    return Page(source=Path("a.pdf"), doc_key="a", page=3, image=Image.new("RGB", (w, h), "white"))


def test_qwen_and_got_postprocess_literal_outputs():
    qwen = create_backend(get_spec("qwen_vl_2b"), BackendOptions())
    raw = RawOutput(text="```markdown\n# Title\n\n**bold** text\n```", input_tokens=10, output_tokens=7,
                    finish_reason="stop")
    res = qwen.postprocess(_page(), raw, "markdown")
    assert res.markdown == "# Title\n\n**bold** text" and res.text.strip() == "Title\n\nbold text"
    assert (res.width, res.height, res.finish_reason, res.input_tokens, res.output_tokens) == (1000, 2000, "stop", 10, 7)
    assert qwen.postprocess(_page(), RawOutput(text="  plain \n"), "text").text == "plain"
    got = create_backend(get_spec("got_ocr_hf"), BackendOptions())
    res = got.postprocess(_page(), RawOutput(text="\\title{Hello}\nworld<|im_end|>", finish_reason="length"), "markdown")
    assert res.markdown == "# Hello\n\nworld" and res.text == "Hello\n\nworld\n" and res.finish_reason == "length"


def test_deepseek_postprocess_grounding_and_truncation():
    ds = create_backend(get_spec("deepseek_ocr2"), BackendOptions())
    raw = RawOutput(text=("<|ref|>title<|/ref|><|det|>[[100, 50, 900, 99]]<|/det|>\n# Report\n\n"
                          "<|ref|>text<|/ref|><|det|>[[100, 120, 900, 400]]<|/det|>\nBody text.\n\n"
                          "<|ref|>table<|/ref|><|det|>[[100, 4"), finish_reason="length", output_tokens=99)
    res = ds.postprocess(_page(), raw, "layout")
    assert [b.category for b in res.layout] == ["Title", "Text"]
    assert res.layout[0].bbox == [100, 100, 900, 198]
    assert res.markdown.strip() == "# Report\n\nBody text." and "<|" not in res.text
    assert res.repaired and res.finish_reason == "length"
    plain = ds.postprocess(_page(), RawOutput(text="Free text\nline 2"), "text")
    assert plain.text == "Free text\nline 2" and plain.layout is None


# ----------------------------------------------------------------- loop guard on a real model

def test_loop_guard_stops_and_trims_a_looping_model(checkpoints):
    path = checkpoints("qwen_vl_2b", init_std=0.05)          # narrow weights: emits "\n" forever
    backend = create_backend(get_spec("qwen_vl_2b"), BackendOptions(model_path=path))
    backend.load()
    backend.loop_settings = {"min_span": 16, "min_repeats": 4, "check_every": 4}
    pages = noise_pages(SIZES[:2])
    # Whitespace is markup: a run of it is a loop only past MARKUP_MIN_REPEATS (100) copies.
    guarded = backend.generate_batch(pages, "text", GenerationParams(max_new_tokens=128, max_pixels=28 * 28 * 64))
    free = backend.generate_batch(pages, "text", GenerationParams(max_new_tokens=128, max_pixels=28 * 28 * 64,
                                                                   loop_guard=False))
    for g, f in zip(guarded, free):
        assert g.finish_reason == "loop" and 100 <= g.output_tokens < 128 and g.extra["loop_trimmed"]
        assert len(g.text) < len(f.text)
        assert f.finish_reason == "length" and f.output_tokens == 128
    backend.close()


# ----------------------------------------------------------------- chat

@pytest.mark.parametrize("name", ["qwen_vl_2b", "qwen3_vl_2b"])
def test_ask_with_history(loaded, name):
    backend = loaded(name)
    image = noise_pages([(320, 240)])[0].image
    params = GenerationParams(max_new_tokens=8, max_pixels=28 * 28 * 32)
    first = backend.ask(image, "What is written here?", params=params)
    second = backend.ask(image, "And below?", history=[("What is written here?", first)], params=params)
    assert isinstance(first, str) and isinstance(second, str)
    assert backend.messages(image, "q2", [("q1", "a1")])[0]["content"][0]["type"] == "image"


# ----------------------------------------------------------------- end to end, as a user runs it

@pytest.mark.parametrize("name", MODELS)
def test_cli_ocr_end_to_end(checkpoints, tmp_path, name):
    from chatvlm.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ocr", str(ROOT / "examples"), "-o", str(out), "--model", name,
                                      "--model-path", str(checkpoints(name, eos_boost=3.0)),
                                      "--max-new-tokens", "16", "--max-pixels", "60000", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 5                                   # 3 images + a 2-page PDF
    assert all(e["status"] == "ok" for e in entries)
    assert all(e["finish_reason"] in ("stop", "length", "loop") for e in entries)
    assert all(e["input_tokens"] > 0 and 0 < e["output_tokens"] <= 16 for e in entries)
    for doc in ("english_letter", "noisy_scan", "russian_poem"):
        assert (out / doc / "page-0001.md").exists() and (out / doc / "page-0001.txt").exists()
    assert (out / "two_pages" / "page-0002.md").exists()
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert "sdpa" in text and "float32" in text
    if name == "got_ocr_hf":
        assert report["engine"]["no_repeat_ngram"]["ngram_size"] == 20


def test_cli_layout_end_to_end_deepseek(checkpoints, tmp_path):
    from chatvlm.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["layout", str(ROOT / "examples" / "english_letter.png"), "-o", str(out),
                                      "--model", "deepseek_ocr2", "--model-path",
                                      str(checkpoints("deepseek_ocr2", eos_boost=3.0)), "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (out / "english_letter").iterdir())
    assert "page-0001.json" in files and "page-0001.md" in files
    json.loads((out / "english_letter" / "page-0001.json").read_text())
