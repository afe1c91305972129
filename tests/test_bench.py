"""`chatvlm bench`: metrics against hand-computed values, rules, and real runs with tesseract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatvlm import bench
from chatvlm.backends.base import Backend
from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.registry import ModelSpec, register, unregister

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CORPUS = SHARED / "corpus"
PHOTOTEST = CORPUS / "en_clean_phototest.tif"
KOMI_LINE = CORPUS / "kv_cyrillic_line_0153.tif"

needs_corpus = pytest.mark.skipif(not PHOTOTEST.exists(), reason=f"shared corpus not found at {CORPUS}")


def _needs_tesseract():
    pytest.importorskip("tesserocr", reason="tesserocr is not installed")
    from chatvlm.backends.tesseract import find_tessdata
    if find_tessdata() is None:
        pytest.skip("no Tesseract language data installed")


# =========================================================================== text metrics

def test_normalise_nfkc_whitespace_markdown_and_case():
    assert bench.normalise("ﬁne\u00a0 print\n\n\tnow") == "fine print now"          # NFKC ligature, nbsp
    assert bench.normalise("# Title\n\n**bold** and _it_ [link](http://x)", markdown=True) == "Title bold and it link"
    assert bench.normalise("| a | b |\n|---|---|\n| 1 | 2 |", markdown=True) == "a b 1 2"
    assert bench.normalise("- one\n- two\n1. three", markdown=True) == "one two three"
    assert bench.normalise("MiXeD Case", ignore_case=True) == "mixed case"
    # plain-text normalisation leaves markdown-looking characters alone
    assert bench.normalise("# not a heading *", markdown=False) == "# not a heading *"


def test_error_rates_hand_computed():
    # "helo world" vs "hello world": 1 deletion over 11 characters; 1 of 2 words wrong
    r = bench.error_rates("helo world", "hello world")
    assert (r["char_edits"], r["ref_chars"], r["word_edits"], r["ref_words"]) == (1, 11, 1, 2)
    assert r["cer"] == pytest.approx(1 / 11, abs=1e-6) and r["wer"] == 0.5
    # a swapped word order: 2 word substitutions, and character edits per Levenshtein
    r = bench.error_rates("b a c", "a b c")
    assert r["word_edits"] == 2 and r["char_edits"] == 2
    assert bench.error_rates("", "")["cer"] is None
    assert bench.error_rates("abc", "")["cer"] is None


def test_case_folding_auto_only_for_all_capitals_ground_truth():
    assert bench.case_insensitive_for("TOTAL: 9.00 RM", "auto") is True
    assert bench.case_insensitive_for("Total: 9.00", "auto") is False
    assert bench.case_insensitive_for("12 345", "auto") is False
    assert bench.case_insensitive_for("Total", "yes") is True
    assert bench.case_insensitive_for("TOTAL", "no") is False


def _record(source: Path, text: str, page: int = 1, page_count: int = 1, status: str = "ok", markdown=None):
    return bench.PageRecord(source=str(source), doc_key=source.stem, page=page, page_count=page_count, status=status,
                            error=None if status == "ok" else "boom", text=text, markdown=markdown, finish_reason="stop",
                            output_tokens=None, latency_s=0.1)


def test_score_accuracy_against_tiny_ground_truth(tmp_path):
    # page a: GT "The quick brown fox", output "The quick brwn fox" -> 1 char edit / 19, 1 word / 4
    (tmp_path / "a.txt").write_text("The  quick\nbrown fox\n")
    # page b: markdown GT; markup is stripped from both sides -> "Head line body!!" vs "Head line body": 2 edits / 14
    (tmp_path / "b.md").write_text("# Head line\n\n**body**\n")
    # page c: all-capitals GT (SROIE style) -> compared case-insensitively: 0 edits
    (tmp_path / "c.txt").write_text("TOTAL 9.00\n")
    # page d: 2-page document, both pages ran: joined "one two" vs GT "one too": 1 char edit / 7
    (tmp_path / "d.txt").write_text("one too")
    # page e: 3-page document, only page 1 ran: skipped, not scored
    (tmp_path / "e.txt").write_text("x y z")
    # page f: failed page counts as empty output: 3 edits / 3
    (tmp_path / "f.txt").write_text("abc")
    records = [
        _record(tmp_path / "a.png", "The quick brwn fox\n"),
        _record(tmp_path / "b.png", "Head line body!!", markdown="## Head line\n\n*body*!!\n"),
        _record(tmp_path / "c.png", "Total 9.00"),
        _record(tmp_path / "d.pdf", "one", page=1, page_count=2),
        _record(tmp_path / "d.pdf", "two", page=2, page_count=2),
        _record(tmp_path / "e.pdf", "x", page=1, page_count=3),
        _record(tmp_path / "f.png", None, status="error"),
        _record(tmp_path / "g.png", "no ground truth here"),
    ]
    score = bench.score_accuracy(records)
    units = {Path(u["source"]).stem: u for u in score["units"]}
    assert set(units) == {"a", "b", "c", "d", "e", "f"}
    assert (units["a"]["char_edits"], units["a"]["ref_chars"], units["a"]["word_edits"], units["a"]["ref_words"]) == (1, 19, 1, 4)
    assert (units["b"]["char_edits"], units["b"]["ref_chars"]) == (2, 14)
    assert units["c"]["char_edits"] == 0 and units["c"]["ignore_case"] is True
    assert (units["d"]["char_edits"], units["d"]["ref_chars"], units["d"]["pages"]) == (1, 7, [1, 2])
    assert "skipped" in units["e"] and "char_edits" not in units["e"]
    assert (units["f"]["char_edits"], units["f"]["ref_chars"], units["f"]["failed_pages"]) == (3, 3, [1])
    # model figures are micro-averaged: total edits / total reference characters (and words)
    assert score["char_edits"] == 1 + 2 + 0 + 1 + 3 and score["ref_chars"] == 19 + 14 + 10 + 7 + 3
    assert score["cer"] == pytest.approx(7 / 53, abs=1e-6)
    assert score["wer"] == pytest.approx((1 + 1 + 0 + 1 + 1) / (4 + 3 + 2 + 2 + 1), abs=1e-6)


# =========================================================================== rules

def test_rules_present_absent_order_and_fuzzy_options():
    md = "# Report\n\nThe **quick** brown fox jumps.\n\nPage 3 of 9"
    ok = lambda rule: bench.check_rule(rule, md)[0]   # noqa: E731
    assert ok({"type": "present", "text": "quick brown fox"}) == "pass"            # bold markup ignored
    assert ok({"type": "present", "text": "quick brawn fax"}) == "fail"
    assert ok({"type": "present", "text": "quick brawn fax", "max_diffs": 2}) == "pass"   # 2 substitutions
    assert ok({"type": "present", "text": "quick brawn fax", "max_diffs": 1}) == "fail"
    assert ok({"type": "present", "text": "QUICK BROWN", "case_sensitive": False}) == "pass"
    assert ok({"type": "present", "text": "QUICK BROWN"}) == "fail"
    assert ok({"type": "absent", "text": "Page 3 of 9"}) == "fail"
    assert ok({"type": "absent", "text": "Page 3 of 9", "first_n": 20}) == "pass"   # only the first 20 chars
    assert ok({"type": "present", "text": "Page 3 of 9", "last_n": 12}) == "pass"
    assert ok({"type": "present", "text": "Report", "last_n": 12}) == "fail"
    assert ok({"type": "order", "before": "Report", "after": "brown fox"}) == "pass"
    assert ok({"type": "order", "before": "brown fox", "after": "Report"}) == "fail"
    assert ok({"type": "order", "before": "Reprot", "after": "brown fox"}) == "fail"
    assert ok({"type": "order", "before": "Reprot", "after": "brown fox", "max_diffs": 2}) == "pass"
    assert ok({"type": "math", "math": "a^2"}) == "fail"                          # no formula on the page
    assert ok({"type": "chart", "text": "x"}) == "unsupported"
    assert bench.check_rule({"type": "present", "text": "“quoted” – text"}, 'a "quoted" - text')[0] == "pass"


def test_rules_scored_per_page(tmp_path):
    rules = [
        {"pdf": "d.pdf", "page": 1, "id": "p1", "type": "present", "text": "alpha"},
        {"pdf": "d.pdf", "page": 2, "id": "p2", "type": "present", "text": "alpha"},
        {"pdf": "d.pdf", "page": 2, "id": "p3", "type": "absent", "text": "alpha"},
        {"pdf": "d.pdf", "page": 3, "id": "p4", "type": "present", "text": "never ran"},
        {"pdf": "d.pdf", "page": 1, "id": "m", "type": "math", "math": ""},      # olmOCR-bench would reject it
    ]
    (tmp_path / "d.rules.jsonl").write_text("\n".join(json.dumps(r) for r in rules) + "\n")
    records = [_record(tmp_path / "d.pdf", "alpha", page=1, page_count=3, markdown="alpha"),
               _record(tmp_path / "d.pdf", "beta", page=2, page_count=3, markdown="beta")]
    result = bench.score_accuracy(records)["rules"]
    status = {c["id"]: c["status"] for c in result["checks"]}
    assert status == {"p1": "pass", "p2": "fail", "p3": "pass", "m": "unsupported"}   # page 3 never ran
    assert (result["passed"], result["failed"], result["not_scored"]) == (2, 1, 1)
    assert result["pass_rate"] == pytest.approx(2 / 3, abs=1e-6)


def test_corpus_rules_files_parse():
    if not CORPUS.exists():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    files = sorted(CORPUS.glob("*.rules.jsonl"))
    assert files
    for path in files:
        for rule in bench.load_rules(path):
            assert rule["type"] != "invalid", rule
            status, _why = bench.check_rule(rule, "")
            assert status in ("fail", "unsupported", "pass")


def test_bench_row_is_typed_and_keeps_bench_json_keys(tmp_path):
    row = bench.BenchRow(model="m")
    assert row.ok and row.pages.total == 0 and row.to_dict()["pages"] == {
        "total": 0, "ok": 0, "failed": 0, "looped": 0, "truncated": 0, "unreadable_inputs": 0}
    assert list(row.to_dict()) == [
        "model", "status", "error", "engine", "device", "dtype", "attention", "load_s", "warmup_s",
        "time_to_first_page_s", "pages", "pages_per_s", "input_tokens", "output_tokens", "output_tokens_per_s",
        "output_tokens_per_page", "page_latency_p50_s", "page_latency_p90_s", "peak_gpu_memory_gb", "accuracy",
        "roofline", "runs", "outputs", "pages_detail"]          # "cluster" only on a Ray cluster
    records = [_record(tmp_path / "a.png", "x"), _record(tmp_path / "a.png", None, page=2, page_count=2, status="error"),
               _record(tmp_path / "junk.png", None, page=None, status="error")]
    records[0].output_tokens = 7
    row.runs = [{"repeat": 1, "out": "o", "report": {"wall_s": 2.0, "recognise_busy_s": 1.0, "input_tokens": 5}}]
    row.fill_speed([records], {"device": "cpu", "dtype": "float32", "attention": "sdpa"})
    assert row.pages == bench.PageCounts(total=2, ok=1, failed=1, unreadable_inputs=1)
    assert (row.pages_per_s, row.output_tokens, row.output_tokens_per_s, row.output_tokens_per_page) == (0.5, 7, 7.0, 7.0)
    assert [d["page"] for d in row.pages_detail] == [1, 2, None] and row.device == "cpu"
    failed = row.fail("failed", "boom")
    assert failed is row and not row.ok and row.to_dict()["error"] == "boom"


# =========================================================================== runs

class CrashingBackend(Backend):
    """Loads, then its first batch kills the model (as a driver fault would)."""

    uses_gpu = False

    def load(self) -> None:
        raise RuntimeError("simulated crash while loading")

    def generate_batch(self, pages, task, params):  # pragma: no cover - never reached
        raise AssertionError

    def postprocess(self, page, raw, task):  # pragma: no cover
        raise AssertionError


@pytest.fixture
def fake_models():
    register(ModelSpec(name="bench_crash", backend=f"{__name__}:CrashingBackend", tasks=("text", "markdown")), replace=True)
    register(ModelSpec(name="bench_missing_module", backend="chatvlm.backends.no_such_module:Nothing",
                       tasks=("text", "markdown")), replace=True)
    yield
    unregister("bench_crash")
    unregister("bench_missing_module")


def _inputs(tmp_path: Path) -> Path:
    """Two corpus pages (linked, never copied) with ground truth and rules written for the test."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "phototest.tif").symlink_to(PHOTOTEST)
    (folder / "komi.tif").symlink_to(KOMI_LINE)
    gold = (CORPUS / "en_clean_phototest.txt").read_text(encoding="utf-8")
    (folder / "phototest.txt").write_text(gold + "\nEXTRA WORDS\n", encoding="utf-8")
    rules = [
        {"pdf": "phototest.pdf", "page": 1, "id": "r1", "type": "present", "text": "This is a lot of 12 point text"},
        {"pdf": "phototest.pdf", "page": 1, "id": "r2", "type": "absent", "text": "zebra crossing"},
        {"pdf": "phototest.pdf", "page": 1, "id": "r3", "type": "order", "before": "12 point", "after": "10 point"},
        {"pdf": "phototest.pdf", "page": 1, "id": "r4", "type": "math", "math": "x^2"},
        {"pdf": "phototest.pdf", "page": 1, "id": "r5", "type": "order", "before": "12", "after": "10", "max_diffs": 2},
    ]
    (folder / "phototest.rules.jsonl").write_text("\n".join(json.dumps(r) for r in rules) + "\n")
    return folder


