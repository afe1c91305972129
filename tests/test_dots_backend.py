"""dots.ocr backend end to end on the fixture checkpoint (random weights, official format):
`chatvlm layout` / `chatvlm ocr` through the real CLI, registry, backend load() and
generate(); plus postprocess on literal model answers. Random weights write noise, so
the end-to-end tests assert structure (files, counts, statuses, finish reasons, token
counts), never content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import write_noise_pages
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "dots_ocr"

pytestmark = pytest.mark.skipif(
    not (FIXTURE / "model.safetensors").exists(),
    reason=f"dots.ocr fixture checkpoint not found at {FIXTURE} (../shared beside the checkout)",
)

MAX_NEW = 6




@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The fixture checkpoint plus a tokenizer built here (the fixture ships none)."""
    from chatvlm.models.dots_ocr.synthetic import build_byte_tokenizer

    folder = tmp_path_factory.mktemp("dots_ckpt")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(FIXTURE / name, folder / name)
    build_byte_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> list[Path]:
    return write_noise_pages(tmp_path_factory.mktemp("dots_pages"), [(150, 200), (260, 120)])


@pytest.fixture(scope="module")
def processor(checkpoint):
    from chatvlm.models.dots_ocr import processor_from_pretrained

    return processor_from_pretrained(checkpoint)


def prompt_tokens(processor, image_path: Path, mode: str) -> int:
    batch = processor.build_batch([Image.open(image_path).convert("RGB")], mode)
    return int(batch["attention_mask"].sum())


def cli(*args: str):
    from typer.testing import CliRunner

    from chatvlm.cli import app

    return CliRunner().invoke(app, ["-q", *args], catch_exceptions=False)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ end to end


def test_layout_command_end_to_end(checkpoint, pages, processor, tmp_path):
    out = tmp_path / "out"
    res = cli("layout", str(pages[0]), "-o", str(out), "--model", "dots_ocr", "--model-path", str(checkpoint),
              "--max-new-tokens", str(MAX_NEW), "--overlay")
    assert res.exit_code == 0, res.output
    folder = out / "scan1"
    doc = json.loads((folder / "page-0001.json").read_text())
    assert doc["model"] == "dots_ocr" and (doc["width"], doc["height"]) == (150, 200)
    # Six tokens of a random model's noise hold no layout cell, whole or broken: nothing is
    # kept, repaired or dropped (salvage of real answers: the postprocess tests below).
    assert doc["blocks"] == [] and doc["repaired"] is False and doc["dropped_blocks"] == 0
    assert (folder / "page-0001.md").exists()
    overlay = Image.open(folder / "page-0001.layout.png")
    assert overlay.size == (150, 200)

    (entry,) = manifest(out)
    assert entry["status"] == "ok" and entry["page"] == 1 and entry["model"] == "dots_ocr"
    assert entry["finish_reason"] in ("stop", "length", "loop")
    assert 1 <= entry["output_tokens"] <= MAX_NEW
    # The official full-layout prompt, string framing, and the page's image tokens.
    assert entry["input_tokens"] == prompt_tokens(processor, pages[0], "prompt_layout_all_en")
    assert sorted(entry["outputs"]) == ["scan1/page-0001.json", "scan1/page-0001.layout.png", "scan1/page-0001.md"]

    report = json.loads((out / "report.json").read_text())
    assert report["pages"]["ok"] == 1 and report["pages"]["failed"] == 0
    assert report["command"] == "layout" and report["task"] == "layout"
    engine = report["engine"]
    assert engine["dtype"] == "float32" and engine["device"] == "cpu"
    assert engine["prompt_framing"] == "string"
    assert engine["max_pixels"] == 40000          # the checkpoint's preprocessor_config.json
    assert report["input_tokens"] == entry["input_tokens"]


def test_layout_only_mode_uses_its_prompt(checkpoint, pages, processor, tmp_path):
    out = tmp_path / "out"
    res = cli("layout", str(pages[1]), "-o", str(out), "--mode", "layout-only", "--model", "dots_ocr", "--model-path", str(checkpoint),
              "--max-new-tokens", "2")
    assert res.exit_code == 0, res.output
    (entry,) = manifest(out)
    assert entry["status"] == "ok"
    assert entry["input_tokens"] == prompt_tokens(processor, pages[1], "prompt_layout_only_en")
    assert (out / "scan2" / "page-0001.json").exists()


