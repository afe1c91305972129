"""The pipeline streams pages through one continuous engine and writes them in input order.

`chatvlm.pipeline.run` with a tiny random-weight Qwen2-VL checkpoint (real classes, fp32
on CPU, greedy) and three continuous rows: nine pages of different sizes go from the
renderer straight into the engine, come back as they finish, and are written in input
order through the reorder buffer. Each page's text is the one it gets alone; the first
page is written while later pages are still decoding. A page the processor cannot take, a
page that cannot be rendered, an out-of-memory error (tests/test_oom_recovery.py) and an
interrupt mid-stream each cost at most their own page.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import chatvlm.pipeline as pipeline
from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.engine.decoder import StaticDecoder
from chatvlm.engine.stream import PageStream
from chatvlm.errors import InputError
from chatvlm.interrupt import Interrupted
from chatvlm.records import Reporter
from chatvlm.registry import get_spec
from chatvlm.testing import build_tiny_checkpoint
from tests.conftest import write_noise_pages

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = [(120, 90), (64, 200), (300, 160), (90, 90), (200, 64), (150, 150), (70, 110), (180, 120), (100, 60)]
NAMES = [f"scan{i + 1}.png" for i in range(len(SIZES))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # a slight push towards EOS: pages stop at different points within the budget
    return build_tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen"), eos_boost=1.5)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pages")
    write_noise_pages(folder, SIZES)
    return folder


class Events(Reporter):
    """Pages as they are written (in the writer thread), with the messages."""

    def __init__(self, log: list):
        self.log, self.lines = log, []

    def advance(self, result):
        self.log.append(("written", result.page.source.name))

    def message(self, text, level="info"):
        self.lines.append((level, text))


def _backend(checkpoint, **extra):
    spec = get_spec("qwen_vl_2b")
    backend = spec.backend_class()(spec, BackendOptions(model_path=checkpoint, device="cpu", extra=extra))
    backend.load()
    return backend


def _run(backend, inputs, out, log=None, batch_size=3):
    config = RunConfig(inputs=[str(inputs)], out=out, model="qwen_vl_2b", formats=("text",), task="text",
                       generation=GenerationParams(max_new_tokens=24, batch_size=batch_size))
    reporter = Events(log if log is not None else [])
    outcome = pipeline.run(config, reporter, backend=backend)
    return outcome, _written(out), reporter


def _written(out: Path):
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    texts = {Path(e["source"]).name: (out / e["outputs"][0]).read_text() if e["outputs"] else e["error"]
             for e in entries}
    return entries, texts


@pytest.fixture(scope="module")
def reference(checkpoint, inputs, tmp_path_factory):
    """Each page alone: one page at a time through transformers' generate."""
    backend = _backend(checkpoint, decode="hf")
    outcome, (entries, texts), _ = _run(backend, inputs, tmp_path_factory.mktemp("alone") / "out", batch_size=1)
    backend.close()
    assert outcome.exit_code == 0 and len(set(texts.values())) == len(SIZES)
    return texts


@pytest.fixture
def finishes(monkeypatch):
    """The order in which the engine finishes pages (PageStream hands each one out there)."""
    log: list = []
    result = PageStream._result

    def noted(self, page, done, slots):
        log.append(("finished", page.source.name))
        return result(self, page, done, slots)
    monkeypatch.setattr(PageStream, "_result", noted)
    return log


def test_pages_stream_through_the_engine_and_are_written_in_input_order(checkpoint, inputs, tmp_path, reference,
                                                                        finishes):
    backend = _backend(checkpoint)
    windows = []
    generate_batch = backend.generate_batch
    backend.generate_batch = lambda pages, *a: (windows.append(len(pages)), generate_batch(pages, *a))[1]
    outcome, (entries, texts), _ = _run(backend, inputs, tmp_path / "out", log=finishes)
    facts = backend.describe()
    backend.close()
    assert outcome.exit_code == 0
    assert [Path(e["source"]).name for e in entries] == NAMES           # the manifest in input order
    assert texts == reference                                            # token for token as alone
    assert windows == []                                                 # no window: one stream
    finished = [name for kind, name in finishes if kind == "finished"]
    written = [name for kind, name in finishes if kind == "written"]
    assert written == NAMES and sorted(finished) == sorted(NAMES)
    assert finished != NAMES                                             # the engine finished out of order
    # the first page was written while the engine still had pages to finish
    assert finishes.index(("written", NAMES[0])) < finishes.index(("finished", finished[-1]))
    assert facts["decode_continuous"] and facts["decode_slots"] == 3 and facts["continuous_prefills"] > 1
    report = outcome.report
    assert report["batches"] == facts["continuous_prepares"] and report["recognise_busy_s"] > 0
    assert 0 <= report["recognise_idle_fraction"] < 1 and report["time_to_first_page_s"] is not None
    assert report["stages"]["recognise"]["p50_s"] > 0 and report["stages"]["preprocess"]["p50_s"] > 0