def _config(tmp_path: Path, inputs, **kw) -> bench.BenchConfig:
    base = RunConfig(inputs=[str(i) for i in inputs], out=tmp_path / "out", formats=("text", "markdown"),
                     backend=BackendOptions(lang="eng"), generation=GenerationParams(), command="bench")
    base.max_pages = kw.pop("max_pages", None)
    return bench.BenchConfig(base=base, command_line=["chatvlm", "bench", "(test)"], **kw)


@needs_corpus
def test_bench_tesseract_and_failing_models(tmp_path, fake_models):
    _needs_tesseract()
    folder = _inputs(tmp_path)
    (folder / "junk.png").write_text("not an image")     # an unreadable input: not a page, not throughput
    config = _config(tmp_path, [folder], layout="olmocr-bench")
    models = ["bench_crash", "tesseract", "bench_missing_module"]
    outcome = bench.run_bench(config, models)
    out = tmp_path / "out"
    report = json.loads((out / "bench.json").read_text())
    assert outcome.exit_code == 1   # some models did not run
    rows = {r["model"]: r for r in report["models"]}
    assert list(rows) == models    # the failures did not stop the run, order kept

    assert rows["bench_crash"]["status"] == "failed"
    assert "simulated crash while loading" in rows["bench_crash"]["error"]
    assert rows["bench_missing_module"]["status"] == "unavailable"
    assert "not available yet" in rows["bench_missing_module"]["error"]

    t = rows["tesseract"]
    assert t["status"] == "ok" and t["error"] is None
    assert t["pages"] == {"total": 2, "ok": 2, "failed": 0, "looped": 0, "truncated": 0, "unreadable_inputs": 1}
    assert t["load_s"] > 0 and t["warmup_s"] > 0
    assert t["time_to_first_page_s"] == pytest.approx(t["load_s"] + t["warmup_s"], abs=1e-3)
    assert t["pages_per_s"] > 0 and 0 < t["page_latency_p50_s"] <= t["page_latency_p90_s"]
    assert t["engine"]["device"] == "cpu" and t["peak_gpu_memory_gb"] is None
    assert len(t["runs"]) == 1 and t["runs"][0]["report"]["pages"]["ok"] == 2
    assert report["warmup_page"]["page"] == 1

    # accuracy: recomputed independently from the files the pipeline wrote
    written = (out / "tesseract" / "phototest" / "page-0001.txt").read_text()
    gt = (folder / "phototest.txt").read_text()
    expected = bench.error_rates(bench.normalise(written, markdown=True), bench.normalise(gt))
    acc = t["accuracy"]
    assert (acc["char_edits"], acc["ref_chars"]) == (expected["char_edits"], expected["ref_chars"])
    assert acc["cer"] == pytest.approx(expected["cer"], abs=1e-6)
    assert acc["wer"] == pytest.approx(expected["wer"], abs=1e-6)
    assert expected["char_edits"] >= len(" EXTRA WORDS")   # the words only the GT has are counted
    [unit] = acc["repeats"][0]["units"]                   # komi.tif has no ground truth
    assert Path(unit["source"]).name == "phototest.tif"
    md = (out / "tesseract" / "phototest" / "page-0001.md").read_text()
    checks = {c["id"]: c["status"] for c in acc["repeats"][0]["rules"]["checks"]}
    for rule in bench.load_rules(folder / "phototest.rules.jsonl"):
        assert checks[rule["id"]] == bench.check_rule(rule, md)[0]
    assert checks["r2"] == "pass" and checks["r4"] == "fail" and checks["r5"] == "unsupported"
    assert acc["rules_not_scored"] == 1 and acc["rules_passed"] + acc["rules_failed"] == 4

    # outputs: per-model pages, olmOCR-bench layout, markdown table, hardware and versions
    assert (out / "tesseract" / "komi" / "page-0001.txt").exists()
    assert (out / "tesseract" / "phototest_pg1_repeat1.md").read_text() == md
    assert (out / "tesseract" / "komi_pg1_repeat1.md").exists()
    hw = report["hardware"]
    assert hw["cpu"] and hw["cpu_cores"] and "torch" in hw["versions"] and "transformers" in hw["versions"]
    assert report["command_line"] == ["chatvlm", "bench", "(test)"]
    table = (out / "bench.md").read_text()
    assert "| model | status |" in table and "CER" in table and "rules" in table
    assert "| tesseract | ok |" in table
    assert "| bench_crash | failed [1] |" in table and "[1] bench_crash: " in table
    assert f"{acc['cer'] * 100:.1f}%" in table


