"""`chatvlm bench`: the same pages through many models, speed and accuracy in one table.

    config      BenchConfig (what a run does), BenchOutcome, file names
    selection   which models run (--models), why one cannot run here
    runner      run_bench / bench_model: load, warm up, timed runs, one BenchRow per model
    row         BenchRow and PageCounts: a model's figures, typed; to_dict() is bench.json's row
    accuracy    PageRecord, ground truth beside the inputs, CER / WER and rule pass rates
    metrics     text normalisation, CER / WER
    olmocr_rules, olmocr_tables   olmOCR-bench unit tests, decided as olmOCR-bench decides them
    hardware    GPU memory between models, hardware and versions
    report      the table (terminal and bench.md) and bench.json

Accuracy, where ground truth sits next to an input (same stem):
  - `<stem>.txt` / `<stem>.md`: CER and WER on normalised text (Unicode NFKC, markdown
    markup stripped for .md, whitespace collapsed; case folded with --ignore-case, or
    automatically when the ground truth has no lower-case letters, as SROIE's has not).
  - `<stem>.rules.jsonl` (olmOCR-bench unit tests): present, absent, order, table, math,
    format, footnote and baseline rules on each page's markdown, with olmOCR-bench's text
    normalisation, fuzzy matching and thresholds (math: LaTeX compared as normalised
    tokens, not rendered).

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

from .accuracy import GroundTruth, PageRecord, accuracy_over_repeats, ground_truth_for, score_accuracy
from .config import BENCH_JSON, BENCH_MD, LAYOUTS, BenchConfig, BenchOutcome
from .hardware import hardware_info
from .metrics import case_insensitive_for, error_rates, normalise, strip_markdown
from .olmocr_rules import SUPPORTED_RULES, check_rule, load_rules, normalize_text
from .report import render_markdown, render_table, table_columns, table_notes, table_rows, write_outputs
from .row import BenchRow, PageCounts
from .runner import bench_model, bench_title, run_bench
from .selection import parse_assignments, select_models, synthetic_config, unavailable_reason

# older private names, still used by tests elsewhere
_unavailable_reason = unavailable_reason

__all__ = [
    "BENCH_JSON", "BENCH_MD", "LAYOUTS", "SUPPORTED_RULES", "BenchConfig", "BenchOutcome", "BenchRow",
    "GroundTruth", "PageCounts", "PageRecord", "accuracy_over_repeats", "bench_model", "bench_title",
    "case_insensitive_for", "check_rule", "error_rates", "ground_truth_for", "hardware_info", "load_rules",
    "normalise", "normalize_text", "parse_assignments", "render_markdown", "render_table", "run_bench",
    "score_accuracy", "select_models", "strip_markdown", "synthetic_config", "table_columns", "table_notes",
    "table_rows", "unavailable_reason", "write_outputs",
]
