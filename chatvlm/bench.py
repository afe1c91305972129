"""`chatvlm bench`: the same pages through many models, speed and accuracy in one table.

For each selected model, one at a time: load it (timed), run one warm-up page (not in
the throughput figures), then run the real pipeline (`pipeline.run`, with the loaded
backend) over the same pages `--repeats` times, writing each model's per-page outputs
under OUT/<model>/. A model that cannot load or crashes becomes a row saying why; the
others still run. GPU memory is freed between models.

Accuracy, where ground truth sits next to an input (same stem):
  - `<stem>.txt` / `<stem>.md`: CER and WER on normalised text (Unicode NFKC, markdown
    markup stripped for .md, whitespace collapsed; case folded with --ignore-case, or
    automatically when the ground truth has no lower-case letters, as SROIE's has not).
    A single-page input is scored per page; a multi-page input's ground truth covers
    the whole document, so it is scored on the pages joined, only when every page ran.
    A page that failed counts as empty output.
  - `<stem>.rules.jsonl` (olmOCR-bench unit tests): `present`, `absent` and `order`
    checks on the page's markdown, with `max_diffs` (edit distance), `case_sensitive`,
    `first_n` / `last_n`; other types (math, table, ...) are listed as not scored.

`--synthetic`: every VLM is built at full size from its full config with random
weights, and generates exactly `--tokens` tokens per page (no EOS, no loop guard);
`--tokens A-B` gives each page its own count, drawn uniformly in A..B from `--seed` and
the page's identity (the same page gets the same count in every model and repeat), so
batches hold uneven pages as real documents do. Only the speed figures mean anything
then; accuracy is not computed.

Roofline (chatvlm.roofline): on the warm-up page each model's prefill and decode-step
FLOPs are counted (FlopCounterMode) and the bytes a decode step reads are summed; the
card's matmul rate and memory bandwidth are measured once per run. Each row then says
how long a page would take at those limits (`limit s/page`, for the batch size and tokens
per page of the run) and `% of limit` = that limit / the measured seconds per page.

All of it lands in OUT/bench.json (plus hardware, versions and command line) and
OUT/bench.md (the table as markdown).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import RunConfig
from .errors import EXIT_ABORTED, EXIT_OK, EXIT_PAGES_FAILED, ChatVLMError, UsageError
from .i18n import _
from .records import PageResult, Reporter
from .registry import ModelSpec, all_specs, get_spec
from .timing import percentile
from .writers import atomic_write_text

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
LAYOUTS = ("olmocr-bench",)
SUPPORTED_RULES = ("present", "absent", "order")


@dataclass
class BenchConfig:
    """What one `chatvlm bench` run does. `base` carries the page and generation options
    shared with `ocr` (inputs, pages, dpi, device, dtype, batch size, ...)."""

    base: RunConfig
    models: Optional[list[str]] = None          # None = every model with local weights, plus tesseract
    model_paths: dict[str, Path] = field(default_factory=dict)
    repeats: int = 1
    layout: Optional[str] = None                # "olmocr-bench": also <name>_pg<N>_repeat<K>.md
    synthetic: bool = False
    tokens: int = 512                           # --synthetic: tokens per page (the low end of a range)
    tokens_max: Optional[int] = None            # --tokens A-B: each page draws its count in tokens..tokens_max
    seed: int = 0                               # the draw's seed (recorded in bench.json)
    synthetic_configs: dict[str, Path] = field(default_factory=dict)
    ignore_case: str = "auto"                   # "auto" | "yes" | "no"
    warmup: bool = True
    roofline: bool = True                       # count FLOPs/bytes on the warm-up page, measure the card
    command_line: Optional[list[str]] = None

    @property
    def out(self) -> Path:
        return self.base.out

    @property
    def token_range(self) -> Optional[tuple[int, int]]:
        """(A, B) when pages draw their own token count, else None (every page `tokens`)."""
        if self.tokens_max is None or self.tokens_max == self.tokens:
            return None
        return self.tokens, self.tokens_max

    @property
    def tokens_label(self) -> str:
        rng = self.token_range
        return f"{rng[0]}-{rng[1]}" if rng else str(self.tokens)


@dataclass
class BenchOutcome:
    exit_code: int
    report: dict[str, Any]


# =========================================================================== text metrics

_MD_RULES = [
    (re.compile(r"```[^\n]*\n?"), ""),                          # code fences (keep the code)
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),             # images -> alt text
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),              # links -> link text
    (re.compile(r"<br\s*/?>", re.I), " "),
    (re.compile(r"</?[A-Za-z][^>\n]*>"), " "),                  # html tags (tables, sup, ...)
    (re.compile(r"^\s{0,3}#{1,6}\s+", re.M), ""),               # headings
    (re.compile(r"^\s{0,3}>\s?", re.M), ""),                    # block quotes
    (re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.M), ""),           # horizontal rules
    (re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(?:\|\s*:?-{2,}:?\s*)*\|?\s*$", re.M), ""),  # table separators
    (re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.M), ""),        # list markers
    (re.compile(r"(\*\*|__)(.+?)\1", re.S), r"\2"),            # bold
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", re.S), r"\1"),  # *italic*
    (re.compile(r"(?<![\w_])_(?!\s)(.+?)(?<!\s)_(?![\w_])", re.S), r"\1"),    # _italic_
    (re.compile(r"~~(.+?)~~", re.S), r"\1"),                    # strike-through
    (re.compile(r"`([^`]*)`"), r"\1"),                          # inline code
    (re.compile(r"\s*\|\s*"), " "),                             # table cell pipes
]


def strip_markdown(text: str) -> str:
    """Markdown markup out, the words in: headings, emphasis, links, lists, tables, html."""
    for pattern, repl in _MD_RULES:
        text = pattern.sub(repl, text)
    return text


def normalise(text: Optional[str], markdown: bool = False, ignore_case: bool = False) -> str:
    """The form both sides are compared in: NFKC, markup stripped (markdown), one space."""
    text = unicodedata.normalize("NFKC", text or "")
    if markdown:
        text = strip_markdown(text)
    text = " ".join(text.split())
    return text.casefold() if ignore_case else text


def error_rates(hypothesis: str, reference: str) -> dict[str, Any]:
    """Character and word edit distances (Levenshtein, via rapidfuzz) and CER / WER.

    Both strings must already be normalised. CER = edits / reference characters; WER =
    word edits / reference words. None when the reference is empty.
    """
    from rapidfuzz.distance import Levenshtein

    ref_words, hyp_words = reference.split(), hypothesis.split()
    char_edits = Levenshtein.distance(hypothesis, reference)
    word_edits = Levenshtein.distance(hyp_words, ref_words)
    return {
        "char_edits": char_edits, "ref_chars": len(reference),
        "word_edits": word_edits, "ref_words": len(ref_words),
        "cer": round(char_edits / len(reference), 6) if reference else None,
        "wer": round(word_edits / len(ref_words), 6) if ref_words else None,
    }


def case_insensitive_for(reference: str, setting: str) -> bool:
    """--ignore-case yes/no, or auto: fold case when the reference has no lower-case letter
    (an all-capitals transcript, like SROIE's, cannot judge case)."""
    if setting in ("yes", "no"):
        return setting == "yes"
    letters = [c for c in reference if c.isalpha() and c.lower() != c.upper()]
    return bool(letters) and not any(c.islower() for c in letters)


# =========================================================================== olmOCR-style rules

_FANCY = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "＿": "_",
                        "–": "-", "—": "-", "‑": "-", "‒": "-", "−": "-", "\u00b5": "\u03bc"})