@needs_corpus
def test_bench_cli_max_pages_repeats_and_table(tmp_path, fake_models):
    _needs_tesseract()
    from chatvlm.cli import app

    folder = _inputs(tmp_path)
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, [
        "bench", str(folder / "phototest.tif"), str(folder / "komi.tif"), "--models", "tesseract,bench_crash",
        "--max-pages", "1", "--repeats", "2", "--lang", "eng", "-o", str(out), "--layout", "olmocr-bench"])
    assert result.exit_code == 1, result.output
    assert "tesseract" in result.output and "bench_crash" in result.output and "CER" in result.output
    report = json.loads((out / "bench.json").read_text())
    t = report["models"][0]
    assert t["model"] == "tesseract" and t["pages"]["total"] == 2    # 1 page x 2 repeats
    assert [d["source"].endswith("phototest.tif") for d in t["pages_detail"]] == [True, True]
    assert (out / "tesseract" / "repeat1" / "phototest" / "page-0001.md").exists()
    assert (out / "tesseract" / "repeat2" / "phototest" / "page-0001.md").exists()
    assert (out / "tesseract" / "phototest_pg1_repeat2.md").exists()
    assert not (out / "tesseract" / "repeat1" / "komi").exists()     # --max-pages 1
    assert len(t["accuracy"]["repeats"]) == 2
    assert report["options"]["max_pages"] == 1 and report["options"]["repeats"] == 2


