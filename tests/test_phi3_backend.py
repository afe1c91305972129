"""Phi-3.5-vision backend end to end on the fixture checkpoint (tiny random weights in the
official format) with a tiny tokenizer carrying the official special tokens: `chatvlm ocr`
through the real CLI, registry, backend load() and generate(); batched vs one page at a
time; `ask`; postprocess on literal model answers. Random weights write noise, so the
end-to-end tests assert structure (files, counts, statuses, finish reasons, token counts),
never content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import write_noise_pages
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "phi3_vision"

pytestmark = pytest.mark.skipif(
    not (FIXTURE / "model.safetensors").exists(),
    reason=f"Phi-3.5-vision fixture checkpoint not found at {FIXTURE} (../shared beside the checkout)",
)

MAX_NEW = 6
CKPT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
END_ID = 32007          # <|end|> with the official vocab (32064)
SIZES = [(150, 200), (400, 120)]   # portrait and landscape: different crop grids




def copy_checkpoint(folder: Path) -> Path:
    from chatvlm.models.phi3_vision.synthetic import build_byte_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    for name in CKPT_FILES:
        shutil.copy(FIXTURE / name, folder / name)
    build_byte_tokenizer(folder)    # the fixture ships no tokenizer
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The fixture checkpoint plus a tokenizer built here."""
    return copy_checkpoint(tmp_path_factory.mktemp("phi3_ckpt") / "ckpt")