def rule_text(text: Optional[str]) -> str:
    """How rule checks see text: markdown emphasis and <br> gone, NFC, one space, plain quotes/dashes."""
    text = text or ""
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = re.sub(r"</?(?:b|i|strong|em)>", "", text, flags=re.I)
    text = re.sub(r"(\*\*|__)(.*?)\1", r"\2", text)
    text = re.sub(r"(\*|_)(.*?)\1", r"\2", text)
    text = " ".join(text.split())
    return unicodedata.normalize("NFC", text).translate(_FANCY)


def approximate_starts(pattern: str, text: str, max_diffs: int) -> list[int]:
    """Start offsets in `text` of substrings within `max_diffs` edits of `pattern`.

    Exact search when max_diffs is 0; otherwise Sellers' dynamic programme (edit distance
    of the pattern against every substring), keeping for each end the start of its best match.
    """
    if not pattern:
        return []
    if max_diffs <= 0:
        starts, at = [], text.find(pattern)
        while at >= 0:
            starts.append(at)
            at = text.find(pattern, at + 1)
        return starts
    m = len(pattern)
    # column j: dist[i] = best distance of pattern[:i] against a substring ending at j; start[i] its start
    dist = list(range(m + 1))
    start = [0] * (m + 1)
    found: set[int] = set()
    for j, ch in enumerate(text, start=1):
        prev_dist, prev_start = dist[0], start[0]
        dist[0], start[0] = 0, j            # empty prefix matches anywhere: starts at j
        for i in range(1, m + 1):
            cost = 0 if pattern[i - 1] == ch else 1
            options = ((prev_dist + cost, prev_start),         # match / substitute
                       (dist[i] + 1, start[i]),                # text char unmatched (insertion)
                       (dist[i - 1] + 1, start[i - 1]))        # pattern char unmatched (deletion)
            best = min(options, key=lambda o: (o[0], -o[1]))
            prev_dist, prev_start = dist[i], start[i]
            dist[i], start[i] = best
        if dist[m] <= max_diffs:
            found.add(start[m])
    return sorted(found)


def check_rule(rule: dict[str, Any], markdown: Optional[str]) -> tuple[str, str]:
    """Run one olmOCR-bench style rule on a page's markdown: ("pass" | "fail" | "unsupported", why)."""
    kind = rule.get("type")
    if kind not in SUPPORTED_RULES:
        return "unsupported", f"rule type '{kind}' is not scored by chatvlm bench"
    max_diffs = int(rule.get("max_diffs") or 0)
    content = rule_text(markdown)
    if kind == "order":
        before, after = rule_text(rule.get("before")), rule_text(rule.get("after"))
        b = approximate_starts(before, content, max_diffs)
        a = approximate_starts(after, content, max_diffs)
        if not b:
            return "fail", f"'before' text not found: {before[:40]!r}"
        if not a:
            return "fail", f"'after' text not found: {after[:40]!r}"
        if min(b) < max(a):
            return "pass", ""
        return "fail", f"{before[:40]!r} does not come before {after[:40]!r}"
    query = rule_text(rule.get("text"))
    if not rule.get("case_sensitive", True):
        query, content = query.lower(), content.lower()
    first_n, last_n = rule.get("first_n"), rule.get("last_n")
    if first_n and last_n:
        content = content[:first_n] + content[-last_n:]
    elif first_n:
        content = content[:first_n]
    elif last_n:
        content = content[-last_n:]
    present = bool(approximate_starts(query, content, max_diffs)) if query else True
    if kind == "present":
        return ("pass", "") if present else ("fail", f"not found: {query[:60]!r}")
    return ("pass", "") if not present else ("fail", f"should be absent: {query[:60]!r}")


