"""The engine's speed targets, judged from one GPU check's rows.

Each target gets its threshold, the measured value, and a verdict: pass, fail, or
unmeasured (with why: its run did not run, failed, timed out, or its bench.json lacks the
figure). A target holds for the check's standard conditions: a CUDA GPU, A4 pages at
200 DPI, each model's own pixel budget and full-size config, 512 tokens per page (256-1024
for the range target). A run under other conditions (the CPU dry run, `--tokens 128`, ...)
still shows its value, but its verdict is unmeasured: a CPU can neither pass nor fail a
GPU's target.

The rows are gpucheck_report's (plain dicts, as gpu_check.json holds them), so a report
read back from disk is judged the same. Like gpucheck, this module imports no torch.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

from .gpucheck_plan import A4_200DPI, BASELINE_MODEL, ENGINE, RANGE, TARGET_RANGE, TARGET_TOKENS
from .i18n import N_, _

PASS, FAIL, UNMEASURED = "pass", "fail", "unmeasured"
VERDICT_LABELS = {PASS: N_("pass"), FAIL: N_("fail"), UNMEASURED: N_("unmeasured")}   # for the table
RAN = ("ok", "pages failed")                 # run statuses that come with bench figures
# The other VLMs, each judged against its own transformers generate (the order).
AGAINST_GENERATE = ("qwen3_vl_2b", "got_ocr_hf", "phi3_vision", "dots_ocr", "deepseek_ocr", "deepseek_ocr2")
SPEEDUP = 5.0
QWEN_PAGES_PER_S = 8.0
QWEN_FIRST_PAGE_S = 15.0
DEEPSEEK_PAGES_PER_S = 2.0
ROOFLINE_PERCENT = 60.0                      # within 40 % of the limit: at least 60 % of its pages/s
IDLE_FRACTION = 0.05

OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<": operator.lt}


class _Check:
    """What judging needs from a report: its rows by run, the planned runs, the settings."""

    def __init__(self, report: dict[str, Any]):
        self.rows = {row["run"]: row for row in report.get("runs") or []}
        self.plan = {run["run"]: run for run in (report.get("plan") or {}).get("runs") or []}
        self.settings = report.get("settings") or {}

    def source(self, run_id: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        """(the run's row, None) where it ran, else (None, why it has no figures)."""
        row = self.rows.get(run_id)
        if row is None:
            if run_id in self.plan:
                return None, _("{run} has not run (the check stopped before it)").format(run=run_id)
            return None, _("no {run} run in this check").format(run=run_id)
        if row.get("status") not in RAN:
            return None, f"{run_id}: {row.get('status')}: {row.get('error')}"
        return row, None

    def differences(self, row: dict[str, Any], tokens: str) -> list[str]:
        """How the run's conditions differ from the targets' (empty: the standard ones)."""
        out = []
        device = str(row.get("device") or "")
        if not device.startswith("cuda"):
            out.append(_("on {device}, not a GPU").format(device=device or "?"))
        if str(row.get("tokens")) != tokens:
            out.append(_("{got} tokens/page, not {want}").format(got=row.get("tokens"), want=tokens))
        size = tuple(self.settings.get("page_size") or ())
        if size and size != A4_200DPI:
            out.append(_("pages of {w}x{h} px, not A4 at 200 DPI").format(w=size[0], h=size[1]))
        if self.settings.get("max_pixels"):
            out.append(_("--max-pixels {n}, not the model's own budget").format(n=self.settings["max_pixels"]))
        if row.get("model") in (self.settings.get("synthetic_configs") or {}):
            out.append(_("a reduced config, not the full-size model"))
        return out


def _count(value: Any) -> int:
    """A count from a report, 0 where it is missing or not a number."""
    try:
        return max(0, int(value)) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0


def off_fast_path(row: dict[str, Any]) -> list[str]:
    """What took a run off its fast path, from the row's engine facts (read defensively:
    an older bench.json has none of them): the static decoder's fallbacks to transformers
    generate, the continuous engine's declines and failures (each with its count and first
    reason), rows lowered after running out of memory."""
    engine = row.get("engine")
    engine = engine if isinstance(engine, dict) else {}

    def fact(key: str) -> Any:
        return row[key] if row.get(key) is not None else engine.get(key)

    notes = []
    texts = {"decode": _("batches the static decoder gave to transformers generate: {n}; first: {reason}"),
             "continuous": _("continuous engine declines and failures: {n}; first: {reason}")}
    for kind, text in texts.items():
        n = _count(fact(f"{kind}_fallbacks"))
        if n:
            notes.append(text.format(n=n, reason=str(fact(f"{kind}_first_fallback_reason") or "?")[:300]))
    lowered = _count(fact("decode_slots_lowered_to"))
    if lowered:
        notes.append(_("continuous rows lowered to {n} after running out of memory").format(n=lowered))
    return notes


def _verdict(key: str, title: str, threshold: str, runs: list[str], value: Optional[float] = None,
             measured: Optional[str] = None, passed: Optional[bool] = None, why: Optional[str] = None,
             differences: Optional[list[str]] = None, notes: Optional[list[str]] = None) -> dict[str, Any]:
    """`notes`: what the runs' engines say went off their fast path; a measured verdict
    gives them as its why (a figure explained by a fallback)."""
    if value is None or passed is None:
        verdict = UNMEASURED
    elif differences:
        verdict, why = UNMEASURED, _("not under the target's conditions: {what}").format(what="; ".join(differences))
    else:
        verdict, why = (PASS if passed else FAIL), ("; ".join(notes) if notes else None)
    return {"key": key, "title": title, "threshold": threshold, "measured": measured,
            "value": None if value is None else round(value, 4), "verdict": verdict, "why": why, "runs": runs}


def _one_figure(check: _Check, key: str, title: str, threshold: str, run_id: str, figure: str, op: str,
                limit: float, tokens: str, show: Callable[[float], str]) -> dict[str, Any]:
    row, why = check.source(run_id)
    if row is None:
        return _verdict(key, title, threshold, [run_id], why=why)
    value = row.get(figure)
    if value is None:
        why = _("{run}: no {figure} in its bench.json").format(run=run_id, figure=figure)
        if figure == "percent_of_limit" and row.get("roofline_error"):
            why += f" ({row['roofline_error']})"
        return _verdict(key, title, threshold, [run_id], why=why)
    return _verdict(key, title, threshold, [run_id], value=float(value), measured=show(float(value)),
                    passed=OPS[op](float(value), limit), differences=check.differences(row, tokens),
                    notes=[f"{run_id}: {note}" for note in off_fast_path(row)])


def _pages_per_s(value: float) -> str:
    return _("{n} pages/s").format(n=f"{value:.2f}")


def _against_generate(check: _Check, model: str) -> dict[str, Any]:
    key, engine_id, generate_id = f"{model}_over_generate", model, f"{model}-generate"
    title = _("{model}: engine over its own transformers generate").format(model=model)
    threshold = _("≥ {x}x").format(x=f"{SPEEDUP:g}")
    runs = [engine_id, generate_id]
    rows = []
    for run_id in runs:
        row, why = check.source(run_id)
        if row is None:
            return _verdict(key, title, threshold, runs, why=why)
        if not row.get("pages_per_s"):
            why = _("{run}: no pages_per_s in its bench.json").format(run=run_id)
            return _verdict(key, title, threshold, runs, why=why)
        rows.append(row)
    fast, slow = rows
    ratio = fast["pages_per_s"] / slow["pages_per_s"]
    measured = _("{x}x ({fast} / {slow} pages/s; generate: {pages} pages, batch {batch})").format(
        x=f"{ratio:.2f}", fast=f"{fast['pages_per_s']:.2f}", slow=f"{slow['pages_per_s']:.3f}",
        pages=slow.get("pages_total") or "?", batch=slow.get("batch_size") or "?")
    differences = check.differences(fast, TARGET_TOKENS)
    differences += [d for d in check.differences(slow, TARGET_TOKENS) if d not in differences]
    return _verdict(key, title, threshold, runs, value=ratio, measured=measured, passed=ratio >= SPEEDUP,
                    differences=differences, notes=[f"{engine_id}: {note}" for note in off_fast_path(fast)])


def _idle(check: _Check) -> dict[str, Any]:
    key, title = "recognise_idle_fraction", _("recognise_idle_fraction, every engine run")
    threshold = _("< {n} %").format(n=f"{IDLE_FRACTION * 100:g}")
    runs = [run_id for run_id, run in check.plan.items() if run.get("role") in (ENGINE, RANGE)]
    if not runs:
        return _verdict(key, title, threshold, runs, why=_("no engine run in this check"))
    measured, missing, differences = {}, [], []
    for run_id in runs:
        row, why = check.source(run_id)
        value = None if row is None else row.get("idle_fraction")
        if value is None:
            missing.append(why or _("{run}: no recognise_idle_fraction in its bench.json").format(run=run_id))
            continue
        measured[run_id] = float(value)
        tokens = TARGET_RANGE if check.plan[run_id].get("role") == RANGE else TARGET_TOKENS
        differences += [d for d in check.differences(row, tokens) if d not in differences]
    if not measured:
        return _verdict(key, title, threshold, runs, why="; ".join(missing))
    worst = max(measured, key=measured.get)
    shown = _("max {pct} % ({run}); {n} of {total} runs").format(
        pct=f"{measured[worst] * 100:.1f}", run=worst, n=len(measured), total=len(runs))
    over = measured[worst] >= IDLE_FRACTION
    if missing and not over:   # nothing over the line yet, but not every run was seen
        return _verdict(key, title, threshold, runs, measured=shown, why="; ".join(missing))
    return _verdict(key, title, threshold, runs, value=measured[worst], measured=shown, passed=not over,
                    differences=differences)


def _failed_pages(check: _Check) -> dict[str, Any]:
    """No page failed in any run. Needs no standard conditions: a failed page is a failure anywhere."""
    key, title, threshold = "failed_pages", _("failed pages, every run"), "0"
    runs = list(check.plan) or list(check.rows)
    failed, total, missing = {}, 0, []
    for run_id in runs:
        row, why = check.source(run_id)
        if row is None or row.get("pages_failed") is None:
            missing.append(why or _("{run}: no page counts").format(run=run_id))
            continue
        total += row.get("pages_total") or 0
        if row["pages_failed"]:
            failed[run_id] = row["pages_failed"]
    count = sum(failed.values())
    shown = _("{n} of {total} pages").format(n=count, total=total)
    if failed:
        shown += " (" + ", ".join(f"{run}: {n}" for run, n in failed.items()) + ")"
        return _verdict(key, title, threshold, runs, value=count, measured=shown, passed=False)
    if missing or not runs:
        return _verdict(key, title, threshold, runs, measured=shown if total else None,
                        why="; ".join(missing) or _("no run in this check"))
    return _verdict(key, title, threshold, runs, value=0, measured=shown, passed=True)


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target, in a fixed order, whatever ran: one verdict each."""
    check = _Check(report)
    qwen, qwen_range = BASELINE_MODEL, f"{BASELINE_MODEL}-range"
    at_least_pages = _("≥ {n} pages/s")
    verdicts = [
        _one_figure(check, "qwen_vl_2b_pages_per_s", _("qwen_vl_2b, 512 tokens/page"),
                    at_least_pages.format(n=f"{QWEN_PAGES_PER_S:g}"), qwen, "pages_per_s", ">=", QWEN_PAGES_PER_S,
                    TARGET_TOKENS, _pages_per_s),
        _one_figure(check, "qwen_vl_2b_range_pages_per_s", _("qwen_vl_2b, --tokens 256-1024"),
                    at_least_pages.format(n=f"{QWEN_PAGES_PER_S:g}"), qwen_range, "pages_per_s", ">=",
                    QWEN_PAGES_PER_S, TARGET_RANGE, _pages_per_s),
        _one_figure(check, "qwen_vl_2b_first_page_s", _("qwen_vl_2b, first page after the model is loaded"),
                    _("< {n} s").format(n=f"{QWEN_FIRST_PAGE_S:g}"), qwen, "first_page_after_load_s", "<",
                    QWEN_FIRST_PAGE_S, TARGET_TOKENS, lambda v: _("{n} s").format(n=f"{v:.2f}")),
    ]
    verdicts += [_against_generate(check, model) for model in AGAINST_GENERATE]
    verdicts += [
        _one_figure(check, f"{model}_pages_per_s", _("{model}, 512 tokens/page").format(model=model),
                    at_least_pages.format(n=f"{DEEPSEEK_PAGES_PER_S:g}"), model, "pages_per_s", ">=",
                    DEEPSEEK_PAGES_PER_S, TARGET_TOKENS, _pages_per_s)
        for model in ("deepseek_ocr", "deepseek_ocr2")]
    verdicts.append(_one_figure(
        check, "qwen_vl_2b_percent_of_limit", _("qwen_vl_2b roofline: % of limit"),
        _("≥ {n} % (within 40 % of the limit)").format(n=f"{ROOFLINE_PERCENT:g}"), qwen, "percent_of_limit", ">=",
        ROOFLINE_PERCENT, TARGET_TOKENS, lambda v: f"{v:.1f} %"))
    verdicts += [_idle(check), _failed_pages(check)]
    return verdicts


def count(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    return {PASS: sum(v["verdict"] == PASS for v in verdicts), FAIL: sum(v["verdict"] == FAIL for v in verdicts),
            UNMEASURED: sum(v["verdict"] == UNMEASURED for v in verdicts),
            "failed": [v["key"] for v in verdicts if v["verdict"] == FAIL]}