@needs_corpus
def test_bench_cli_no_warmup_skips_the_warm_up_page(tmp_path, monkeypatch):
    """--no-warmup: the engine sees one page fewer (no cold page before the timed run) and
    bench.json says so: no warm-up page, no warm-up time, options.warmup false."""
    _needs_tesseract()
    from chatvlm.backends.tesseract import TesseractBackend
    from chatvlm.cli import app

    seen: list[str] = []
    generate_batch = TesseractBackend.generate_batch

    def counted(self, pages, task, params):
        seen.extend(page.source.name for page in pages)
        return generate_batch(self, pages, task, params)
    monkeypatch.setattr(TesseractBackend, "generate_batch", counted)

    def bench_json(out: Path, *flags: str) -> dict:
        seen.clear()
        result = CliRunner().invoke(app, ["bench", str(PHOTOTEST), "--models", "tesseract", "--lang", "eng",
                                          "-o", str(out), *flags])
        assert result.exit_code == 0, result.output
        return json.loads((out / "bench.json").read_text())

    warm = bench_json(tmp_path / "warm")
    assert seen == [PHOTOTEST.name, PHOTOTEST.name]                  # the warm-up page, then the timed one
    assert warm["options"]["warmup"] is True and warm["warmup_page"]["page"] == 1
    assert warm["models"][0]["warmup_s"] > 0
    cold = bench_json(tmp_path / "cold", "--no-warmup")
    assert seen == [PHOTOTEST.name]                                  # only the timed page
    assert cold["options"]["warmup"] is False and cold["warmup_page"] is None
    row = cold["models"][0]
    assert row["status"] == "ok" and row["warmup_s"] is None and row["time_to_first_page_s"] is None
    assert row["pages"]["ok"] == 1 and row["pages_per_s"] > 0


