"""No page is lost to out-of-memory, proven on a tiny real model by fault injection.

`torch.OutOfMemoryError` is raised where a full card raises it: inside the static decoder's
step, or from transformers `generate`, at the first batch or at a later one (the card
"fills up" from batch N on: every batch above two pages fails). Every page must end `ok`,
the batch size must shrink and stay shrunk, and the backend must have freed its decoder
pool before the retry. The batch-size probe is tested with injected memory numbers
around a real prefill + decode of the tiny model.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from chatvlm.backends import hf
from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.engine import STATIC, StaticDecoder
from chatvlm.engine.memory import PROBE_PAGE_SIZE, MemoryMeter
from chatvlm.pipeline import run
from chatvlm.records import Page, Reporter
from chatvlm.registry import get_spec
from chatvlm.scheduler import generate_with_backoff, probe_batch_size
from chatvlm.testing import build_tiny_checkpoint
from tests.conftest import write_noise_pages

SIZES = [(120, 90), (64, 200), (300, 160), (90, 90), (150, 120), (80, 140), (200, 100), (110, 110)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pages")
    write_noise_pages(folder, SIZES)
    return folder


class Messages(Reporter):
    def __init__(self):
        self.lines = []

    def message(self, text, level="info"):
        self.lines.append((level, text))


class FullCard:
    """From the `from_batch`-th batch on, any batch of more than `fits` pages runs out of memory."""

    def __init__(self, from_batch: int, fits: int = 2):
        self.from_batch, self.fits = from_batch, fits
        self.batches: list[int] = []         # size of every generate_batch call, in order
        self.raised = 0

    def check(self, rows=None):
        """`rows`: the rows a decode step computes (what fills a card); default the batch's pages."""
        if len(self.batches) >= self.from_batch and (self.batches[-1] if rows is None else rows) > self.fits:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")


def _backend(checkpoint, decode_mode):
    spec = get_spec("qwen_vl_2b")
    backend = spec.backend_class()(spec, BackendOptions(model_path=checkpoint, device="cpu",
                                                        extra={"decode": decode_mode}))
    backend.load()
    return backend


def _run(backend, inputs, out, card=None, batch_size=4):
    if card is not None:
        generate_batch = backend.generate_batch

        def counted(pages, task, params):
            card.batches.append(len(pages))
            return generate_batch(pages, task, params)
        backend.generate_batch = counted
    config = RunConfig(inputs=[str(inputs)], out=out, model="qwen_vl_2b", formats=("text",), task="text",
                       generation=GenerationParams(max_new_tokens=4, batch_size=batch_size))
    reporter = Messages()
    outcome = run(config, reporter, backend=backend)
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    texts = {Path(e["source"]).name: (out / e["outputs"][0]).read_text() if e["outputs"] else None for e in entries}
    return outcome, entries, texts, reporter


@pytest.fixture(scope="module")
def reference(checkpoint, inputs, tmp_path_factory, one_torch_thread):
    backend = _backend(checkpoint, "hf")
    _outcome, entries, texts, _ = _run(backend, inputs, tmp_path_factory.mktemp("ref") / "out")
    backend.close()
    assert [e["status"] for e in entries] == ["ok"] * len(SIZES)
    return texts


def _released(backend):
    calls = []
    release = backend.release_memory

    def spy():
        calls.append(backend.runner.decoder is not None)
        release()
    backend.release_memory = spy
    return calls