def test_ocr_text_mode_two_page_batch(checkpoint, pages, processor, tmp_path):
    out = tmp_path / "out"
    res = cli("ocr", *map(str, pages), "-o", str(out), "--model", "dots_ocr", "--model-path", str(checkpoint),
              "-f", "text", "-b", "2", "--max-new-tokens", str(MAX_NEW))
    assert res.exit_code == 0, res.output
    entries = manifest(out)
    assert [(e["source"], e["status"]) for e in entries] == [(str(p), "ok") for p in pages]
    for e, p in zip(entries, pages):
        assert e["outputs"] == [f"{p.stem}/page-0001.txt"]
        assert e["input_tokens"] == prompt_tokens(processor, p, "prompt_ocr")
        assert e["finish_reason"] in ("stop", "length", "loop") and 1 <= e["output_tokens"] <= MAX_NEW
        assert (out / p.stem / "page-0001.txt").exists()
    assert entries[0]["input_tokens"] != entries[1]["input_tokens"]   # different sizes: left padding used
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "text" and report["batches"] == 1 and report["pages"]["ok"] == 2


def test_batched_equals_one_page_at_a_time(checkpoint, pages):
    from chatvlm.config import BackendOptions, GenerationParams
    from chatvlm.records import Page
    from chatvlm.registry import get_spec

    spec = get_spec("dots_ocr")
    backend = spec.backend_class()(spec, BackendOptions(model_path=checkpoint))
    backend.load()
    params = GenerationParams(max_new_tokens=MAX_NEW, loop_guard=False)

    def as_pages():
        return [Page(source=p, doc_key=p.stem, page=1, image=Image.open(p).convert("RGB"), index=i)
                for i, p in enumerate(pages)]

    both = backend.generate_batch(as_pages(), "layout", params)
    single = [backend.generate_batch([p], "layout", params)[0] for p in as_pages()]
    assert len(both) == 2
    for b, s in zip(both, single):
        assert (b.text, b.output_tokens, b.input_tokens, b.finish_reason) == \
            (s.text, s.output_tokens, s.input_tokens, s.finish_reason)
        assert b.extra["prompt_mode"] == "prompt_layout_all_en"
    assert both[0].extra["frame"] == (140, 196) and both[0].extra["page_size"] == (150, 200)
    backend.close()


def test_missing_tokenizer_is_a_clear_error(tmp_path, pages):
    folder = tmp_path / "no_tok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(FIXTURE / name, folder / name)
    res = cli("layout", str(pages[0]), "-o", str(tmp_path / "out"), "--model", "dots_ocr", "--model-path", str(folder))
    assert res.exit_code != 0
    assert "has no tokenizer files" in " ".join(res.output.split())


# ------------------------------------------------------------------ postprocess on literal answers


@pytest.fixture(scope="module")
def backend():
    from chatvlm.registry import get_spec

    spec = get_spec("dots_ocr")
    return spec.backend_class()(spec)   # postprocess is pure: no load() needed


def literal(backend, text: str, finish: str = "stop", mode: str = "prompt_layout_all_en", task: str = "layout",
            frame=(500, 700), size=(1000, 1400)):
    from chatvlm.records import Page, RawOutput

    page = Page(source=Path("doc.pdf"), doc_key="doc", page=1, image=None)
    raw = RawOutput(text=text, input_tokens=100, output_tokens=50, finish_reason=finish,
                    extra={"prompt_mode": mode, "frame": frame, "page_size": size})
    return backend.postprocess(page, raw, task)


ANSWER = (
    '[{"bbox": [50, 20, 450, 60], "category": "Section-header", "text": "## Results"}, '
    '{"bbox": [50, 80, 450, 200], "category": "Text", "text": "We measured $x$."}, '
    '{"bbox": [100, 220, 400, 260], "category": "Formula", "text": "\\\\int_0^1 f(x)\\\\,dx"}, '
    '{"bbox": [50, 680, 450, 700], "category": "Page-footer", "text": "12"}]'
)


def test_postprocess_layout_answer(backend):
    r = literal(backend, ANSWER)
    assert r.status == "ok" and not r.repaired and r.dropped_blocks == 0
    assert (r.width, r.height) == (1000, 1400)
    assert [b.bbox for b in r.layout] == [[100, 40, 900, 120], [100, 160, 900, 400], [200, 440, 800, 520],
                                          [100, 1360, 900, 1400]]
    assert r.markdown == "## Results\n\nWe measured $x$.\n\n$$\n\\int_0^1 f(x)\\,dx\n$$\n\n12\n"
    assert r.text.startswith("Results\n\nWe measured $x$.")
    assert (r.finish_reason, r.input_tokens, r.output_tokens) == ("stop", 100, 50)