def boosted_checkpoint(folder: Path, token_id: int, factor: float) -> Path:
    """A fixture copy with one lm_head row scaled: the random model then favours that token."""
    from safetensors.torch import load_file, save_file

    copy_checkpoint(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["lm_head.weight"][token_id] *= factor
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def stopping_checkpoint(tmp_path_factory) -> Path:
    """`<|end|>` boosted: the random model ends its turn after a few tokens, at a different
    step for each page."""
    return boosted_checkpoint(tmp_path_factory.mktemp("phi3_stop") / "ckpt", END_ID, 3.0)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> list[Path]:
    return write_noise_pages(tmp_path_factory.mktemp("phi3_pages"), SIZES)


def as_pages(paths: list[Path]):
    from chatvlm.records import Page

    return [Page(source=p, doc_key=p.stem, page=1, image=Image.open(p).convert("RGB"), index=i)
            for i, p in enumerate(paths)]


def make_backend(path: Path, **extra):
    from chatvlm.config import BackendOptions
    from chatvlm.registry import get_spec

    spec = get_spec("phi3_vision")
    return spec.backend_class()(spec, BackendOptions(model_path=path, extra=extra))


@pytest.fixture(scope="module")
def stopping_backend(stopping_checkpoint):
    backend = make_backend(stopping_checkpoint)
    backend.load()
    yield backend
    backend.close()


def prompt_tokens(checkpoint: Path, image_path: Path, task: str, num_crops: int = 16) -> int:
    """Prompt length built independently with the port's own processor and prompt."""
    from chatvlm.models import phi3_vision

    proc = phi3_vision.processor_from_pretrained(checkpoint, num_crops=num_crops,
                                                 tokenizer=phi3_vision.load_tokenizer(checkpoint))
    batch = proc.build_batch([phi3_vision.format_prompt(phi3_vision.OCR_PROMPTS[task])],
                             [Image.open(image_path).convert("RGB")])
    return int(batch["attention_mask"].sum())


def cli(*args: str):
    from typer.testing import CliRunner

    from chatvlm.cli import app

    return CliRunner().invoke(app, ["-q", *args], catch_exceptions=False)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ end to end


def test_ocr_command_two_pages_of_different_sizes_in_one_batch(checkpoint, pages, tmp_path):
    from chatvlm.textnorm import markdown_to_text

    out = tmp_path / "out"
    res = cli("ocr", str(pages[0].parent), "-o", str(out), "--model", "phi3_vision", "--model-path", str(checkpoint),
              "-b", "2", "--max-new-tokens", str(MAX_NEW))
    assert res.exit_code == 0, res.output
    entries = manifest(out)
    assert [(e["source"], e["page"], e["status"], e["model"]) for e in entries] == \
        [(str(p), 1, "ok", "phi3_vision") for p in pages]
    for e, p in zip(entries, pages):
        assert e["outputs"] == [f"{p.stem}/page-0001.txt", f"{p.stem}/page-0001.md"]
        # default formats text+markdown -> one markdown pass, text derived from it
        assert e["input_tokens"] == prompt_tokens(checkpoint, p, "markdown")
        assert e["finish_reason"] in ("stop", "length", "loop") and 1 <= e["output_tokens"] <= MAX_NEW
        md = (out / p.stem / "page-0001.md").read_text()
        assert (out / p.stem / "page-0001.txt").read_text() == markdown_to_text(md.strip())
    # different crop grids -> different prompt lengths: the batch was left-padded
    assert entries[0]["input_tokens"] != entries[1]["input_tokens"]

    report = json.loads((out / "report.json").read_text())
    assert report["pages"]["ok"] == 2 and report["pages"]["failed"] == 0
    assert report["task"] == "markdown" and report["batches"] == 1
    assert report["input_tokens"] == sum(e["input_tokens"] for e in entries)
    engine = report["engine"]
    assert (engine["device"], engine["dtype"], engine["attention"]) == ("cpu", "float32", "sdpa")
    assert engine["num_crops"] == 16                   # the OCR default, not the file's 4
    assert engine["load_report"] == {"missing": 0, "unexpected": 0}


def test_text_format_uses_the_text_prompt(checkpoint, pages, tmp_path):
    out = tmp_path / "out"
    res = cli("ocr", str(pages[1]), "-o", str(out), "--model", "phi3_vision", "--model-path", str(checkpoint),
              "-f", "text", "--max-new-tokens", "2")
    assert res.exit_code == 0, res.output
    (entry,) = manifest(out)
    assert entry["status"] == "ok" and entry["outputs"] == ["scan2/page-0001.txt"]
    assert entry["input_tokens"] == prompt_tokens(checkpoint, pages[1], "text")
    assert json.loads((out / "report.json").read_text())["task"] == "text"


def test_missing_tokenizer_is_a_clear_error(tmp_path, pages):
    folder = tmp_path / "no_tok"
    folder.mkdir()
    for name in CKPT_FILES:
        shutil.copy(FIXTURE / name, folder / name)
    res = cli("ocr", str(pages[0]), "-o", str(tmp_path / "out"), "--model", "phi3_vision", "--model-path", str(folder))
    assert res.exit_code != 0
    assert "has no tokenizer files" in " ".join(res.output.split())


# ------------------------------------------------------------------ backend


def test_batched_equals_one_page_at_a_time_with_stops(stopping_backend, stopping_checkpoint, pages):
    from chatvlm.config import GenerationParams

    params = GenerationParams(max_new_tokens=12, loop_guard=False)
    both = stopping_backend.generate_batch(as_pages(pages), "text", params)
    single = [stopping_backend.generate_batch([p], "text", params)[0] for p in as_pages(pages)]
    assert len(both) == 2
    for b, s, path in zip(both, single, pages):
        assert (b.text, b.output_tokens, b.input_tokens, b.finish_reason) == \
            (s.text, s.output_tokens, s.input_tokens, s.finish_reason)
        assert b.input_tokens == prompt_tokens(stopping_checkpoint, path, "text")
        assert b.extra["batch_size"] == 2 and s.extra["batch_size"] == 1
    # <|end|> ended both turns, at different steps: one row finished while the other ran on
    assert [b.finish_reason for b in both] == ["stop", "stop"]
    assert both[0].output_tokens != both[1].output_tokens
    assert all("<|end|>" not in b.text for b in both)
    assert stopping_backend.stop_token_ids()[0] == END_ID and stopping_backend.pad_token_id() == 32000


def test_loop_guard_stops_and_trims_a_repeating_page(stopping_backend, pages, tmp_path):
    from chatvlm.config import GenerationParams

    # The page's first greedy token, boosted: the model then repeats it at every step.
    (first,) = stopping_backend.generate_batch(as_pages(pages[:1]), "text", GenerationParams(max_new_tokens=1))
    token_id = stopping_backend.tokenizer.convert_tokens_to_ids(first.text)
    assert first.text and token_id != stopping_backend.tokenizer.unk_token_id
    looping = make_backend(boosted_checkpoint(tmp_path / "loop", token_id, 4.0))
    looping.load()
    looping.loop_settings = {"min_repeats": 4, "min_span": 8}     # defaults need 256+ tokens
    try:
        (raw,) = looping.generate_batch(as_pages(pages[:1]), "text", GenerationParams(max_new_tokens=40))
        assert raw.finish_reason == "loop" and raw.extra["loop_trimmed"]
        assert raw.output_tokens < 40 and raw.text == first.text             # one copy kept
        (off,) = looping.generate_batch(as_pages(pages[:1]), "text", GenerationParams(max_new_tokens=8, loop_guard=False))
        assert off.finish_reason == "length" and off.text == first.text * 8
    finally:
        looping.close()


def test_ask_one_shot_and_multi_turn(stopping_backend, pages):
    from chatvlm.config import GenerationParams
    from chatvlm.models.phi3_vision import OCR_PROMPTS

    params = GenerationParams(max_new_tokens=6, loop_guard=False)
    image = Image.open(pages[0]).convert("RGB")
    answer = stopping_backend.ask(image, OCR_PROMPTS["text"], params=params)
    # The same question is the text task's prompt: ask must build the very same input.
    (page,) = stopping_backend.generate_batch(as_pages(pages[:1]), "text", params)
    assert isinstance(answer, str) and answer == page.text.strip()

    follow_up = stopping_backend.ask(image, "And the title?", history=[(OCR_PROMPTS["text"], answer)], params=params)
    assert isinstance(follow_up, str)
    assert isinstance(stopping_backend.ask(None, "Hello?", params=params), str)   # text-only turn


def test_ask_command(stopping_backend, stopping_checkpoint, pages):
    question = "What is written here?"
    expected = stopping_backend.ask(Image.open(pages[0]).convert("RGB"), question)   # spec defaults
    assert expected
    res = cli("ask", str(pages[0]), question, "--model", "phi3_vision", "--model-path", str(stopping_checkpoint))
    assert res.exit_code == 0, res.output
    assert expected in res.output.replace("\n", "")


def test_chat_prompt_is_the_official_multi_turn_format():
    from chatvlm.backends.phi3_vision import chat_prompt
    from chatvlm.models.phi3_vision import format_prompt

    assert chat_prompt("Q1") == format_prompt("Q1") == "<|user|>\n<|image_1|>\nQ1<|end|>\n<|assistant|>\n"
    assert chat_prompt("Q2", [("Q1", "A1")]) == (
        "<|user|>\n<|image_1|>\nQ1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nQ2<|end|>\n<|assistant|>\n")
    assert chat_prompt("Q", with_image=False) == "<|user|>\nQ<|end|>\n<|assistant|>\n"


def test_num_crops_option_and_page_cost(checkpoint, pages):
    from chatvlm.config import GenerationParams
    from chatvlm.errors import UsageError

    backend = make_backend(checkpoint, num_crops=4)
    backend.load()
    try:
        assert backend.processor.num_crops == 4 and backend.describe()["num_crops"] == 4
        inputs = backend.build_inputs(as_pages(pages), "text", GenerationParams())
        assert inputs["pixel_values"].shape[:2] == (2, 5)          # num_crops + 1 views per page
        assert inputs["attention_mask"].sum(dim=1).tolist() == [prompt_tokens(checkpoint, p, "text", 4) for p in pages]
        assert int(inputs["attention_mask"][:, 0].sum()) == 1    # left padding: one row starts late
        for page in as_pages(pages):
            _, _, n = backend.processor.preprocess_one(page.image)
            assert backend.page_cost(page) == n
        # --batch-size auto sizes batches from the longest prompt a page can give
        assert backend.prompt_tokens_estimate() >= int(inputs["attention_mask"].sum(dim=1).max())
        assert backend.page_memory_bytes(GenerationParams(max_new_tokens=10)) > 0
    finally:
        backend.close()
    assert make_backend(checkpoint).num_crops == 16
    assert make_backend(checkpoint).prompt_tokens_estimate() == 2653 + 64     # a 1x16 crop strip
    with pytest.raises(UsageError):
        make_backend(checkpoint, num_crops="many")


def test_bench_synthetic_builds_from_a_config_and_generates_exactly_n_tokens(pages, tmp_path):
    from chatvlm.models.phi3_vision.testing import tiny_config

    config = tmp_path / "tiny_phi3.json"
    config.write_text(json.dumps(tiny_config()))
    out = tmp_path / "bench"
    res = cli("bench", *map(str, pages), "-o", str(out), "-m", "phi3_vision", "--synthetic", "--tokens", "5",
              "--synthetic-config", f"phi3_vision={config}", "-b", "2")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "bench.json").read_text())
    (row,) = report["models"]
    assert row["status"] == "ok", row["error"]
    assert row["engine"]["synthetic"] is True and row["engine"]["model_class"] == "Phi3VForCausalLM"
    assert row["engine"]["num_crops"] == 16
    assert [(d["output_tokens"], d["finish_reason"]) for d in row["pages_detail"]] == [(5, "length"), (5, "length")]
    assert report["synthetic"] is True and row["accuracy"] is None


