"""DeepSeek-OCR (v1) backend on the fixture checkpoint (tiny random weights, official format)
with a tiny tokenizer built here: `chatvlm ocr` / `chatvlm layout --model deepseek_ocr` through
the real CLI, registry, backend load() and generate(); batched == one page at a time on pages
with different image-token counts; the synthetic (bench) path; and postprocess on literal
model answers (well-formed, truncated mid-tag, looping). Random weights write noise, so the
end-to-end tests assert structure (files, counts, statuses, finish reasons, token counts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from chatvlm.backends.base import create_backend
from chatvlm.config import BackendOptions, GenerationParams
from chatvlm.records import Page, RawOutput
from chatvlm.registry import get_spec
from tests.conftest import noise_page, write_noise_pages

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "deepseek_ocr"
needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "model.safetensors").exists(),
    reason=f"DeepSeek-OCR fixture checkpoint not found at {FIXTURE} (../shared beside the checkout)")

MAX_NEW = 8
# (w, h): the first fits one 640-px tile (global view only, 273 image slots); the second is
# wider than 640 px, so gundam adds a 2x1 tile grid (273 + 10 * 21 = 483 slots).
SIZES = [(300, 200), (700, 300)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The fixture checkpoint plus a tiny tokenizer built here (the fixture ships none)."""
    from chatvlm.models.deepseek_ocr.synthetic import build_byte_tokenizer

    folder = tmp_path_factory.mktemp("dsocr_ckpt")
    for name in ("config.json", "model.safetensors", "processor_config.json"):
        shutil.copy(FIXTURE / name, folder / name)
    build_byte_tokenizer(folder, vocab_size=json.loads((FIXTURE / "config.json").read_text())["vocab_size"])
    return folder


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> list[Path]:
    return write_noise_pages(tmp_path_factory.mktemp("dsocr_pages"), SIZES)


@pytest.fixture(scope="module")
def backend(checkpoint):
    b = create_backend(get_spec("deepseek_ocr"), BackendOptions(model_path=checkpoint))
    b.load()
    yield b
    b.close()


def as_pages(paths: list[Path]) -> list[Page]:
    return [Page(source=p, doc_key=p.stem, page=1, image=Image.open(p).convert("RGB"), index=i)
            for i, p in enumerate(paths)]


def cli(*args: str):
    from typer.testing import CliRunner

    from chatvlm.cli import app

    return CliRunner().invoke(app, ["-q", *args], catch_exceptions=False)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ end to end on the fixture


@pytest.fixture(scope="module")
def one_page_at_a_time(checkpoint, pages, tmp_path_factory):
    """`chatvlm ocr -f json,markdown,text -b 1`: the layout task, each page alone."""
    out = tmp_path_factory.mktemp("dsocr_single") / "out"
    res = cli("ocr", *map(str, pages), "-o", str(out), "--model", "deepseek_ocr", "--model-path", str(checkpoint),
              "-f", "json,markdown,text", "-b", "1", "--max-new-tokens", str(MAX_NEW))
    assert res.exit_code == 0, res.output
    return out


