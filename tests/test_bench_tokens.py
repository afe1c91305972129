"""bench --synthetic --tokens A-B: every page generates exactly its own drawn token count,
batched rows stopping at their own lengths, through transformers' generate and the static decoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatvlm import bench
from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.loop_guard import GenerationTracker
from chatvlm.synthetic import page_token_target, parse_token_range

from .test_bench import TINY_QWEN2_VL


def test_parse_token_range():
    assert parse_token_range("512") == (512, 512)
    assert parse_token_range(" 256-1024 ") == (256, 1024)
    for bad in ("0", "9-3", "a-b", "5-", ""):
        with pytest.raises(ValueError):
            parse_token_range(bad)


def test_page_token_target_is_seeded_uniform_and_stable():
    draws = [page_token_target("doc", n, 10, 20, seed=7) for n in range(1, 401)]
    assert draws == [page_token_target("doc", n, 10, 20, seed=7) for n in range(1, 401)]   # reproducible
    assert min(draws) == 10 and max(draws) == 20 and len(set(draws)) == 11                 # whole range, ends included
    assert draws != [page_token_target("doc", n, 10, 20, seed=8) for n in range(1, 401)]   # the seed matters
    assert page_token_target("doc", 1, 64, 64, seed=1) == 64


def test_tracker_stops_each_row_at_its_own_limit():
    import torch

    tracker = GenerationTracker(prompt_len=2, batch_size=3, loop_guard=False, row_limits=[1, 3, 2])
    seq = torch.zeros(3, 2, dtype=torch.long)
    done_at = []
    for step in range(1, 4):
        seq = torch.cat([seq, torch.full((3, 1), 5)], dim=1)
        done_at.append(tracker(seq).tolist())
    assert done_at == [[True, False, False], [True, False, True], [True, True, True]]
    assert [tracker.result(r, 3) for r in range(3)] == [(1, "length"), (3, "length"), (2, "length")]


def _pages(folder: Path, count: int) -> list[Path]:
    from PIL import Image, ImageDraw

    folder.mkdir()
    paths = []
    for i in range(count):
        image = Image.new("RGB", (160, 120), "white")
        ImageDraw.Draw(image).rectangle([10 + 5 * i, 20, 120, 40], fill="black")
        path = folder / f"page{i + 1}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("decode", ["hf", "auto", "continuous"])
def test_synthetic_token_range_each_page_its_own_count(tmp_path, decode):
    pytest.importorskip("transformers")
    from chatvlm.sources import iter_pages

    config_path = tmp_path / "tiny_qwen2_vl.json"
    config_path.write_text(json.dumps(TINY_QWEN2_VL))
    # "continuous": a batch size of two, five pages streamed through the engine's two
    # rows, which must stop each row at its own count too
    continuous = decode == "continuous"
    inputs = [str(p) for p in _pages(tmp_path / "in", 5 if continuous else 4)]
    base = RunConfig(inputs=inputs, out=tmp_path / "out", formats=("text", "markdown"),
                     backend=BackendOptions(extra={"decode": "auto" if continuous else decode}),
                     generation=GenerationParams(batch_size=2 if continuous else 4, max_pixels=40_000),
                     command="bench")
    config = bench.BenchConfig(base=base, synthetic=True, tokens=2, tokens_max=9, seed=3,
                               synthetic_configs={"qwen_vl_2b": config_path}, command_line=["(test)"])
    bench.run_bench(config, ["qwen_vl_2b"])
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    row = report["models"][0]
    assert row["status"] == "ok", row["error"]
    assert row["engine"]["decode"] == ("hf-generate" if decode == "hf" else "chatvlm-static")
    expected = {str(p.source): page_token_target(p.doc_key, p.page, 2, 9, 3)
                for p in iter_pages(inputs, None, 200, 50_000_000)}
    assert len(set(expected.values())) > 1            # the seed gives uneven pages: a real test of per-row stops
    got = {d["source"]: (d["output_tokens"], d["finish_reason"]) for d in row["pages_detail"]}
    assert got == {source: (n, "length") for source, n in expected.items()}
    if continuous:
        assert row["engine"]["decode_continuous"] and row["engine"]["decode_slots"] == 2
    if decode == "auto":
        # the warm-up page (the first input), then the four streamed through the engine's
        # four rows until the longest one ends; each row decodes only its own count
        first = expected[inputs[0]]
        assert row["engine"]["decode_steps"] == (first - 1) + (max(expected.values()) - 1)
        assert row["engine"]["decode_continuous"] and row["engine"]["decode_slots"] == 4
        assert row["engine"]["continuous_busy_row_steps"] == sum(n - 1 for n in expected.values())
    assert report["tokens_range"] == [2, 9] and report["seed"] == 3 and report["tokens_per_page"] == "2-9"
    assert "2-9 tokens per page" in report["title"]


def test_cli_takes_a_token_range_and_refuses_a_bad_one(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from chatvlm.cli import app

    seen = {}

    def fake_run_bench(config, names, reporter=None):   # the parsing is under test, not a model run
        seen.update(tokens=config.tokens, tokens_max=config.tokens_max, seed=config.seed)
        return bench.BenchOutcome(exit_code=0, report={"title": "t", "models": [], "synthetic": True})

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    runner = CliRunner()
    result = runner.invoke(app, ["bench", str(tmp_path), "--synthetic", "--models", "qwen_vl_2b",
                                 "--tokens", "256-1024", "--seed", "5", "-o", str(tmp_path / "o")])
    assert seen == {"tokens": 256, "tokens_max": 1024, "seed": 5}, result.output
    result = runner.invoke(app, ["bench", str(tmp_path), "--synthetic", "--tokens", "900-100", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--tokens" in result.output