# ------------------------------------------------------------------ postprocess on literal answers


@pytest.fixture(scope="module")
def backend():
    from chatvlm.registry import get_spec

    spec = get_spec("phi3_vision")
    return spec.backend_class()(spec)   # postprocess is pure: no load() needed


def literal(backend, text: str, task: str, finish: str = "stop"):
    from chatvlm.records import Page, RawOutput

    page = Page(source=Path("doc.pdf"), doc_key="doc", page=1, image=Image.new("RGB", (300, 400)))
    return backend.postprocess(page, RawOutput(text=text, input_tokens=900, output_tokens=40, finish_reason=finish), task)


def test_postprocess_markdown_strips_the_fence(backend):
    r = literal(backend, "```markdown\n# Invoice\n\n| a | b |\n|---|---|\n| **1** | 2 |\n```", "markdown")
    assert r.status == "ok" and r.layout is None
    assert r.markdown == "# Invoice\n\n| a | b |\n|---|---|\n| **1** | 2 |\n"
    assert r.text == "Invoice\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert (r.finish_reason, r.input_tokens, r.output_tokens, r.width, r.height) == ("stop", 900, 40, 300, 400)


def test_postprocess_text_task(backend):
    r = literal(backend, "  Line one\nLine two  \n", "text", finish="length")
    assert r.text == "Line one\nLine two\n" and r.markdown is None and r.finish_reason == "length"
    assert literal(backend, "", "text").text == ""


def test_postprocess_error_passes_through(backend):
    from chatvlm.records import Page, RawOutput

    page = Page(source=Path("doc.pdf"), doc_key="doc", page=1)
    r = backend.postprocess(page, RawOutput(text="", error="CUDA out of memory", finish_reason="error"), "markdown")
    assert r.status == "error" and "out of memory" in r.error


# ------------------------------------------------------------------ the model table entry


def test_model_table_entry():
    from chatvlm.models.phi3_vision import OCR_PROMPTS
    from chatvlm.registry import get_spec

    spec = get_spec("phi3_vision")
    assert spec.backend == "chatvlm.backends.phi3_vision:Phi3VisionBackend"
    assert set(spec.tasks) == {"text", "markdown"} and spec.can_chat
    assert spec.prompts == OCR_PROMPTS
    assert spec.dtype == "bfloat16" and spec.max_new_tokens >= 4096
    assert spec.extra["num_crops"] == 16
    assert spec.full_config == json.loads((FIXTURE / "full_config.json").read_text())