@needs_fixture
def test_ocr_command_end_to_end(one_page_at_a_time, pages, backend):
    out = one_page_at_a_time
    entries = manifest(out)
    assert [(e["source"], e["page"], e["status"], e["model"]) for e in entries] == \
        [(str(p), 1, "ok", "deepseek_ocr") for p in pages]
    proc = backend.processor
    text_ids = 1 + len(proc.encode_text("\n<|grounding|>Convert the document to markdown."))   # BOS + prompt text
    # gundam: the 1024-px global view (16 rows of 16 + newline, + separator = 273 slots); the wide
    # page also gets a 2x1 grid of 640-px tiles (10 rows of 2 * 10 + newline = 210 slots)
    assert [e["input_tokens"] for e in entries] == [text_ids + 273, text_ids + 273 + 210]
    for e, p, (w, h) in zip(entries, pages, SIZES):
        assert sorted(e["outputs"]) == [f"{p.stem}/page-0001.json", f"{p.stem}/page-0001.md",
                                        f"{p.stem}/page-0001.txt"]
        assert e["finish_reason"] in ("stop", "length", "loop") and 1 <= e["output_tokens"] <= MAX_NEW
        doc = json.loads((out / p.stem / "page-0001.json").read_text())
        assert doc["model"] == "deepseek_ocr" and (doc["width"], doc["height"]) == (w, h)
        assert isinstance(doc["blocks"], list) and isinstance(doc["repaired"], bool)
        for block in doc["blocks"]:
            x1, y1, x2, y2 = block["bbox"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        for suffix in (".md", ".txt"):
            written = (out / p.stem / f"page-0001{suffix}").read_text()
            assert "<|ref|>" not in written and "<|det|>" not in written and "<｜end▁of▁sentence｜>" not in written
    report = json.loads((out / "report.json").read_text())
    assert report["pages"]["ok"] == 2 and report["pages"]["failed"] == 0
    assert report["command"] == "ocr" and report["task"] == "layout" and report["batches"] == 2
    engine = report["engine"]
    assert (engine["dtype"], engine["device"], engine["attention"]) == ("float32", "cpu", "sdpa")
    assert engine["mode"] == "gundam" and engine["model_class"] == "DeepseekOCRForCausalLM"
    assert engine["no_repeat_ngram"] == {"ngram_size": 30, "window_size": 90}
    # budgeting facts the scheduler uses: page cost = image slots; context 8192 caps the official 8192 new tokens
    assert [backend.page_cost(p) for p in as_pages(pages)] == [273.0, 483.0]
    assert backend.max_positions() == 8192 and backend.max_new_tokens(GenerationParams()) == 8192
    assert backend.prompt_tokens_estimate() == 16 + 273 + 30 * 21       # A4 at 200 DPI: a 2x3 tile grid
    assert backend.page_memory_bytes(GenerationParams()) > 0


@needs_fixture
def test_layout_command_batch_equals_one_page_at_a_time(checkpoint, pages, one_page_at_a_time, tmp_path):
    """`chatvlm layout --model deepseek_ocr`, both pages (273 vs 483 image slots) in one
    left-padded batch: the same tokens, counts, finish reasons and files as each page alone."""
    out = tmp_path / "out"
    res = cli("layout", *map(str, pages), "-o", str(out), "--model", "deepseek_ocr", "--model-path", str(checkpoint),
              "-b", "2", "--max-new-tokens", str(MAX_NEW), "--overlay")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "layout" and report["task"] == "layout" and report["batches"] == 1
    single = manifest(one_page_at_a_time)
    for e, alone, p, size in zip(manifest(out), single, pages, SIZES):
        assert e["status"] == "ok"
        assert (e["input_tokens"], e["output_tokens"], e["finish_reason"]) == \
            (alone["input_tokens"], alone["output_tokens"], alone["finish_reason"])
        for suffix in (".json", ".md"):
            assert (out / p.stem / f"page-0001{suffix}").read_text() == \
                (one_page_at_a_time / p.stem / f"page-0001{suffix}").read_text()
        assert Image.open(out / p.stem / "page-0001.layout.png").size == size


@needs_fixture
def test_modes_and_loop_guard_on_the_model(checkpoint, pages):
    """A selectable resolution mode (tiny: one 512-px view, 73 slots); a page whose answer
    loops is cut by the loop guard and kept with what it read (`loop`), where without the
    guard it runs to the token budget (`length`)."""
    b = create_backend(get_spec("deepseek_ocr"), BackendOptions(model_path=checkpoint,
                                                               extra={"mode": "tiny", "ngram_size": 0}))
    b.load()
    b.loop_settings = {"min_span": 8, "min_repeats": 3, "check_every": 2, "max_distinct": 1}
    (page,) = as_pages(pages[:1])
    budget = 48
    # With the fixture's weights and the tiny tokenizer (both fixed), "Free OCR." on this page
    # falls into a run of one repeated token within the first 20 steps and never emits EOS.
    guarded = b.generate_batch([page], "text", GenerationParams(max_new_tokens=budget))[0]
    free = b.generate_batch([page], "text", GenerationParams(max_new_tokens=budget, loop_guard=False))[0]
    text_slots = 1 + len(b.processor.encode_text("\nFree OCR."))
    assert guarded.input_tokens == free.input_tokens == 73 + text_slots
    assert b.describe()["mode"] == "tiny" and b._facts["no_repeat_ngram"] is None
    assert free.finish_reason == "length" and free.output_tokens == budget
    # cut during generation by the token guard: what it read before the loop is kept
    assert guarded.finish_reason == "loop" and guarded.output_tokens < budget
    assert guarded.text and len(guarded.text) < len(free.text) and free.text.startswith(guarded.text[:8])
    result = b.postprocess(page, guarded, "text")
    assert result.status == "ok" and result.finish_reason == "loop"
    assert result.text and "<|" not in result.text
    b.close()


def test_bad_mode_is_a_usage_error():
    from chatvlm.errors import UsageError

    with pytest.raises(UsageError, match="mode must be one of"):
        create_backend(get_spec("deepseek_ocr"), BackendOptions(extra={"mode": "huge"}))


@needs_fixture
def test_missing_tokenizer_is_a_clear_error(tmp_path, pages):
    folder = tmp_path / "no_tok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "processor_config.json"):
        shutil.copy(FIXTURE / name, folder / name)
    res = cli("layout", str(pages[0]), "-o", str(tmp_path / "out"), "--model", "deepseek_ocr",
              "--model-path", str(folder))
    assert res.exit_code != 0
    assert "has no tokenizer files" in " ".join(res.output.split())


def test_synthetic_mode_builds_from_the_config(tmp_path):
    """bench --synthetic path: the architecture from a config dict (here a small one, standing
    in for the registry's full_config), random weights, exactly max_new_tokens per page."""
    from chatvlm.models.deepseek_ocr import official_config_dict

    spec = get_spec("deepseek_ocr")
    assert spec.full_config["vocab_size"] == 129280 and spec.full_config["language_config"]["n_routed_experts"] == 64
    config = official_config_dict(vocab_size=129280, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                                  num_hidden_layers=2, num_attention_heads=2, n_routed_experts=4,
                                  num_experts_per_tok=2, n_shared_experts=1, sam_width=16, sam_layers=2,
                                  sam_heads=1, sam_global_attn_indexes=(1,), sam_downsample_channels=(16, 32),
                                  clip_layers=1, clip_heads=2)
    b = create_backend(spec, BackendOptions(synthetic=True, extra={"config": config, "mode": "small"}))
    b.load()
    try:
        assert b.describe()["synthetic"] is True
        proc = b.processor
        assert proc.tokenizer is None                     # the official prompt keeps its real token ids
        (raw,) = b.generate_batch([Page(source=Path("s.png"), doc_key="s", page=1, image=noise_page(200, 300, 3))],
                                  "layout", GenerationParams(max_new_tokens=5))
        assert raw.output_tokens == 5 and raw.finish_reason == "length"
        assert raw.input_tokens == 1 + 9 + 111          # BOS + the prompt's 9 real ids + 10 * 11 + 1 slots
        assert b.postprocess(Page(source=Path("s.png"), doc_key="s", page=1, image=None), raw, "layout").status == "ok"
    finally:
        synthetic_dir = b.path
        b.close()
    assert not synthetic_dir.exists()


# ------------------------------------------------------------------ postprocess on literal answers


@pytest.fixture(scope="module")
def pure():
    return create_backend(get_spec("deepseek_ocr"), BackendOptions())   # postprocess is pure: no load()


def literal(backend, text: str, finish: str = "stop", task: str = "layout", size=(1000, 2000)):
    page = Page(source=Path("doc.pdf"), doc_key="doc", page=1, image=None)
    raw = RawOutput(text=text, input_tokens=300, output_tokens=120, finish_reason=finish,
                    extra={"page_size": size})
    return backend.postprocess(page, raw, task)


ANSWER = (
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 99]]<|/det|>\n# Annual Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 120, 900, 400]]<|/det|>\nRevenue grew by 12 %.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 420, 500, 700]]<|/det|>\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 710, 500, 730]]<|/det|>\n<center>Figure 1: Sales</center>\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 750, 900, 900]]<|/det|>\n"
    "<table><tr><td>Q1</td><td>10</td></tr><tr><td>Q2</td><td>12</td></tr></table>\n\n"
    "<|ref|>equation<|/ref|><|det|>[[200, 910, 800, 940]]<|/det|>\n\\[ x \\coloneqq y \\]\n\n"
    "<|ref|>page_number<|/ref|><|det|>[[480, 960, 520, 990]]<|/det|>\n7"
)