def test_model_selection(tmp_path, monkeypatch):
    config = _config(tmp_path, ["x"])
    assert bench.select_models("tesseract, tesseract", config) == ["tesseract"]
    default = bench.select_models(None, config)
    assert default[-1] == "tesseract"
    from chatvlm.errors import UsageError, UnknownModelError
    with pytest.raises(UnknownModelError):
        bench.select_models("tesseract,nope", config)
    with pytest.raises(UsageError):
        bench.parse_assignments(["qwen_vl_2b"], "--model-path")
    assert bench.parse_assignments(["qwen_vl_2b=/m"], "--model-path") == {"qwen_vl_2b": Path("/m")}
    config.model_paths = {"qwen_vl_2b": Path("/m")}
    assert "qwen_vl_2b" in bench.select_models(None, config)
    config.synthetic = True
    synthetic = bench.select_models(None, config)
    assert "tesseract" not in synthetic and "qwen_vl_2b" in synthetic


def test_model_without_weights_is_a_row(tmp_path):
    """A VLM named explicitly whose weights are not here: a row saying so, no download attempt."""
    from chatvlm.registry import get_spec
    from chatvlm.weights import weights_available
    if weights_available(get_spec("got_ocr_hf")):
        pytest.skip("got_ocr_hf weights are cached on this machine")
    (tmp_path / "blank.png").write_bytes(b"")   # unreadable input: the page fails, nothing loads
    config = _config(tmp_path, [tmp_path / "blank.png"])
    outcome = bench.run_bench(config, ["got_ocr_hf"])
    [row] = outcome.report["models"]
    assert row["status"] == "unavailable" and "--model-path got_ocr_hf=DIR" in row["error"]
    assert outcome.exit_code == 3