def load_rules(path: Path) -> list[dict[str, Any]]:
    rules = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            rules.append(json.loads(line))
        except ValueError as exc:
            rules.append({"type": "invalid", "id": f"{path.name}:{number}", "error": str(exc)})
    return rules


# =========================================================================== ground truth

@dataclass
class GroundTruth:
    text_path: Optional[Path] = None     # .txt or .md transcript of the whole input
    rules_path: Optional[Path] = None    # .rules.jsonl

    @property
    def markdown(self) -> bool:
        return self.text_path is not None and self.text_path.suffix.lower() == ".md"


def ground_truth_for(source: Path) -> GroundTruth:
    """Ground truth beside an input, by stem: <stem>.txt (else <stem>.md), <stem>.rules.jsonl."""
    gt = GroundTruth()
    for suffix in (".txt", ".md"):
        candidate = source.with_suffix(suffix)
        if candidate != source and candidate.is_file():
            gt.text_path = candidate
            break
    rules = source.parent / f"{source.stem}.rules.jsonl"
    if rules.is_file():
        gt.rules_path = rules
    return gt


@dataclass
class PageRecord:
    """What bench keeps of one recognised page (the pipeline's PageResult, minus pixels)."""

    source: str
    doc_key: str
    page: Optional[int]
    page_count: Optional[int]
    status: str
    error: Optional[str]
    text: Optional[str]
    markdown: Optional[str]
    finish_reason: Optional[str]
    output_tokens: Optional[int]
    latency_s: Optional[float]

    @classmethod
    def of(cls, result: PageResult) -> "PageRecord":
        from .records import STAGES
        page = result.page
        latency = sum(result.timings.get(s, 0.0) for s in STAGES) if result.status == "ok" else None
        return cls(source=str(page.source), doc_key=page.doc_key, page=page.page, page_count=page.page_count,
                   status=result.status, error=result.error, text=result.text, markdown=result.markdown,
                   finish_reason=result.finish_reason, output_tokens=result.output_tokens, latency_s=latency)


def score_accuracy(records: list[PageRecord], ignore_case: str = "auto") -> dict[str, Any]:
    """CER / WER against .txt/.md ground truth, and rule pass rates, for one run's pages."""
    by_source: dict[str, list[PageRecord]] = {}
    for rec in records:
        if rec.page is not None:
            by_source.setdefault(rec.source, []).append(rec)
    units: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for source, recs in by_source.items():
        recs.sort(key=lambda r: r.page or 0)
        gt = ground_truth_for(Path(source))
        if gt.text_path is not None:
            unit = _score_text(source, recs, gt, ignore_case)
            if unit is not None:
                units.append(unit)
        if gt.rules_path is not None:
            rules = load_rules(gt.rules_path)
            for rec in recs:
                for rule in rules:
                    if int(rule.get("page", 1) or 1) != rec.page:
                        continue
                    if rule.get("type") == "invalid":
                        status, why = "unsupported", rule.get("error", "")
                    else:
                        status, why = check_rule(rule, rec.markdown if rec.markdown is not None else rec.text)
                    checks.append({"source": source, "page": rec.page, "id": rule.get("id"),
                                   "type": rule.get("type"), "status": status, "detail": why})
    scored = [u for u in units if u.get("cer") is not None or u.get("ref_chars")]
    char_edits = sum(u["char_edits"] for u in scored)
    ref_chars = sum(u["ref_chars"] for u in scored)
    word_edits = sum(u["word_edits"] for u in scored)
    ref_words = sum(u["ref_words"] for u in scored)
    passed = sum(c["status"] == "pass" for c in checks)
    failed = sum(c["status"] == "fail" for c in checks)
    return {
        "cer": round(char_edits / ref_chars, 6) if ref_chars else None,
        "wer": round(word_edits / ref_words, 6) if ref_words else None,
        "char_edits": char_edits, "ref_chars": ref_chars, "word_edits": word_edits, "ref_words": ref_words,
        "units": units,
        "rules": {
            "passed": passed, "failed": failed,
            "not_scored": sum(c["status"] == "unsupported" for c in checks),
            "pass_rate": round(passed / (passed + failed), 6) if passed + failed else None,
            "checks": checks,
        },
    }


def _score_text(source: str, recs: list[PageRecord], gt: GroundTruth, ignore_case: str) -> Optional[dict[str, Any]]:
    page_count = recs[0].page_count or len(recs)
    unit: dict[str, Any] = {"source": source, "ground_truth": str(gt.text_path),
                            "pages": [r.page for r in recs]}
    if page_count > 1 and len(recs) < page_count:
        unit.update(skipped=f"ground truth covers all {page_count} pages; only {len(recs)} ran")
        return unit
    try:
        raw_ref = gt.text_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        unit.update(skipped=f"cannot read ground truth: {exc}")
        return unit

    def page_text(rec: PageRecord) -> str:
        if rec.status != "ok":
            return ""
        if gt.markdown:
            return rec.markdown if rec.markdown is not None else (rec.text or "")
        return rec.text if rec.text is not None else strip_markdown(rec.markdown or "")

    hyp_raw = "\n\n".join(page_text(r) for r in recs)
    fold = case_insensitive_for(normalise(raw_ref), ignore_case)
    # Markdown is stripped from the model's output whatever the GT kind: a heading mark
    # or a table pipe is not a recognition error against a plain transcript.
    reference = normalise(raw_ref, markdown=gt.markdown, ignore_case=fold)
    hypothesis = normalise(hyp_raw, markdown=True, ignore_case=fold)
    unit.update(error_rates(hypothesis, reference))
    unit["ignore_case"] = fold
    unit["failed_pages"] = [r.page for r in recs if r.status != "ok"]
    return unit