def test_postprocess_well_formed_grounding(pure):
    r = literal(pure, ANSWER)
    assert r.status == "ok" and not r.repaired and r.finish_reason == "stop"
    assert (r.width, r.height, r.input_tokens, r.output_tokens) == (1000, 2000, 300, 120)
    assert [b.category for b in r.layout] == ["Title", "Text", "Picture", "Caption", "Table", "Formula",
                                              "Page-footer"]
    # 0-999 coordinates -> page pixels, the official int(v / 999 * size)
    assert r.layout[0].bbox == [100, 100, 900, 198]
    assert r.layout[2].bbox == [100, 840, 500, 1401] and r.layout[2].text == ""
    assert [b.order for b in r.layout] == list(range(7))
    assert r.layout[3].text == "Figure 1: Sales"                     # <center> removed (official eval rule)
    assert r.layout[5].text == "\\[ x := y \\]"                       # \coloneqq -> := (official rule)
    for tag in ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[[", "<center>"):
        assert tag not in r.markdown and tag not in r.text
    assert r.markdown.startswith("# Annual Report\n\nRevenue grew by 12 %.\n\nFigure 1: Sales\n\n<table>")
    assert "<td>Q1</td>" in r.markdown and r.markdown.endswith("7\n")
    assert r.text.startswith("Annual Report\n\nRevenue grew by 12 %.") and "Q1\t10" in r.text


def test_postprocess_markdown_task_keeps_layout_and_text_task_has_none(pure):
    md = literal(pure, ANSWER, task="markdown")
    assert md.layout is not None and len(md.layout) == 7 and md.markdown == literal(pure, ANSWER).markdown
    txt = literal(pure, "Plain page text\nsecond line\n", task="text")
    assert txt.text == "Plain page text\nsecond line" and txt.layout is None and txt.markdown is None
    grounded_text = literal(pure, ANSWER, task="text")              # tags never reach the text file
    assert grounded_text.layout is None and "<|ref|>" not in grounded_text.text
    assert grounded_text.text.startswith("Annual Report")


def test_postprocess_without_tags_in_layout_task(pure):
    r = literal(pure, "# Heading\n\nJust text, no boxes.<|grounding|>")
    assert r.layout == [] and not r.repaired
    assert r.markdown == "# Heading\n\nJust text, no boxes.\n" and r.text == "Heading\n\nJust text, no boxes.\n"


@pytest.mark.parametrize("cut_after", ["<|ref|>table<|/ref|><|det|>[[100, 7",
                                       "<|ref|>table<|/ref|><|det|>[[100, 750, 900, 900]]<|/d",
                                       "<|ref|>tab", "<|re"])
def test_postprocess_truncated_mid_tag(pure, cut_after):
    head = ANSWER[:ANSWER.index("<|ref|>table")]
    r = literal(pure, head + cut_after, finish="length")
    assert r.status == "ok" and r.finish_reason == "length" and r.repaired
    assert [b.category for b in r.layout][:4] == ["Title", "Text", "Picture", "Caption"]
    assert len(r.layout) == (5 if cut_after.endswith("<|/d") else 4)   # complete boxes of a cut header kept
    assert "<|" not in r.markdown and "[[" not in r.markdown and r.markdown.rstrip().endswith("Figure 1: Sales")


def test_postprocess_looping_output_is_kept_and_marked(pure):
    head = "<|ref|>text<|/ref|><|det|>[[100, 120, 900, 400]]<|/det|>\nIntro paragraph.\n\n"
    row = "<|ref|>text<|/ref|><|det|>[[100, 410, 900, 430]]<|/det|>\n. . . . . . . . . . . . . . .\n\n"
    r = literal(pure, head + row * 40, finish="length")
    assert r.status == "ok" and r.finish_reason == "loop"            # ran to the budget repeating itself
    assert r.layout[0].text == "Intro paragraph." and 2 <= len(r.layout) < 10
    assert r.markdown.startswith("Intro paragraph.") and r.markdown.count(". . . .") < 5
    # already cut by the guard during generation: kept as it is, still `loop`, never dropped
    kept = literal(pure, head + row, finish="loop")
    assert kept.status == "ok" and kept.finish_reason == "loop" and len(kept.layout) == 2
    assert kept.text.startswith("Intro paragraph.")
    # a page without tags that loops in the text task keeps its first copy too
    plain = literal(pure, "Total: 0\n" * 50, finish="length", task="text")
    assert plain.finish_reason == "loop" and plain.text.startswith("Total: 0") and plain.text.count("Total") < 10


def test_postprocess_batch_error_stays_an_error(pure):
    page = Page(source=Path("doc.pdf"), doc_key="doc", page=1, image=None)
    r = pure.postprocess(page, RawOutput(text="", finish_reason="error", error="CUDA out of memory",
                                         extra={"page_size": (10, 20)}), "layout")
    assert r.status == "error" and "out of memory" in r.error and (r.width, r.height) == (10, 20)


def test_ngram_guard_exempts_table_cells_at_the_tokenizers_ids(tmp_path):
    """The official whitelist (<td>, </td>) is looked up by name, so it follows the tokenizer."""
    import torch

    from chatvlm.backends.deepseek_common import DeepseekGroundingMixin
    from chatvlm.models.deepseek_ocr.synthetic import build_byte_tokenizer

    class Guarded(DeepseekGroundingMixin):
        def __init__(self, tokenizer):
            self.tokenizer, self._facts = tokenizer, {}

    guarded = Guarded(build_byte_tokenizer(tmp_path, vocab_size=1024))
    (guard,) = guarded.ngram_processors(2, 10, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    assert guard.whitelist == {821, 822}          # <td>, </td> in the tiny vocabulary (real id % 1024)
    assert guard.prompt_len == 3 and guarded._facts["no_repeat_ngram"] == {"ngram_size": 2, "window_size": 10}
    assert guarded.ngram_processors(0, 10, {"input_ids": torch.zeros(1, 3)}) == []