@pytest.mark.parametrize("finish", ["length", "loop"])
def test_postprocess_truncated_or_looping_keeps_complete_blocks(backend, finish):
    cut = ANSWER.index('"text": "\\\\int') + 12
    r = literal(backend, ANSWER[:cut], finish=finish)
    assert r.status == "ok" and r.finish_reason == finish
    assert r.repaired and r.dropped_blocks == 1
    assert [b.category for b in r.layout] == ["Section-header", "Text"]
    assert r.markdown == "## Results\n\nWe measured $x$.\n"


def test_postprocess_bad_boxes_keep_their_text(backend, tmp_path):
    from chatvlm.writers import write_page

    answer = ('[{"bbox": [50, 20, 450, 60], "category": "Text", "text": "ok"}, '
              '{"bbox": [600, 800, 700, 900], "category": "Text", "text": "outside the frame"}, '
              '{"bbox": [30, 40, 10], "category": "Text", "text": "3 numbers"}]')
    r = literal(backend, answer)
    assert [b.text for b in r.layout] == ["ok", "outside the frame", "3 numbers"]
    assert [b.bbox for b in r.layout] == [[100, 40, 900, 120], None, None]
    assert r.repaired and r.dropped_blocks == 0
    assert r.markdown == "ok\n\noutside the frame\n\n3 numbers\n"
    assert "outside the frame" in r.text and "3 numbers" in r.text
    r.page.page, r.page.doc_key = 1, "doc"
    write_page(tmp_path, r, ("text", "markdown", "json"))
    doc = json.loads((tmp_path / "doc" / "page-0001.json").read_text())
    assert doc["repaired"] is True
    assert doc["blocks"][1] == {"bbox": None, "category": "Text", "text": "outside the frame", "order": 1,
                                "problem": "bbox is empty or off the page: [600, 800, 700, 900]"}
    assert doc["blocks"][2]["bbox"] is None and doc["blocks"][2]["problem"].startswith("bbox is not 4 numbers")
    assert "3 numbers" in (tmp_path / "doc" / "page-0001.txt").read_text()


def test_postprocess_complete_form_keeps_repeated_cells(backend):
    answer = "[" + ", ".join(
        f'{{"bbox": [50, {40 + 60 * i}, 450, {80 + 60 * i}], "category": "Text", "text": "Signature: ____"}}'
        for i in range(6)) + "]"
    r = literal(backend, answer)
    assert len(r.layout) == 6 and not r.repaired and r.markdown.count("Signature: ____") == 6


def test_postprocess_text_task_and_layout_only(backend):
    r = literal(backend, "# Title\n\nSome **bold** text.", mode="prompt_ocr", task="text")
    assert r.layout is None and r.markdown == "# Title\n\nSome **bold** text.\n"
    assert r.text == "Title\n\nSome bold text.\n"
    only = '[{"bbox": [50, 20, 450, 60], "category": "Title"}, {"bbox": [50, 80, 450, 200], "category": "Picture"}]'
    r = literal(backend, only, mode="prompt_layout_only_en")
    assert [b.category for b in r.layout] == ["Title", "Picture"] and not r.repaired
    assert all(b.text == "" for b in r.layout)


def test_postprocess_error_passes_through(backend):
    from chatvlm.records import Page, RawOutput

    page = Page(source=Path("doc.pdf"), doc_key="doc", page=1)
    r = backend.postprocess(page, RawOutput(text="", error="CUDA out of memory", finish_reason="error"), "layout")
    assert r.status == "error" and "out of memory" in r.error


# ------------------------------------------------------------------ the model table entry


def test_model_table_entry():
    from chatvlm.models.dots_ocr import PROMPTS
    from chatvlm.registry import get_spec

    spec = get_spec("dots_ocr")
    assert spec.backend == "chatvlm.backends.dots_ocr:DotsOcrBackend"
    assert set(spec.tasks) == {"text", "markdown", "layout"}
    assert all(mode in PROMPTS for mode in spec.prompts.values())
    assert spec.prompts["layout"] == spec.prompts["markdown"] == "prompt_layout_all_en"
    assert (spec.min_pixels, spec.max_pixels) == (3136, 11289600)
    assert spec.dtype == "bfloat16" and spec.max_new_tokens >= 16384
    assert spec.full_config == json.loads((FIXTURE / "full_config.json").read_text())