# =========================================================================== transformers models (tiny)

TINY_QWEN2_VL = {
    "model_type": "qwen2_vl",
    "text_config": {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1000000.0},
                    "tie_word_embeddings": True},
    "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
    "tie_word_embeddings": True,
}


@needs_corpus
def test_synthetic_tiny_config_generates_exactly_n_tokens(tmp_path):
    pytest.importorskip("transformers")
    config_path = tmp_path / "tiny_qwen2_vl.json"
    config_path.write_text(json.dumps(TINY_QWEN2_VL))
    config = _config(tmp_path, [PHOTOTEST, KOMI_LINE], synthetic=True, tokens=6,
                     synthetic_configs={"qwen_vl_2b": config_path})
    config.base.generation.max_pixels = 40_000      # a small page budget keeps the CPU run short
    outcome = bench.run_bench(config, ["qwen_vl_2b", "tesseract"])
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    qwen, tess = report["models"]
    assert qwen["status"] == "ok", qwen["error"]
    assert [(d["output_tokens"], d["finish_reason"]) for d in qwen["pages_detail"]] == [(6, "length"), (6, "length")]
    assert qwen["output_tokens"] == 12 and qwen["output_tokens_per_page"] == 6
    assert qwen["output_tokens_per_s"] > 0 and qwen["pages"]["looped"] == 0
    assert qwen["engine"]["synthetic"] is True and qwen["engine"]["model_class"] == "Qwen2VLForConditionalGeneration"
    assert qwen["accuracy"] is None                                  # random weights: no accuracy
    roof = qwen["roofline"]                                          # counted on the warm-up page
    assert roof["prefill_flops"] > 0 and roof["decode_step_flops"] > 0 and roof["decode_bound"] in ("memory", "compute")
    assert roof["tokens_per_page"] == 6 and roof["limit_s"] > 0
    assert roof["percent_of_limit"] == pytest.approx(100 * roof["limit_s"] * qwen["pages_per_s"], rel=1e-2)
    assert [(p["device"], p["dtype"]) for p in report["peaks"]] == [("cpu", "float32")]
    assert qwen["engine"]["decode"] == "chatvlm-static"              # the counting pass did not change it
    assert tess["status"] == "unavailable" and "synthetic" in tess["error"]
    assert report["synthetic"] is True and report["tokens_per_page"] == 6
    assert "RANDOM weights" in report["title"]
    table = (tmp_path / "out" / "bench.md").read_text()
    assert "RANDOM weights" in table and "CER" not in table and "tokens/page" in table
    assert "% of limit" in table and "Roofline on cpu (float32)" in table
    assert outcome.exit_code == 1   # tesseract did not run