def test_a_bad_page_in_the_stream_fails_alone(checkpoint, inputs, tmp_path, reference, monkeypatch):
    """scan3.png: the processor cannot take it; scan6.png: it cannot be rendered. Only they
    fail, each with its reason and its file named; the others are written as alone, in order."""
    backend = _backend(checkpoint)
    build = backend.build_inputs

    def build_inputs(pages, task, params):
        if any(p.source.name == "scan3.png" for p in pages):
            raise ValueError("image file is truncated")
        return build(pages, task, params)
    backend.build_inputs = build_inputs
    renderer = pipeline._renderer

    def broken_render(doc, number, config):
        if doc.path.name == "scan6.png":
            def fail():
                raise InputError("scan6.png: broken data stream when reading image file")
            return fail
        return renderer(doc, number, config)
    monkeypatch.setattr(pipeline, "_renderer", broken_render)
    outcome, (entries, texts), reporter = _run(backend, inputs, tmp_path / "out")
    backend.close()
    assert outcome.exit_code == 1
    assert [Path(e["source"]).name for e in entries] == NAMES
    status = {Path(e["source"]).name: e["status"] for e in entries}
    assert [name for name, s in status.items() if s != "ok"] == ["scan3.png", "scan6.png"]
    assert "image file is truncated" in texts["scan3.png"] and "broken data stream" in texts["scan6.png"]
    errors = [text for level, text in reporter.lines if level == "error"]
    assert any("scan3.png" in line and "image file is truncated" in line for line in errors)
    assert any("scan6.png" in line for line in errors)
    assert {k: v for k, v in texts.items() if status[k] == "ok"} == \
        {k: v for k, v in reference.items() if k not in ("scan3.png", "scan6.png")}
    assert backend.describe()["decode_continuous"]                       # the engine stayed on


def test_an_interrupt_mid_stream_keeps_the_pages_written(checkpoint, inputs, tmp_path, reference, monkeypatch):
    """A signal arrives (Interrupted raised in the main thread, as the handler raises it)
    while the engine decodes, after two pages are written: they stay, with their manifest
    lines and the report; the next run skips them and does the rest."""
    log: list = []
    step = StaticDecoder._run_step

    def step_then_signal(self, b, *args, **kwargs):
        if sum(kind == "written" for kind, _ in log) >= 2:
            raise Interrupted()
        return step(self, b, *args, **kwargs)
    monkeypatch.setattr(StaticDecoder, "_run_step", step_then_signal)
    backend = _backend(checkpoint)
    out = tmp_path / "out"
    with pytest.raises(Interrupted) as stopped:
        _run(backend, inputs, out, log=log)
    entries, texts = _written(out)
    assert 2 <= len(entries) < len(SIZES)
    assert [Path(e["source"]).name for e in entries] == NAMES[:len(entries)]   # a prefix, in order
    assert {e["status"] for e in entries} == {"ok"}
    assert all((out / e["outputs"][0]).exists() for e in entries)
    assert texts == {name: reference[name] for name in NAMES[:len(entries)]}
    report = json.loads((out / "report.json").read_text())
    assert report["stopped"] == "interrupted" and report["pages"]["ok"] == len(entries)
    assert stopped.value.outcome.report["pages"]["ok"] == len(entries)
    monkeypatch.setattr(StaticDecoder, "_run_step", step)
    outcome, (entries, texts), _ = _run(backend, inputs, out)
    backend.close()
    assert outcome.exit_code == 0 and texts == reference
    assert outcome.report["pages"]["skipped"] >= 2 and outcome.report["pages"]["ok"] == len(SIZES) - \
        outcome.report["pages"]["skipped"]


