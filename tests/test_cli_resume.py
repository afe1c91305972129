"""Rerunning a command: pages done with the same output settings are skipped, any setting
that changes what a page's files say redoes them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatvlm.cli import app
from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.pipeline import run
from tests.conftest import text_page
from tests.fake_backend import NAME

runner = CliRunner()
PAGES = 2


pytestmark = pytest.mark.usefixtures("fake_backend")   # the fake model, registered per test


@pytest.fixture()
def src(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(PAGES):
        text_page(f"page {i}", size=(220 + 10 * i, 120)).save(folder / f"p{i}.png")
    return folder


def ocr(src: Path, out: Path, *more: str) -> dict:
    result = runner.invoke(app, ["--ui-lang", "en", "-q", "ocr", str(src), "-o", str(out), "--model", NAME, *more])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())["pages"]


@pytest.mark.parametrize("changed", [
    ["--overlay"], ["--skip-headers"], ["--dtype", "float32"], ["--max-pixels", "400000"],
    ["--max-new-tokens", "64"], ["--dpi", "150"], ["--max-image-pixels", "2000000"], ["--lang", "rus"],
    ["--format", "text"],
])
def test_a_changed_output_setting_redoes_the_pages(src, tmp_path, changed):
    out = tmp_path / "out"
    assert ocr(src, out)["ok"] == PAGES
    again = ocr(src, out, *changed)
    assert again["ok"] == PAGES and again["skipped"] == 0, changed
    assert ocr(src, out, *changed)["skipped"] == PAGES       # and the new setting's pages are trusted next time


@pytest.mark.parametrize("unchanged", [
    ["--batch-size", "1"], ["--workers", "2"], ["--device", "cpu"], ["--attn", "eager"], ["--pages", "1-"],
])
def test_a_speed_or_placement_setting_skips_the_pages(src, tmp_path, unchanged):
    out = tmp_path / "out"
    ocr(src, out)
    assert ocr(src, out, *unchanged)["skipped"] == PAGES, unchanged


def test_dtype_spellings_are_one_setting(src, tmp_path):
    out = tmp_path / "out"
    ocr(src, out, "--dtype", "bf16")
    assert ocr(src, out, "--dtype", "bfloat16")["skipped"] == PAGES


def test_rerun_with_overlay_writes_the_overlays(src, tmp_path):
    out = tmp_path / "out"
    ocr(src, out, "--format", "json")
    assert not list(out.rglob("*.layout.png"))
    ocr(src, out, "--format", "json", "--overlay")
    overlays = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.layout.png"))
    assert overlays == ["p0/page-0001.layout.png", "p1/page-0001.layout.png"]


# Settings the Python API and bench set that have no CLI option of their own.
@pytest.mark.parametrize("change", [
    lambda c: setattr(c.generation, "repetition_penalty", 1.2),
    lambda c: setattr(c.generation, "loop_guard", False),
    lambda c: setattr(c.generation, "do_sample", True),
    lambda c: setattr(c.generation, "min_pixels", 3136),
    lambda c: setattr(c.backend, "model_path", Path("/elsewhere/checkpoint")),
    lambda c: c.backend.extra.update(mode="gundam"),
], ids=["repetition_penalty", "loop_guard", "do_sample", "min_pixels", "model_path", "model_option"])
def test_generation_settings_are_part_of_the_key(src, tmp_path, change):
    base = RunConfig(inputs=[str(src)], out=tmp_path / "out", model=NAME, backend=BackendOptions(),
                     generation=GenerationParams())
    assert run(base).report["pages"]["ok"] == PAGES
    changed = dataclasses.replace(base, backend=dataclasses.replace(base.backend, extra=dict(base.backend.extra)),
                                  generation=dataclasses.replace(base.generation))
    change(changed)
    assert changed.options_key() != base.options_key()
    assert run(changed).report["pages"]["ok"] == PAGES
