"""What a run writes where: pages without text, names that collide or are not UTF-8,
an output folder inside the input, runs with nothing to do, and the progress bar's rate."""

import io
import json
import os
from pathlib import Path

import pytest

from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.errors import UsageError
from chatvlm.page_steps import has_no_text
from chatvlm.pipeline import run
from tests.conftest import text_page
from tests.fake_backend import NAME

pytestmark = pytest.mark.usefixtures("fake_backend")   # the fake model, registered per test


def config(inputs, out, **extra) -> RunConfig:
    task = extra.pop("task", "layout")
    return RunConfig(inputs=[str(i) for i in inputs], out=out, model=NAME, formats=("text", "markdown", "json"),
                     task=task, backend=BackendOptions(extra=extra), generation=GenerationParams())


def manifest(out: Path) -> list[dict]:
    # strict UTF-8: a name that is not UTF-8 must not leave undecodable bytes here
    return [json.loads(line) for line in (out / "manifest.jsonl").read_bytes().decode("utf-8").splitlines()]


def test_page_without_text_is_ok_empty_and_not_redone(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    text_page("words", size=(300, 200)).save(src / "text.png")
    text_page("", size=(333, 200)).save(src / "blank.png")       # the fake engine finds nothing at width 333
    out = tmp_path / "out"
    first = run(config([src], out, empty_width=333))
    assert first.exit_code == 0 and first.report["pages"]["failed"] == 0
    entries = {e["source"]: e for e in manifest(out)}
    blank = entries[str(src / "blank.png")]
    assert blank["status"] == "ok" and blank["empty"] is True and blank["error"] is None
    assert (out / "blank" / "page-0001.txt").read_text() == ""
    assert "empty" not in entries[str(src / "text.png")]
    second = run(config([src], out, empty_width=333))
    assert second.report["pages"]["skipped"] == 2 and second.report["pages"]["ok"] == 0
    assert {e["source"]: e.get("empty") for e in manifest(out)}[str(src / "blank.png")] is True


def test_every_vlm_backend_reads_an_empty_answer_as_an_empty_page():
    from PIL import Image

    from chatvlm.backends.base import create_backend
    from chatvlm.records import Page, RawOutput
    from chatvlm.registry import all_specs

    for spec in all_specs():
        if spec.repo_id is None:
            continue
        backend = create_backend(spec, BackendOptions())
        for task in spec.tasks:
            page = Page(source=Path("blank.png"), doc_key="blank", page=1, image=Image.new("RGB", (300, 400), "white"))
            result = backend.postprocess(page, RawOutput(text=""), task)
            assert result.status == "ok" and has_no_text(result), (spec.name, task)


def test_same_file_name_from_two_folders_never_overwrites(tmp_path, monkeypatch):
    for folder, width in (("A", 300), ("B", 310)):
        (tmp_path / folder).mkdir()
        text_page(folder, size=(width, 200)).save(tmp_path / folder / "x.png")
    out = tmp_path / "out"
    run(config([tmp_path / "A" / "x.png"], out))
    run(config([tmp_path / "B" / "x.png"], out))
    # the common case keeps its plain name; the second x.png gets the next free one
    assert (out / "x" / "page-0001.txt").read_text() == "x.png p1 300x200\n"
    assert (out / "x-2" / "page-0001.txt").read_text() == "x.png p1 310x200\n"
    # A spelled another way is the same source: skipped, with A's outputs, not B's
    monkeypatch.chdir(tmp_path)
    again = run(config(["./A/x.png"], out))
    assert again.report["pages"]["skipped"] == 1
    assert again.results[0]["outputs"][0].startswith("x/")
    # in one run, B first: B still writes to x-2 (the manifest's mapping), A to x
    both = run(config(["B/x.png", "A/../A/x.png"], out))
    assert both.report["pages"]["skipped"] == 2
    assert [e["doc"] for e in both.results] == ["x-2", "x"]
    assert len(manifest(out)) == 2


def test_same_relative_path_from_two_arguments_in_one_run(tmp_path):
    for folder, width in (("A", 300), ("B", 310)):
        (tmp_path / folder / "sub").mkdir(parents=True)
        text_page(folder, size=(width, 200)).save(tmp_path / folder / "sub" / "x.png")
    out = tmp_path / "out"
    outcome = run(config([tmp_path / "A", tmp_path / "B"], out))
    assert outcome.report["pages"]["ok"] == 2
    assert (out / "sub" / "x" / "page-0001.txt").read_text() == "x.png p1 300x200\n"
    assert (out / "sub" / "x-2" / "page-0001.txt").read_text() == "x.png p1 310x200\n"


def test_file_name_that_is_not_utf8_is_processed_with_the_batch(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    cp1251 = os.fsdecode(bytes(src) + "/Пример.png".encode("cp1251"))   # "Пример" from a Windows disk
    cp866 = os.fsdecode(bytes(src) + "/Отчёт 1.png".encode("cp866"))    # "Отчёт 1" from a ZIP archive
    text_page("one", size=(300, 200)).save(cp1251)
    text_page("two", size=(310, 200)).save(cp866)
    text_page("three", size=(320, 200)).save(src / "plain.png")
    out = tmp_path / "out"
    outcome = run(config([src], out))
    assert outcome.exit_code == 0 and outcome.report["pages"]["ok"] == 3
    assert (out / "Пример" / "page-0001.txt").read_text(encoding="utf-8").endswith("300x200\n")
    assert (out / "Отчёт 1" / "page-0001.txt").exists()
    sources = {e["source"] for e in manifest(out)}
    # the exact original bytes, escaped, so the manifest stays UTF-8 and says which file it was
    assert str(src / "\\xcf\\xf0\\xe8\\xec\\xe5\\xf0.png") in sources
    json.loads((out / "report.json").read_bytes().decode("utf-8"))
    assert run(config([src], out)).report["pages"]["skipped"] == 3


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    text_page("one", size=(300, 200)).save(docs / "a.png")
    out = docs / "out"
    cfg = config([docs], out)
    cfg.overlay = True                                      # writes page-0001.layout.png under docs/out
    assert run(cfg).report["pages"]["ok"] == 1
    assert list(out.rglob("*.png"))
    again = run(cfg)
    assert again.report["pages"] == {**again.report["pages"], "ok": 0, "skipped": 1, "failed": 0}
    assert [e["source"] for e in manifest(out)] == [str(docs / "a.png")]


def test_nothing_to_do_is_a_usage_error_but_all_done_is_not(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    with pytest.raises(UsageError, match="nothing to do"):
        run(config([src], tmp_path / "out"))                # an empty folder
    text_page("one", size=(300, 200)).save(src / "a.png")
    cfg = config([src], tmp_path / "out")
    cfg.pages = "30"
    with pytest.raises(UsageError, match="--pages 30"):
        run(cfg)
    assert run(config([src], tmp_path / "out")).exit_code == 0

    class Messages:
        def __init__(self):
            self.lines = []

        def __getattr__(self, name):
            return lambda *args, **kw: None

        def message(self, text, level="info"):
            self.lines.append((level, text))

    seen = Messages()
    done = run(config([src], tmp_path / "out"), seen)
    assert done.exit_code == 0
    assert any("all 1 pages were done" in text for _level, text in seen.lines)


def test_nothing_to_do_exits_2_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from chatvlm.cli import app

    text_page("one", size=(300, 200)).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["ocr", str(tmp_path / "a.png"), "--pages", "5-9", "--model", NAME,
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "nothing to do" in result.output


def test_progress_bar_ends_on_the_reports_rate_with_skipped_apart(tmp_path):
    from rich.console import Console

    from chatvlm import ui

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        text_page(str(i), size=(300 + 10 * i, 200)).save(src / f"p{i}.png")
    out = tmp_path / "out"
    run(config([src / "p0.png", src / "p1.png"], out, sleep=0.05))
    buffer = io.StringIO()
    reporter = ui.RichReporter(Console(file=buffer, width=200, force_terminal=False))
    reporter.show_progress = True
    outcome = run(config([src], out, sleep=0.05), reporter)
    final = buffer.getvalue().strip().splitlines()[-1]
    assert outcome.report["pages"]["skipped"] == 2 and outcome.report["pages"]["ok"] == 2
    assert f"{outcome.report['pages_per_s']:.2f} pages/s" in final, final
    assert "2 skipped" in final, final


def test_folder_two_sources_shared_in_an_older_manifest_is_redone_apart(tmp_path):
    """Manifests written before output folders were kept apart may give two files one folder."""
    for folder, width in (("A", 300), ("B", 310)):
        (tmp_path / folder).mkdir()
        text_page(folder, size=(width, 200)).save(tmp_path / folder / "x.png")
    out = tmp_path / "out"
    run(config([tmp_path / "A" / "x.png", tmp_path / "B" / "x.png"], out))
    lines = manifest(out)
    for entry in lines:                    # as the old naming left it: both in x/, no doc field
        entry.pop("doc"), entry.pop("resolved")
        entry["outputs"] = [o.replace("x-2/", "x/") for o in entry["outputs"]]
    (out / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    again = run(config([tmp_path / "A" / "x.png", tmp_path / "B" / "x.png"], out))
    assert again.report["pages"]["ok"] == 2 and again.report["pages"]["skipped"] == 0
    assert (out / "x" / "page-0001.txt").read_text() == "x.png p1 300x200\n"
    assert (out / "x-2" / "page-0001.txt").read_text() == "x.png p1 310x200\n"
    assert run(config([tmp_path / "B" / "x.png"], out)).report["pages"]["skipped"] == 1