@needs_corpus
def test_tiny_checkpoint_and_broken_checkpoint_rows(tmp_path):
    _needs_tesseract()
    testing = pytest.importorskip("chatvlm.testing")
    ckpt = testing.build_tiny_checkpoint("qwen_vl_2b", tmp_path / "qwen")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    config = _config(tmp_path, [KOMI_LINE], model_paths={"qwen_vl_2b": ckpt, "got_ocr_hf": broken})
    config.base.generation.max_new_tokens = 8
    config.base.generation.max_pixels = 40_000
    outcome = bench.run_bench(config, ["got_ocr_hf", "qwen_vl_2b", "tesseract"])
    rows = {r["model"]: r for r in outcome.report["models"]}
    assert rows["got_ocr_hf"]["status"] == "unavailable" and "got_ocr_hf" in rows["got_ocr_hf"]["error"]
    q = rows["qwen_vl_2b"]
    assert q["status"] == "ok", q["error"]
    assert q["pages"]["ok"] == 1 and 0 < q["pages_detail"][0]["output_tokens"] <= 8
    assert q["dtype"] == "float32" and q["attention"] in ("sdpa", "eager") and q["device"] == "cpu"
    assert q["load_s"] > 0 and q["output_tokens_per_s"] > 0
    assert (tmp_path / "out" / "qwen_vl_2b" / KOMI_LINE.stem / "page-0001.md").exists()
    assert rows["tesseract"]["status"] == "ok"
    assert outcome.exit_code == 1


def test_table_turns_round_on_a_narrow_terminal():
    from rich.console import Console

    from chatvlm.bench import render_table

    report = {"title": "chatvlm bench", "synthetic": True, "hardware": {}, "models": [
        {"model": name, "status": "ok", "error": None, "device": "cuda", "dtype": "bfloat16", "attention": "sdpa",
         "load_s": 1.0, "time_to_first_page_s": 2.0, "pages_per_s": 3.5, "output_tokens_per_s": 100.0,
         "page_latency_p50_s": 0.1, "page_latency_p90_s": 0.2, "peak_gpu_memory_gb": 9.5,
         "pages": {"total": 4, "ok": 4, "failed": 0, "looped": 0, "truncated": 0, "unreadable_inputs": 0},
         "pages_detail": [], "accuracy": {}}
        for name in ("qwen_vl_2b", "dots_ocr")]}
    narrow = Console(width=80, record=True)
    narrow.print(render_table(report, 80))
    text = narrow.export_text()
    header = next(line for line in text.splitlines() if "qwen_vl_2b" in line)
    assert "dots_ocr" in header                      # models are columns
    assert any(line.strip().startswith("│ pages/s") for line in text.splitlines())
    wide = Console(width=250, record=True)
    wide.print(render_table(report, 250))
    rows = [line for line in wide.export_text().splitlines() if "qwen_vl_2b" in line or "dots_ocr" in line]
    assert len(rows) == 2                            # one row per model