# The pipeline streams the pages through one continuous engine with the run's batch size
# as its rows (4); from the `from_step`-th decode step on, a step of more than two rows
# runs out of memory: the unfinished pages go back in front of the stream, the rows are
# halved to 2 and stay there, and no page goes through generate_batch (no window).
@pytest.mark.parametrize("from_step", [1, 6])
def test_oom_inside_the_static_decoder_loses_no_page(checkpoint, inputs, tmp_path, monkeypatch, reference,
                                                     from_step):
    card = {"steps": 0, "raised": 0}
    step = StaticDecoder._run_step

    def step_on_a_full_card(self, b, *args, **kwargs):
        card["steps"] += 1
        if card["steps"] >= from_step and b > 2:      # the decode step's allocation fails above two rows
            card["raised"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return step(self, b, *args, **kwargs)
    monkeypatch.setattr(StaticDecoder, "_run_step", step_on_a_full_card)
    freed = []
    release = StaticDecoder.release
    monkeypatch.setattr(StaticDecoder, "release", lambda self: (freed.append(self.k is not None), release(self)))

    backend = _backend(checkpoint, "auto")
    windows = FullCard(from_batch=10**6)               # counts generate_batch calls only
    outcome, entries, texts, reporter = _run(backend, inputs, tmp_path / "out", windows)
    assert outcome.exit_code == 0
    assert [e["status"] for e in entries] == ["ok"] * len(SIZES)
    assert [Path(e["source"]).name for e in entries] == [f"scan{i + 1}.png" for i in range(len(SIZES))]
    assert texts == reference                          # the same tokens as an undisturbed run
    assert card["raised"] == 1 and windows.batches == []   # one failure, then the rows are remembered
    assert freed and freed[0] is True                  # the decoder's pool was freed before the retry
    facts = backend.describe()
    assert facts["decode"] == STATIC and facts["decode_continuous"]   # an OOM does not disable the engine
    assert facts["decode_slots_lowered_to"] == 2 and facts["decode_slots"] == 2
    assert ("warning", "out of memory: batch size lowered to 2") in reporter.lines
    assert backend.decode_slots() == 2                 # the engine's rows halved with the batch
    assert outcome.report["batches"] >= 2 and outcome.report["recognise_busy_s"] > 0
    backend.close()


@pytest.mark.parametrize("from_batch,sizes", [(1, [4, 2, 2, 2, 2]), (2, [4, 4, 2, 2])])
def test_oom_from_generate_loses_no_page(checkpoint, inputs, tmp_path, reference, from_batch, sizes):
    card = FullCard(from_batch)
    backend = _backend(checkpoint, "hf")
    model_generate = backend.model.generate

    def generate_on_a_full_card(*args, **kwargs):
        card.check()
        return model_generate(*args, **kwargs)
    backend.model.generate = generate_on_a_full_card
    released = _released(backend)
    outcome, entries, texts, reporter = _run(backend, inputs, tmp_path / "out", card)
    assert outcome.exit_code == 0
    assert [e["status"] for e in entries] == ["ok"] * len(SIZES)
    assert texts == reference
    assert card.batches == sizes and card.raised == 1
    assert released
    assert ("warning", "out of memory: batch size lowered to 2") in reporter.lines
    backend.close()


def _page(i):
    return Page(source=Path(f"p{i}.png"), doc_key="d", page=1, index=i)


def test_a_page_fails_for_oom_only_alone_on_an_emptied_card():
    state = {"held": True, "released": 0}

    def release():
        state["released"] += 1
        state["held"] = False               # what the failed attempt held is gone

    def generate(batch):
        if state["held"]:
            state["held"] = True
            raise torch.OutOfMemoryError("CUDA out of memory (leftovers of an earlier attempt)")
        return [f"ok{p.index}" for p in batch]

    assert generate_with_backoff(generate, [_page(0)], release=release) == ["ok0"]
    assert state["released"] == 1

    def never_fits(batch):
        raise torch.OutOfMemoryError("CUDA out of memory: one page needs more than the card")
    freed = []
    (out,) = generate_with_backoff(never_fits, [_page(1)], release=lambda: freed.append(1))
    assert isinstance(out, torch.OutOfMemoryError) and out.__traceback__ is None
    assert len(freed) == 2                   # freed before the lone retry, and after it


def test_probe_arithmetic():
    kv = 28 * 1024                           # Qwen2-VL-2B bf16: 28 KiB of keys and values per token
    # 2 probe pages peaked 1.2 GiB above the model; 512 new tokens, 8 already in the probe
    per_page = 0.6 * 2**30 + 504 * kv
    assert probe_batch_size(100 * 2**30, int(1.2 * 2**30), 2, 8, 512, kv) == 128
    assert probe_batch_size(100 * 2**30, int(1.2 * 2**30), 2, 8, 512, kv, headroom=0.5) == 64
    assert int(100 * 2**30 * 0.8 // per_page) == 130      # 130 fit; the power of two below is 128
    assert probe_batch_size(10 * 2**30, 40 * 2**30, 2, 8, 512, kv) == 1          # nothing fits: one page
    assert probe_batch_size(10**15, 2**20, 2, 8, 512, kv) == 256                  # capped


class Meter(MemoryMeter):
    """Memory numbers the test chooses, read around the real probe run."""

    def __init__(self, free, held, probe_peak):
        self._free, self._held, self._peak = free, held, probe_peak
        self.events = []

    def free(self):
        self.events.append("free")
        return self._free

    def allocated(self):
        self.events.append("allocated")
        return self._held

    def peak(self):
        self.events.append("peak")
        return self._held + self._peak

    def reset_peak(self):
        self.events.append("reset")


def test_auto_batch_size_comes_from_a_measured_probe(checkpoint, one_torch_thread):
    backend = _backend(checkpoint, "auto")
    assert backend.default_batch_size(GenerationParams()) == 1          # a CPU: no probe, one page
    meter = Meter(free=10 * 2**30, held=3 * 2**30, probe_peak=200 * 2**20)
    backend.memory_meter = lambda: meter
    runs = []
    generate_batch = backend.generate_batch
    backend.generate_batch = lambda pages, task, params: (runs.append((len(pages), params.max_new_tokens,
                                                                       pages[0].size)),
                                                          generate_batch(pages, task, params))[1]
    params = GenerationParams(max_new_tokens=1024)
    size = backend.default_batch_size(params)
    assert runs == [(2, 8, PROBE_PAGE_SIZE)]                 # a real prefill + 8 decode steps of 2 A4 pages
    assert meter.events == ["reset", "allocated", "peak", "free"]   # peak read after the run, free after freeing
    kv = backend.kv_bytes_per_token()
    assert kv == 2 * 2 * 2 * 8 * 4                               # 2 layers x 2 KV heads x 8 dims, fp32
    expected = probe_batch_size(10 * 2**30, 200 * 2**20, 2, 8, 1024, kv)
    assert size == expected == 64
    facts = backend.describe()
    assert facts["auto_batch_size"] == 64 and facts["auto_batch_probe"]["peak_mb"] == 200.0
    assert backend.default_batch_size(params) == 64 and len(runs) == 1         # measured once per budget
    assert backend.default_batch_size(replace(params, batch_size=3)) == 3      # an explicit size wins

    # the probe itself runs out of memory: one page at a time, and the reason is kept
    def no_room(pages, task, params):
        raise torch.OutOfMemoryError("CUDA out of memory (probe)")
    backend.generate_batch = no_room
    assert backend.default_batch_size(GenerationParams(max_new_tokens=2048)) == 1
    assert "OutOfMemoryError" in backend.describe()["auto_batch_probe"]
    # any other probe failure: the KV-cache estimate stands in
    backend.generate_batch = lambda *a: (_ for _ in ()).throw(RuntimeError("no probe today"))
    estimate = hf.HFBackend.estimated_batch_size(backend, GenerationParams(max_new_tokens=4096), meter)
    assert backend.default_batch_size(GenerationParams(max_new_tokens=4096)) == estimate > 1
    backend.close()