# =========================================================================== model selection

def parse_assignments(values: Optional[list[str]], option: str) -> dict[str, Path]:
    """['qwen_vl_2b=/ckpt', ...] -> {'qwen_vl_2b': Path('/ckpt')}; names are checked."""
    out: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(_("{option} takes NAME=PATH, got '{value}'").format(option=option, value=value))
        get_spec(name.strip())
        out[name.strip()] = Path(path.strip()).expanduser()
    return out


def select_models(value: Optional[str], config: BenchConfig) -> list[str]:
    """--models all | a,b,... | default (every model with local weights or --model-path, plus tesseract;
    with --synthetic every VLM)."""
    if value is not None and value.strip() and value.strip() != "default":
        if value.strip() == "all":
            return [s.name for s in all_specs() if not (config.synthetic and s.repo_id is None)]
        names = []
        for name in (v.strip() for v in value.split(",")):
            if name and name not in names:
                get_spec(name)   # unknown names are a usage error before anything runs
                names.append(name)
        if not names:
            raise UsageError(_("--models needs at least one model name"))
        return names
    if config.synthetic:
        return [s.name for s in all_specs() if s.repo_id is not None]
    from .weights import weights_available
    names = [s.name for s in all_specs()
             if s.repo_id is not None and (s.name in config.model_paths or weights_available(s))]
    return names + ["tesseract"]


# =========================================================================== the run

class _Capture(Reporter):
    """Forwards events to the user's reporter and keeps each page's result."""

    def __init__(self, inner: Reporter):
        self.inner = inner
        self.records: list[PageRecord] = []

    def start(self, total: int, model: str) -> None:
        self.inner.start(total, model)

    def advance(self, result: PageResult) -> None:
        self.records.append(PageRecord.of(result))
        self.inner.advance(result)

    def message(self, text: str, level: str = "info") -> None:
        self.inner.message(text, level)

    def summary(self, report: dict[str, Any]) -> None:
        self.inner.summary(report)

    def finish(self) -> None:
        self.inner.finish()

    def workers(self, rows: list[dict[str, Any]]) -> None:
        self.inner.workers(rows)


def run_bench(config: BenchConfig, models: list[str], reporter: Optional[Reporter] = None) -> BenchOutcome:
    """Bench every model in `models` over the same pages; write bench.json and bench.md."""
    reporter = reporter or Reporter()
    if config.repeats < 1:
        raise UsageError(_("--repeats must be at least 1"))
    if config.layout is not None and config.layout not in LAYOUTS:
        raise UsageError(_("--layout must be one of: {known}").format(known=", ".join(LAYOUTS)))
    if config.synthetic and (config.tokens < 1 or (config.tokens_max is not None and config.tokens_max < config.tokens)):
        raise UsageError(_("--tokens must be at least 1 (a range A-B needs A <= B)"))
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    warmup_page = _first_page(config.base) if config.warmup and config.base.ray is None else None
    report: dict[str, Any] = {
        "title": bench_title(config.synthetic, config.tokens_label),
        "synthetic": config.synthetic,
        "tokens_per_page": (config.tokens if config.token_range is None else config.tokens_label) if config.synthetic else None,
        "tokens_range": list(config.token_range) if config.synthetic and config.token_range else None,
        "seed": config.seed if config.synthetic and config.token_range else None,
        "command_line": config.command_line if config.command_line is not None else sys.argv,
        "inputs": list(config.base.inputs),
        "options": {"pages": config.base.pages, "max_pages": config.base.max_pages, "dpi": config.base.dpi,
                    "repeats": config.repeats, "layout": config.layout, "ignore_case": config.ignore_case,
                    "batch_size": config.base.generation.batch_size,
                    "max_new_tokens": (config.tokens_max or config.tokens) if config.synthetic else config.base.generation.max_new_tokens,
                    "max_pixels": config.base.generation.max_pixels, "device": config.base.backend.device,
                    "dtype": config.base.backend.dtype, "attn": config.base.backend.attn,
                    "lang": config.base.backend.lang, "model_options": dict(config.base.backend.extra)},
        "warmup_page": ({"source": str(warmup_page.source), "page": warmup_page.page} if warmup_page else None),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "peaks": [],
        "models": [],
    }
    neural = [name for name in models if get_spec(name).repo_id]
    if neural:
        _preimport()   # library import time is not model load time
    if config.roofline and warmup_page is not None and neural and _cuda_in_use(config):
        # The card's limits before any model: its buffers then never count in a model's peak memory.
        _measure_card(config, get_spec(neural[0]), report["peaks"], reporter)
    with _cluster(config.base.ray):   # one cluster connection for every model
        for name in models:
            reporter.message(_("benchmarking {name}").format(name=name), "info")
            row = bench_model(config, name, warmup_page, reporter, report["peaks"])
            report["models"].append(row)
            if row["status"] != "ok":
                reporter.message(_("{name}: {reason}").format(name=name, reason=row["error"]), "error")
            report["hardware"] = hardware_info()
            _write_outputs(out, report)   # after each model: a later crash keeps what ran
    if not models:
        report["hardware"] = hardware_info()
        _write_outputs(out, report)
    rows = report["models"]
    if rows and not any(r["status"] == "ok" for r in rows):
        code = EXIT_ABORTED
    elif any(r["status"] != "ok" or r["pages"]["failed"] for r in rows):
        code = EXIT_PAGES_FAILED
    else:
        code = EXIT_OK
    return BenchOutcome(exit_code=code, report=report)


