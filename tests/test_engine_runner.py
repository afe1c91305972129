"""chatvlm.engine.runner: the engine runs any object that provides the ModelAdapter hooks.

The adapter here is not an HFBackend: a few lines over a tiny random-weight Qwen2-VL
checkpoint (real config, model and processor classes, fp32 on CPU, greedy). Pages of
different sizes (different prompt lengths) that stop at different points go through each
path the runner chooses (continuous batching with fewer slots than pages, left-padded
batches through the static decoder, transformers' generate) and must give each page the
tokens plain `model.generate` gives it alone. A synthetic run ends every page at its own
token count. No mocks: every path runs the real model.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import chatvlm.backends
from chatvlm.engine import lm as decode
from chatvlm.config import BackendOptions, GenerationParams
from chatvlm.engine.memory import BatchSizer
from chatvlm.engine.runner import GenerationRunner
from chatvlm.synthetic import page_token_target
from chatvlm.testing import build_tiny_checkpoint
from tests.conftest import noise_page_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = [(120, 90), (64, 200), (300, 160), (90, 90), (200, 64), (150, 150), (70, 110)]
MAX_NEW = 24
# no repetition penalty, no loop guard: plain greedy decoding, comparable with generate
PARAMS = GenerationParams(max_new_tokens=MAX_NEW, repetition_penalty=1.0, loop_guard=False)


class PlainQwenAdapter:
    """The ModelAdapter hooks over a transformers Qwen2-VL model and its processor."""

    def __init__(self, folder: Path):
        import transformers

        self.processor = transformers.AutoProcessor.from_pretrained(str(folder))
        self.model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(str(folder)).eval()
        self.device = "cpu"
        self.loop_settings: dict = {}
        self.tokenizer = self.processor.tokenizer

    def build_inputs(self, requests, task, params):
        conversations = [[{"role": "user", "content": [{"type": "image", "image": page.image},
                                                       {"type": "text", "text": "Read the page."}]}]
                         for page in requests]
        return self.processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"})

    def to_device(self, inputs):
        return dict(inputs)

    def stop_token_ids(self):
        return [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def stop_strings(self):
        return []

    def logits_processors(self, task, params, inputs):
        return []

    def repetition_penalty(self, params):
        return 1.0

    def max_new_tokens(self, params):
        return int(params.max_new_tokens)

    def max_positions(self):
        return int(self.model.config.get_text_config().max_position_embeddings)

    def pad_token_id(self):
        return self.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def bos_token_id(self):
        return None

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def decode_raw(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    # a slight push towards EOS: pages stop at different points within the budget
    return PlainQwenAdapter(build_tiny_checkpoint("qwen_vl_2b", tmp_path_factory.mktemp("qwen"), eos_boost=1.5))


@pytest.fixture(scope="module")
def reference(adapter):
    """(text, output tokens, finish reason) of each page alone through plain model.generate."""
    from transformers import GenerationConfig

    stop = adapter.stop_token_ids()
    out = []
    for page in noise_page_records(SIZES, seed=3):
        inputs = adapter.build_inputs([page], "text", PARAMS)
        config = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, num_beams=1, eos_token_id=stop,
                                  pad_token_id=adapter.pad_token_id())
        with torch.inference_mode():
            ids = adapter.model.generate(**inputs, generation_config=config)[0, inputs["input_ids"].shape[1]:].tolist()
        if stop[0] in ids:
            ids = ids[:ids.index(stop[0]) + 1]
            out.append((adapter.decode(ids[:-1]), len(ids), "stop"))
        else:
            out.append((adapter.decode(ids), len(ids), "length"))
    return out


def _runner(adapter, **extra):
    return GenerationRunner(adapter, BackendOptions(device="cpu", extra=dict(extra)), {})


@pytest.mark.parametrize("path, extra", [
    ("continuous", {"decode_slots": 3}),
    ("static batch", {"decode_slots": 0}),
    ("generate", {"decode": "hf"}),
])
def test_each_path_gives_each_page_what_generate_gives_it_alone(adapter, reference, path, extra):
    runner = _runner(adapter, **extra)
    pages = noise_page_records(SIZES, seed=3)
    got = [(r.text, r.output_tokens, r.finish_reason) for r in runner.generate(pages, "text", PARAMS)]
    assert got == reference
    lengths = {n for _, n, _ in reference}
    assert len(lengths) > 2 and any(reason == "stop" for _, _, reason in reference)   # really mixed
    facts = runner.facts
    if path == "generate":
        assert facts["decode"] == decode.HF and "requested" in facts["decode_reason"]
        assert runner.decode_slots() == 0 and runner.decoder is None
    else:
        assert facts["decode"] == decode.STATIC
        assert bool(facts.get("decode_continuous")) == (path == "continuous")
    if path == "continuous":
        assert facts["decode_slots"] == 3 and facts["continuous_prefills"] > 1    # slots refilled mid-run
    report = runner.report_facts()      # what report.json gets, whichever path ran
    assert "decode_fallbacks" not in report and "continuous_fallbacks" not in report
    if path == "continuous":
        assert report["decode_slots"] == 3 and report["decode_continuous"] is True
        assert "decode_continuous_reason" not in report
    else:
        assert report["decode_slots"] == 0 and report["decode_continuous"] is False
        why = {"static batch": "decode_slots=0", "generate": "--decode hf"}[path]
        assert why in report["decode_continuous_reason"]


def test_a_batch_size_of_one_reports_no_slots_and_why(adapter):
    runner = _runner(adapter)
    runner.batch_size = 1
    pages = noise_page_records(SIZES[:2], seed=3)
    runner.generate(pages[:1], "text", PARAMS)
    report = runner.report_facts()
    assert report["decode"] == decode.STATIC and report["decode_slots"] == 0 and not report["decode_continuous"]
    assert "batch size 1" in report["decode_continuous_reason"]


def _prompt_lengths(adapter, pages):
    return [adapter.build_inputs([p], "text", PARAMS)["input_ids"].shape[1] for p in pages]


def test_a_mid_run_fallback_stays_in_the_report(adapter, reference):
    """The longest page is too long for the decoder's cache (a real Unsupported): that
    batch takes generate; the next batch is the static decoder's again, and the report
    still counts the fallback and says why."""
    pages = noise_page_records(SIZES, seed=3)
    lengths = _prompt_lengths(adapter, pages)
    longest = max(range(len(pages)), key=lengths.__getitem__)
    assert sorted(lengths)[-2] < lengths[longest]
    runner = _runner(adapter, decode_slots=0, decode_max_len=sorted(lengths)[-2] + MAX_NEW)
    order = [i for i in range(len(pages)) if i != longest][:2]
    order.insert(1, longest)                     # short, long, short
    got = [runner.generate([pages[i]], "text", PARAMS)[0] for i in order]
    assert [(r.text, r.output_tokens, r.finish_reason) for r in got] == [reference[i] for i in order]
    report = runner.report_facts()
    assert report["decode"] == decode.STATIC and "decode_reason" not in report   # the last batch: ours
    assert report["decode_fallbacks"] == 1
    assert report["decode_first_fallback_reason"].startswith("static decoder declined this batch")
    assert "cache limit" in report["decode_first_fallback_reason"]


def test_a_continuous_decline_mid_run_stays_in_the_report(adapter, reference):
    """The engine declines the longest page (last in the batch, after others finished):
    it takes the batch path; the next batch runs continuously again, and the report
    keeps the decline."""
    pages = noise_page_records(SIZES, seed=3)
    lengths = _prompt_lengths(adapter, pages)
    longest = max(range(len(pages)), key=lengths.__getitem__)
    runner = _runner(adapter, decode_slots=2, decode_max_len=sorted(lengths)[-2] + MAX_NEW)
    order = [i for i in range(len(pages)) if i != longest] + [longest]
    got = runner.generate([pages[i] for i in order], "text", PARAMS)
    assert [(r.text, r.output_tokens, r.finish_reason) for r in got] == [reference[i] for i in order]
    assert runner.facts["decode_continuous"] is False
    short = [pages[i] for i in order[:3]]
    runner.generate(short, "text", PARAMS)
    report = runner.report_facts()
    assert report["decode_continuous"] is True and "decode_continuous_reason" not in report
    assert report["continuous_fallbacks"] == 1
    assert "continuous engine declined this batch" in report["continuous_first_fallback_reason"]
    assert report["decode_fallbacks"] == 1 and "cache limit" in report["decode_first_fallback_reason"]


def test_slots_default_to_the_run_batch_size(adapter):
    runner = _runner(adapter)
    assert runner.decode_slots() == 0                 # no batch size yet: nothing to refill alongside
    runner.batch_size = 4
    assert runner.decode_slots() == 4                 # the static decoder serves Qwen2-VL
    runner.slots_cap = 2
    assert runner.decode_slots() == 2                 # lowered after an out-of-memory error
    runner.options.extra["decode"] = "hf"
    assert runner.decode_slots() == 0


@pytest.mark.parametrize("extra", [{"decode_slots": 3}, {"decode_slots": 0}])
def test_a_synthetic_run_ends_each_page_at_its_own_count(adapter, extra):
    runner = _runner(adapter, synthetic_tokens=[3, 12, 7], **extra)
    runner.options.synthetic = True
    pages = [dataclasses.replace(p, page=i + 1) for i, p in enumerate(noise_page_records(SIZES, seed=3))]
    targets = [page_token_target(p.doc_key, p.page, 3, 12, 7) for p in pages]
    assert len(set(targets)) > 2
    out = runner.generate(pages, "text", PARAMS)
    assert [r.output_tokens for r in out] == targets          # no stop token ends a page early
    assert {r.finish_reason for r in out} == {"length"}


def test_batch_sizer_measures_once_per_budget_and_keeps_why_a_probe_failed():
    facts: dict = {}
    sizer = BatchSizer(facts)
    runs = []

    def measure():
        runs.append(1)
        return 12

    def fail():
        raise RuntimeError("no probe today")

    assert sizer.choose(5, 512, object(), measure, lambda: 3, lambda: None) == 5     # explicit size wins
    assert sizer.choose(None, 512, None, measure, lambda: 3, lambda: None) == 1      # no accelerator
    assert sizer.choose(None, 512, object(), measure, lambda: 3, lambda: None) == 12
    assert sizer.choose(None, 512, object(), measure, lambda: 3, lambda: None) == 12 and len(runs) == 1
    assert facts["auto_batch_size"] == 12 and "auto_batch_probe" not in facts
    assert sizer.choose(None, 1024, object(), fail, lambda: 3, lambda: None) == 3    # the estimate stands in
    assert "no probe today" in facts["auto_batch_probe"]


SYNTHETIC_LOADING = ("synthetic", "from_config", "SYNTHETIC_MARKER")


def _synthetic_mentions(source: str) -> list[str]:
    """Names, attributes, imports and strings (docstrings aside) naming synthetic loading."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        words = []
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            words = [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words = [node.value]
        found += [f"{node.lineno}: {word}" for word in words
                  if any(bad.lower() in word.lower() for bad in SYNTHETIC_LOADING)]
    return found


def test_no_backend_branches_on_a_synthetic_checkpoint():
    """Where a checkpoint comes from (hub, --model-path, synthetic) is chatvlm.weights'
    business, and a synthetic run's generation settings the engine's: no name, attribute,
    import or string in a backend's code (docstrings and comments aside) refers to them."""
    folder = Path(chatvlm.backends.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert len(files) >= 8
    found = [f"{path.name}:{hit}" for path in files for hit in _synthetic_mentions(path.read_text(encoding="utf-8"))]
    assert not found, found


def test_the_synthetic_scan_sees_a_branch_but_not_a_docstring():
    # the scan itself could fail: a backend testing options.synthetic is caught
    bad = ('"""bench --synthetic builds the model at random."""\n'
           "from ..weights import is_synthetic\n"
           "if self.options.synthetic:\n    model = cls.from_config(config)\n")
    hits = _synthetic_mentions(bad)
    assert len(hits) == 3 and not any("random" in hit for hit in hits), hits


def test_importing_an_adapter_module_loads_no_framework():
    # `chatvlm models` reads backend class attributes: the engine package loads torch only when used
    import subprocess
    import sys

    code = ("import sys, chatvlm.backends.hf, chatvlm.backends.qwen2_vl, chatvlm.engine; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
