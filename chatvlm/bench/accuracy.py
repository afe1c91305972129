"""Accuracy of one model's pages: CER / WER against transcripts, olmOCR-bench rule pass rates.

Ground truth sits next to an input, by stem:
  - `<stem>.txt` / `<stem>.md`: CER and WER on normalised text (metrics.normalise). A
    single-page input is scored per page; a multi-page input's ground truth covers the
    whole document, so it is scored on the pages joined, only when every page ran. A page
    that failed counts as empty output.
  - `<stem>.rules.jsonl`: olmOCR-bench rules (olmocr_rules), each on its page's markdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..records import PageResult
from .metrics import case_insensitive_for, error_rates, normalise, strip_markdown
from .olmocr_rules import check_rule, load_rules

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
        from ..records import STAGES
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




def accuracy_over_repeats(records_by_repeat: list[list[PageRecord]], ignore_case: str) -> dict[str, Any]:
    """One model's accuracy: every repeat scored, figures summed over the repeats."""
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