def _cluster(address: Optional[str]):
    if address is None:
        return contextlib.nullcontext()
    from .distributed import ray_session
    return ray_session(address)


def bench_title(synthetic: bool, tokens) -> str:
    if synthetic:
        return _("chatvlm bench (synthetic: RANDOM weights, {n} tokens per page; only the speed figures are meaningful)").format(n=tokens)
    return _("chatvlm bench")


def _first_page(base: RunConfig):
    """The first readable page of the inputs, for the warm-up (rendered once, reused per model)."""
    from .sources import iter_pages

    for page in iter_pages(base.inputs, base.pages, base.dpi, base.max_image_pixels):
        if page.ok and page.image is not None:
            return page
    return None


def _model_config(config: BenchConfig, spec: ModelSpec, repeat: int) -> RunConfig:
    base = config.base
    model_out = config.out / spec.name
    if config.repeats > 1:
        model_out = model_out / f"repeat{repeat}"
    backend = dataclasses.replace(base.backend, model_path=config.model_paths.get(spec.name),
                                  synthetic=config.synthetic, extra=dict(base.backend.extra))
    generation = dataclasses.replace(base.generation)
    if config.synthetic:
        generation.max_new_tokens = config.tokens_max or config.tokens
        generation.loop_guard = False
        if config.token_range:
            backend.extra["synthetic_tokens"] = [*config.token_range, config.seed]
    task = base.task if base.task in spec.tasks else ("markdown" if "markdown" in spec.tasks else spec.tasks[0])
    return dataclasses.replace(base, out=model_out, model=spec.name, task=task, force=True, command="bench",
                               backend=backend, generation=generation)


def _empty_row(name: str) -> dict[str, Any]:
    return {
        "model": name, "status": "ok", "error": None, "engine": {}, "device": None, "dtype": None,
        "attention": None, "load_s": None, "warmup_s": None, "time_to_first_page_s": None,
        "pages": {"total": 0, "ok": 0, "failed": 0, "looped": 0, "truncated": 0, "unreadable_inputs": 0},
        "pages_per_s": None, "input_tokens": 0, "output_tokens": 0, "output_tokens_per_s": None,
        "output_tokens_per_page": None, "page_latency_p50_s": None, "page_latency_p90_s": None,
        "peak_gpu_memory_gb": None, "accuracy": None, "roofline": None, "runs": [], "outputs": None,
    }