def test_an_output_folder_that_stops_taking_files_mid_stream(checkpoint, inputs, tmp_path, reference, monkeypatch):
    """After two pages the folder refuses files (read-only, injected where the writer creates
    them): the run stops with one OutputError, the pages written stay, a rerun resumes."""
    import errno

    import chatvlm.writers as writers
    from chatvlm.errors import EXIT_PAGES_FAILED, OutputError

    log: list = []
    mkstemp = writers.tempfile.mkstemp

    def read_only_after_two(*args, **kwargs):
        if sum(kind == "written" for kind, _ in log) >= 2:
            raise OSError(errno.EROFS, "Read-only file system")
        return mkstemp(*args, **kwargs)
    monkeypatch.setattr(writers.tempfile, "mkstemp", read_only_after_two)
    backend = _backend(checkpoint)
    out = tmp_path / "out"
    with pytest.raises(OutputError) as stopped:
        _run(backend, inputs, out, log=log)
    assert "Read-only file system" in str(stopped.value) and "2 page(s) written before are kept" in str(stopped.value)
    assert stopped.value.exit_code == EXIT_PAGES_FAILED
    entries, texts = _written(out)
    assert [Path(e["source"]).name for e in entries] == NAMES[:2] and {e["status"] for e in entries} == {"ok"}
    assert texts == {name: reference[name] for name in NAMES[:2]}
    monkeypatch.undo()
    outcome, (entries, texts), _ = _run(backend, inputs, out)
    backend.close()
    assert outcome.exit_code == 0 and texts == reference and outcome.report["pages"]["skipped"] == 2


def test_a_slow_writer_holds_new_pages_back(checkpoint, inputs, tmp_path, reference, monkeypatch):
    """One row, a writer slower than the engine: the engine takes no new page while the
    writer's backlog (four times the rows) is full, so the pages alive stay bounded."""
    import time

    log: list = []
    taken_ahead, holds = [], []
    next_source, hold = PageStream._next_source, PageStream._hold

    def noted_source(self):
        page = next_source(self)
        if page is not None:
            taken_ahead.append(page.index + 1 - sum(kind == "written" for kind, _ in log))
        return page

    def noted_hold(self, idle):
        held = hold(self, idle)
        holds.append((idle, held))
        return held
    monkeypatch.setattr(PageStream, "_next_source", noted_source)
    monkeypatch.setattr(PageStream, "_hold", noted_hold)

    class SlowWriter(Events):
        def advance(self, result):
            time.sleep(0.3)
            super().advance(result)

    backend = _backend(checkpoint, decode_slots=1)
    config = RunConfig(inputs=[str(inputs)], out=tmp_path / "out", model="qwen_vl_2b", formats=("text",),
                       task="text", generation=GenerationParams(max_new_tokens=24, batch_size=1))
    outcome = pipeline.run(config, SlowWriter(log), backend=backend)
    backend.close()
    assert outcome.exit_code == 0 and _written(tmp_path / "out")[1] == reference
    # pages taken and not yet written: at most the backlog (4), the row, and the one taken now
    assert max(taken_ahead) <= 6 and len(taken_ahead) == len(SIZES)
    assert (False, True) in holds or (True, False) in holds        # the backlog was full at some point


def test_idle_fraction_and_first_page_on_a_slow_renderer(checkpoint, inputs, tmp_path, reference, monkeypatch):
    """Rendering each page takes SLOW seconds: the engine waits for its first page at least
    that long, and the report counts such waits as idle, not as recognition."""
    slow = 0.4
    renderer = pipeline._renderer

    def slow_renderer(doc, number, config):
        render = renderer(doc, number, config)
        return lambda: (time.sleep(slow), render())[1]
    monkeypatch.setattr(pipeline, "_renderer", slow_renderer)
    backend = _backend(checkpoint)
    outcome, (_entries, texts), _ = _run(backend, inputs, tmp_path / "out")
    facts = backend.describe()
    backend.close()
    assert outcome.exit_code == 0 and texts == reference
    assert facts["decode_continuous"] and facts["decode_slots"] == 3 and facts["continuous_engines"] == 1
    report = outcome.report
    wall, busy = report["wall_s"], report["recognise_busy_s"]
    assert slow <= report["time_to_first_page_s"] <= wall
    assert 0 < busy <= wall - slow                    # the wait for the first page is not recognition
    idle = report["recognise_idle_fraction"]
    assert slow / wall <= idle < 1
    assert idle == pytest.approx(1 - busy / (wall - report["model_load_s"]), abs=0.01)


def test_a_run_without_slots_reports_them_as_off_and_why(checkpoint, inputs, tmp_path, reference):
    backend = _backend(checkpoint, decode_slots=0)
    outcome, (_entries, texts), _ = _run(backend, inputs, tmp_path / "out")
    facts = backend.describe()
    backend.close()
    assert outcome.exit_code == 0 and texts == reference
    assert facts["decode_slots"] == 0 and facts["decode_continuous"] is False
    assert "decode_slots=0" in facts["decode_continuous_reason"]
    assert outcome.report["engine"]["decode_slots"] == 0