def bench_model(config: BenchConfig, name: str, warmup_page, reporter: Reporter,
                peaks: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """One model: load, warm up, run the pages, score; every failure becomes the row's reason.

    `peaks`: the card's limits measured so far in this run (one entry per device and dtype;
    a model on a new one measures and appends)."""
    row = _empty_row(name)
    counts = card = None
    spec = get_spec(name)
    reason = _unavailable_reason(config, spec)
    if reason is not None:
        row.update(status="unavailable", error=reason)
        return row
    backend = None
    cuda = config.base.ray is None and _cuda_in_use(config)
    try:
        on_ray = config.base.ray is not None
        # On a cluster the workers load the model; the runs' reports carry the load time.
        if not on_ray:
            if cuda:
                _reset_peak_memory()
            options = _model_config(config, spec, 1).backend
            if config.synthetic:
                options.extra["config"] = _synthetic_config(config, spec)
            try:
                from .backends.base import create_backend
                backend = create_backend(spec, options)
            except ImportError as exc:
                row.update(status="unavailable", error=_("not available yet: {reason}").format(reason=exc))
                return row
            t0 = time.perf_counter()
            backend.load()
            row["load_s"] = round(backend.load_s or (time.perf_counter() - t0), 4)
            cuda = cuda or _cuda_in_use(config, backend)
            params = _model_config(config, spec, 1).generation
            task = _model_config(config, spec, 1).task
            if warmup_page is not None:
                page = dataclasses.replace(warmup_page, timings={})
                t1 = time.perf_counter()
                raw = backend.generate_batch([page], task, params)
                row["warmup_s"] = round(time.perf_counter() - t1, 4)
                row["time_to_first_page_s"] = round(row["load_s"] + row["warmup_s"], 4)
                if raw and getattr(raw[0], "error", None):
                    reporter.message(_("{name}: warm-up page failed: {reason}").format(name=name, reason=raw[0].error), "warning")
                elif config.roofline:
                    counts, card = _roofline_counts(backend, page, task, params, peaks if peaks is not None else [],
                                                    row, reporter)
        records_by_repeat: list[list[PageRecord]] = []
        from . import pipeline
        for repeat in range(1, config.repeats + 1):
            run_config = _model_config(config, spec, repeat)
            if on_ray and config.synthetic:
                run_config.backend.extra["config"] = _synthetic_config(config, spec)
            capture = _Capture(reporter)
            outcome = pipeline.run(run_config, capture, backend=backend)
            if backend is None:
                row["load_s"] = row["load_s"] if row["load_s"] is not None else outcome.report["model_load_s"]
                row["cluster"] = outcome.report.get("cluster")
            records_by_repeat.append(capture.records)
            row["runs"].append({"repeat": repeat, "out": str(run_config.out), "report": outcome.report})
            if config.layout == "olmocr-bench":
                _write_olmocr_layout(config.out / spec.name, capture.records, repeat)
        engine = (backend.describe() if backend is not None else row["runs"][0]["report"].get("engine")) or {}
        row["engine"] = engine
        row["outputs"] = str(config.out / spec.name)
        _fill_speed(row, records_by_repeat, engine)
        if counts is not None and card is not None:
            from .roofline import roofline_row
            per_run = max(1, row["pages"]["total"] // config.repeats)
            batch = min(per_run, engine.get("auto_batch_size") or config.base.generation.batch_size or 1)
            row["roofline"] = roofline_row(counts, card, batch, row["output_tokens_per_page"], row["pages_per_s"])
        if not config.synthetic:
            row["accuracy"] = _accuracy(records_by_repeat, config.ignore_case)
    except Exception as exc:   # a model's failure is its row, never the end of the bench
        from .errors import ModelUnavailableError
        row.update(status="unavailable" if isinstance(exc, ModelUnavailableError) else "failed",
                   error=_describe_failure(exc))
    finally:
        if cuda:
            row["peak_gpu_memory_gb"] = _peak_memory_gb()
        if backend is not None:
            try:
                backend.close()
            except Exception as exc:
                reporter.message(_("{name}: close failed: {reason}").format(name=name, reason=exc), "warning")
        backend = None
        _free_memory()
    return row


def _measure_card(config: BenchConfig, spec: ModelSpec, peaks: list[dict[str, Any]], reporter: Reporter) -> None:
    from . import roofline
    from .backends.hf import choose_dtype

    try:
        device = config.base.backend.device or "cuda"
        card = roofline.measure_peaks(device, choose_dtype(spec, config.base.backend, device))
        card["device"] = device
        peaks.append(card)
    except Exception as exc:
        reporter.message(_("roofline: the card's limits could not be measured: {reason}").format(reason=exc), "warning")
    finally:
        _free_memory()


def _roofline_counts(backend, page, task: str, params, peaks: list[dict[str, Any]], row: dict[str, Any],
                     reporter: Reporter):
    """The warm-up page's FLOP and byte counts, and the card's limits for this model's device
    and dtype (measured on first need). A failure here is a note in the row, never the row's end."""
    from . import roofline

    try:
        counts = roofline.count_page(backend, page, task, params)
        if counts is None:
            return None, None
        device = str(getattr(backend, "device", "cpu"))
        dtype = getattr(backend, "dtype", None)
        dtype_name = str(dtype).replace("torch.", "") if device.startswith("cuda") and dtype is not None else "float32"
        card = next((p for p in peaks if p["device"] == device and p["dtype"] == dtype_name), None)
        if card is None:
            card = roofline.measure_peaks(device, dtype)
            card["device"] = device
            peaks.append(card)
        return counts, card
    except Exception as exc:
        row["roofline"] = {"error": f"{exc.__class__.__name__}: {exc}"[:300]}
        reporter.message(_("{name}: roofline not measured: {reason}").format(name=row["model"], reason=exc), "warning")
        return None, None


def _unavailable_reason(config: BenchConfig, spec: ModelSpec) -> Optional[str]:
    if config.synthetic:
        if spec.repo_id is None:
            return _("not a neural model: synthetic mode does not apply")
        if spec.name not in config.synthetic_configs and not spec.full_config:
            return _("not available yet: no full config in the registry (pass --synthetic-config {name}=config.json)").format(name=spec.name)
        return None
    if spec.repo_id is None or spec.name in config.model_paths:
        return None
    from .weights import weights_available
    if not weights_available(spec):
        # bench never downloads: a multi-GB download inside a timing run helps nobody.
        return _("weights not found locally ({gb} GB); download them with `chatvlm ocr --model {name}` or pass --model-path {name}=DIR").format(
            gb=spec.download_gb, name=spec.name)
    return None


def _synthetic_config(config: BenchConfig, spec: ModelSpec) -> dict[str, Any]:
    path = config.synthetic_configs.get(spec.name)
    if path is None:
        return dict(spec.full_config or {})
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(_("cannot read --synthetic-config for {name}: {reason}").format(name=spec.name, reason=exc)) from None


def _describe_failure(exc: BaseException) -> str:
    from .scheduler import is_out_of_memory
    if isinstance(exc, ChatVLMError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    prefix = _("out of memory") + ": " if is_out_of_memory(exc) else ""
    return f"{prefix}{exc.__class__.__name__}: {text}"[:500]


def _fill_speed(row: dict[str, Any], records_by_repeat: list[list[PageRecord]], engine: dict[str, Any]) -> None:
    every = [r for recs in records_by_repeat for r in recs]
    records = [r for r in every if r.page is not None]   # an unreadable file is not a page
    pages = row["pages"]
    pages["unreadable_inputs"] = len(every) - len(records)
    pages["total"] = len(records)
    pages["ok"] = sum(r.status == "ok" for r in records)
    pages["failed"] = sum(r.status == "error" for r in records)
    pages["looped"] = sum(r.finish_reason == "loop" for r in records)
    pages["truncated"] = sum(r.finish_reason == "length" for r in records)
    reports = [run["report"] for run in row["runs"]]
    wall = sum(rep.get("wall_s") or 0.0 for rep in reports)
    busy = sum(rep.get("recognise_busy_s") or 0.0 for rep in reports)
    # pages recognised per second of the timed runs (a page that failed is not throughput)
    row["pages_per_s"] = round(pages["ok"] / wall, 4) if wall and pages["ok"] else None
    row["input_tokens"] = sum(rep.get("input_tokens") or 0 for rep in reports)
    row["output_tokens"] = sum(r.output_tokens or 0 for r in records)
    row["output_tokens_per_s"] = round(row["output_tokens"] / busy, 2) if busy and row["output_tokens"] else None
    ok_tokens = [r.output_tokens for r in records if r.status == "ok" and r.output_tokens is not None]
    row["output_tokens_per_page"] = round(sum(ok_tokens) / len(ok_tokens), 2) if ok_tokens else None
    latencies = [r.latency_s for r in records if r.latency_s is not None]
    row["page_latency_p50_s"] = _round(percentile(latencies, 50))
    row["page_latency_p90_s"] = _round(percentile(latencies, 90))
    row["device"] = engine.get("device")
    row["dtype"] = engine.get("dtype")
    row["attention"] = engine.get("attention")
    if engine.get("peak_gpu_memory_bytes"):
        row["peak_gpu_memory_gb"] = round(engine["peak_gpu_memory_bytes"] / 1e9, 3)
    row["pages_detail"] = [
        {"repeat": k, "source": r.source, "page": r.page, "status": r.status, "error": r.error,
         "finish_reason": r.finish_reason, "output_tokens": r.output_tokens, "latency_s": _round(r.latency_s)}
        for k, recs in enumerate(records_by_repeat, start=1) for r in recs]


def _accuracy(records_by_repeat: list[list[PageRecord]], ignore_case: str) -> dict[str, Any]:
    scores = [score_accuracy(recs, ignore_case) for recs in records_by_repeat]
    total = {k: sum(s[k] for s in scores) for k in ("char_edits", "ref_chars", "word_edits", "ref_words")}
    passed = sum(s["rules"]["passed"] for s in scores)
    failed = sum(s["rules"]["failed"] for s in scores)
    return {
        "cer": round(total["char_edits"] / total["ref_chars"], 6) if total["ref_chars"] else None,
        "wer": round(total["word_edits"] / total["ref_words"], 6) if total["ref_words"] else None,
        **total,
        "rules_passed": passed, "rules_failed": failed,
        "rules_not_scored": sum(s["rules"]["not_scored"] for s in scores),
        "rules_pass_rate": round(passed / (passed + failed), 6) if passed + failed else None,
        "repeats": scores,
    }


def _write_olmocr_layout(folder: Path, records: list[PageRecord], repeat: int) -> None:
    """<doc>_pg<N>_repeat<K>.md per page, as the olmOCR-bench scorer reads a candidate folder.
    A failed page gets an empty file, so the scorer counts it as failing, not as missing."""
    for rec in records:
        if rec.page is None:
            continue
        text = (rec.markdown if rec.markdown is not None else rec.text or "") if rec.status == "ok" else ""
        atomic_write_text(folder / f"{rec.doc_key}_pg{rec.page}_repeat{repeat}.md", text)


# =========================================================================== memory and hardware

def _preimport() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        pass


def _cuda_in_use(config: BenchConfig, backend=None) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch
    if not torch.cuda.is_available():
        return False
    device = (backend.describe().get("device") if backend is not None else None) or config.base.backend.device or "cuda"
    return str(device).startswith("cuda")


def _reset_peak_memory() -> None:
    import torch
    torch.cuda.reset_peak_memory_stats()


def _peak_memory_gb() -> Optional[float]:
    try:
        import torch
        return round(torch.cuda.max_memory_allocated() / 1e9, 3)
    except Exception:
        return None


def _free_memory() -> None:
    gc.collect()
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def hardware_info() -> dict[str, Any]:
    from importlib import metadata

    def version(package: str) -> Optional[str]:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "cpu": _cpu_name(), "cpu_cores": os.cpu_count(), "machine": platform.machine(),
        "os": platform.platform(), "python": platform.python_version(), "node": platform.node(),
        "gpu": None, "gpu_count": 0, "cuda": None,
        "versions": {p: version(p) for p in ("chatvlm", "torch", "transformers", "tesserocr", "rapidfuzz")},
    }
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            info["gpu_count"] = torch.cuda.device_count()
            info["gpu"] = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            info["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
            info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _round(value: Optional[float], digits: int = 4) -> Optional[float]:
    return None if value is None else round(value, digits)


# =========================================================================== table, markdown, json

def table_columns(synthetic: bool) -> list[tuple[str, str]]:
    """(key, header) for each column; accuracy columns only when weights were real."""
    cols = [
        ("model", _("model")), ("status", _("status")), ("load_s", _("load s")),
        ("time_to_first_page_s", _("1st page s")), ("pages_per_s", _("pages/s")),
        ("output_tokens_per_s", _("tokens/s")), ("page_latency_p50_s", _("p50 s")),
        ("page_latency_p90_s", _("p90 s")), ("peak_gpu_memory_gb", _("GPU GB")),
        ("attention", _("attn")), ("dtype", _("dtype")),
        ("failed_looped_truncated", _("fail/loop/trunc")),
        ("roofline_limit_s", _("limit s/page")), ("roofline_percent", _("% of limit")),
    ]
    if synthetic:
        cols.insert(6, ("output_tokens_per_page", _("tokens/page")))
    else:
        cols += [("cer", "CER"), ("wer", "WER"), ("rules", _("rules"))]
    return cols


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    cols = table_columns(report.get("synthetic", False))
    failed = [row for row in report["models"] if row["status"] != "ok"]
    rows = []
    for row in report["models"]:
        cells = [_cell(row, key) for key, _header in cols]
        if row["status"] != "ok":   # the reason goes in a numbered note under the table
            cells[1] = f"{row['status']} [{failed.index(row) + 1}]"
        rows.append(cells)
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "status":
        return row["status"]
    if key == "failed_looped_truncated":
        if row["status"] != "ok":
            return "–"
        p = row["pages"]
        return f"{p['failed']}/{p['looped']}/{p['truncated']} " + _("of {n}").format(n=p["total"])
    if key in ("roofline_limit_s", "roofline_percent"):
        roof = row.get("roofline") or {}
        value = roof.get("limit_s" if key == "roofline_limit_s" else "percent_of_limit")
        if value is None:
            return "–"
        return f"{value:.3g}" if key == "roofline_limit_s" else f"{value:.1f}%"
    acc = row.get("accuracy") or {}
    if key in ("cer", "wer"):
        value = acc.get(key)
        return "–" if value is None else f"{value * 100:.1f}%"
    if key == "rules":
        total = acc.get("rules_passed", 0) + acc.get("rules_failed", 0)
        if not total:
            return "–"
        return f"{acc['rules_passed']}/{total} ({acc['rules_pass_rate'] * 100:.0f}%)"
    value = row.get(key)
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table_notes(report: dict[str, Any]) -> list[str]:
    """One line per model that did not run: "[n] model: why"."""
    failed = [row for row in report["models"] if row["status"] != "ok"]
    return [f"[{n}] {row['model']}: {row['error']}" for n, row in enumerate(failed, start=1)]


def render_table(report: dict[str, Any], width: int = 200):
    """The bench table for a terminal `width` columns wide.

    One row per model when it fits; on a narrow terminal the table is turned round (one
    row per figure, one column per model), which stays readable at 80 columns.
    """
    from rich.table import Table

    columns = table_columns(report.get("synthetic", False))
    rows = table_rows(report)
    wide_enough = sum(max(len(h), *(len(r[i]) for r in rows)) + 3 for i, (_k, h) in enumerate(columns)) <= width if rows else True
    table = Table(title=report["title"], title_justify="left")
    if wide_enough:
        for key, header in columns:
            table.add_column(header, justify="left" if key in ("model", "status", "attention", "dtype") else "right",
                             overflow="fold")
        for cells in rows:
            table.add_row(*cells)
    else:
        table.add_column("", style="bold", no_wrap=True)
        for cells in rows:
            table.add_column(cells[0], justify="right", overflow="fold")
        for i, (_key, header) in enumerate(columns[1:], start=1):
            table.add_row(header, *(cells[i] for cells in rows))
    hw = report.get("hardware") or {}
    peaks = [_("roofline {device} {dtype}: matmul {tflops} TFLOP/s, memory {gb_s} GB/s").format(
        device=c.get("device_name") or c.get("device"), dtype=c.get("dtype"), tflops=f"{c['matmul_tflops']:.3g}",
        gb_s=f"{c['bandwidth_gb_s']:.4g}") for c in report.get("peaks") or []]
    table.caption = "\n".join([_hardware_line(hw)] + peaks + table_notes(report))
    table.caption_justify = "left"
    return table


def _hardware_line(hw: dict[str, Any]) -> str:
    versions = hw.get("versions") or {}
    parts = [hw.get("gpu") or _("no GPU"), f"{hw.get('cpu')} ({hw.get('cpu_cores')} " + _("cores") + ")"]
    parts += [f"{k} {v}" for k, v in versions.items() if v and k in ("torch", "transformers")]
    return ", ".join(str(p) for p in parts if p)


def render_markdown(report: dict[str, Any]) -> str:
    cols = table_columns(report.get("synthetic", False))
    lines = [f"### {report['title']}", ""]
    lines.append("| " + " | ".join(h for _k, h in cols) + " |")
    lines.append("|" + "|".join(":---" if k in ("model", "status", "attention", "dtype") else "---:" for k, _h in cols) + "|")
    for cells in table_rows(report):
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    notes = table_notes(report)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += ["", _hardware_line(report.get("hardware") or {}) + ".",
              _("Pages: {n} per model and repeat; warm-up page excluded from pages/s and latency; "
                "1st page s = load + one cold page; pages/s counts pages recognised without error.").format(n=_pages_per_run(report))]
    lines += [_peaks_line(card) for card in report.get("peaks") or []]
    return "\n".join(lines + [""])


def _peaks_line(card: dict[str, Any]) -> str:
    return _("Roofline on {device} ({dtype}): matmul {tflops} TFLOP/s, memory {gb_s} GB/s, measured in this run; "
             "limit s/page = prefill at the FLOP limit + decode steps at the slower of the FLOP and bandwidth "
             "limits for the run's batch; % of limit = limit / measured seconds per page.").format(
        device=card.get("device_name") or card.get("device"), dtype=card.get("dtype"),
        tflops=f"{card['matmul_tflops']:.3g}", gb_s=f"{card['bandwidth_gb_s']:.4g}")


def _pages_per_run(report: dict[str, Any]) -> str:
    counts = {len([d for d in row.get("pages_detail", []) if d["repeat"] == 1 and d["page"] is not None])
              for row in report["models"] if row["status"] == "ok"}
    return "/".join(str(c) for c in sorted(counts)) or "0"


def _write_outputs(out: Path, report: dict[str, Any]) -> None:
    atomic_write_text(out / BENCH_JSON, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(out / BENCH_MD, render_markdown(report))
