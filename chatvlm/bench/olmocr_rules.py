"""olmOCR-bench unit tests ("rules"), decided as olmOCR-bench decides them.

A `<stem>.rules.jsonl` beside an input holds one rule per line, in olmOCR-bench's format
(`type`, `page`, `id`, `max_diffs`, and the type's own fields). Each rule is run on the
page's markdown. Text is first put in olmOCR-bench's normal form (textnorm, style
"olmocr"); matching uses the same libraries and thresholds as olmOCR-bench:

- present / absent: rapidfuzz `partial_ratio` of the text against the page, passing at
  `1 - max_diffs / len(text)` or better (`case_sensitive`, `first_n`, `last_n` honoured);
  a page shorter than `len(text) - max_diffs` cannot hold the text at all.
- order: fuzzysearch `find_near_matches` of `before` and `after` within `max_diffs`
  (Levenshtein) edits; passes when some `before` match starts before some `after` match.
- table: olmocr_tables (cell and its neighbours, markdown and HTML tables).
- math: the LaTeX between \\( \\), \\[ \\], $$ $$ or $ $ on the page. olmOCR-bench passes an
  exact match, else renders both and compares the pictures; we compare a normalised
  token form of the LaTeX instead (no browser), which can fail a formula olmOCR-bench
  would pass when the two spell the same picture differently.
- format (heading / bold / italic), footnote, baseline (not blank, no run-away repeat,
  no CJK or emoji characters).

A rule olmOCR-bench would refuse to load (empty text, `max_diffs` too large, ...) is
"unsupported" here, with the reason, and is not counted in the pass rate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

from ..textnorm import markdown_to_text
from .olmocr_tables import check_table
from .olmocr_text import RuleError, fuzzy_threshold, normalize_text, rule_max_diffs

SUPPORTED_RULES = ("present", "absent", "order", "table", "math", "format", "footnote", "baseline")


def _required_text(rule: dict[str, Any], key: str) -> str:
    text = normalize_text(rule.get(key))
    if not text.strip():
        raise RuleError(f"'{key}' is empty")
    return text


def _partial_ratio(query: str, content: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.partial_ratio(query, content) / 100.0


# --------------------------------------------------------------------------- present / absent / order

def check_presence(rule: dict[str, Any], page: str) -> tuple[bool, str]:
    query, content, max_diffs = _required_text(rule, "text"), normalize_text(page), rule_max_diffs(rule)
    present_rule = rule.get("type") == "present"
    if not rule.get("case_sensitive", True):
        query, content = query.lower(), content.lower()
    first_n, last_n = rule.get("first_n"), rule.get("last_n")
    if first_n and last_n:
        content = content[:first_n] + content[-last_n:]
    elif first_n:
        content = content[:first_n]
    elif last_n:
        content = content[-last_n:]
    # partial_ratio scores against the shorter string: a near-empty page would "contain"
    # any text with a space in it. Too short to hold the text is an answer already.
    if len(content) < len(query) - max_diffs:
        if present_rule:
            return False, f"page too short ({len(content)} characters) to contain {query[:40]!r}"
        return True, ""
    threshold = fuzzy_threshold(max_diffs, query)
    ratio = _partial_ratio(query, content)
    if present_rule:
        if ratio >= threshold:
            return True, ""
        return False, f"not found: {query[:60]!r} (best match {ratio:.3f}, needs {threshold:.3f})"
    if ratio < threshold:
        return True, ""
    return False, f"should be absent: {query[:60]!r} (match {ratio:.3f}, threshold {threshold:.3f})"


def check_order(rule: dict[str, Any], page: str) -> tuple[bool, str]:
    from fuzzysearch import find_near_matches

    before, after, max_diffs = _required_text(rule, "before"), _required_text(rule, "after"), rule_max_diffs(rule)
    if max_diffs > len(before) // 2 or max_diffs > len(after) // 2:
        raise RuleError("max_diffs is more than half of the 'before' or 'after' text")
    content = normalize_text(page)
    starts_before = [m.start for m in find_near_matches(before, content, max_l_dist=max_diffs)]
    starts_after = [m.start for m in find_near_matches(after, content, max_l_dist=max_diffs)]
    if not starts_before:
        return False, f"'before' text not found: {before[:40]!r}"
    if not starts_after:
        return False, f"'after' text not found: {after[:40]!r}"
    if min(starts_before) < max(starts_after):
        return True, ""
    return False, f"{before[:40]!r} does not come before {after[:40]!r}"


# --------------------------------------------------------------------------- math

_MATH_DELIMITERS = [re.compile(r"\\\((.+?)\\\)", re.S), re.compile(r"\\\[(.+?)\\\]", re.S)]
_DOLLAR_DELIMITERS = [re.compile(r"\$\$(.+?)\$\$", re.S), re.compile(r"\$(.+?)\$", re.S)]
_LATEX_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\S")
# Commands that change spacing or size but not which symbols are drawn where.
_LATEX_INVISIBLE = {"\\left", "\\right", "\\displaystyle", "\\textstyle", "\\,", "\\;", "\\:", "\\!",
                    "\\ ", "\\quad", "\\qquad", "\\big", "\\Big", "\\bigg", "\\Bigg"}
_LATEX_SAME = {"\\dfrac": "\\frac", "\\tfrac": "\\frac", "\\to": "\\rightarrow", "\\le": "\\leq", "\\ge": "\\geq"}


def page_equations(page: str, dollars: bool = True) -> list[str]:
    """The LaTeX of every delimited formula on the page; each kind is cut out once found,
    so `$$x$$` is not found again as two `$` formulas."""
    found: list[str] = []
    rest = page
    for pattern in _MATH_DELIMITERS + (_DOLLAR_DELIMITERS if dollars else []):
        found += [m.strip() for m in pattern.findall(rest)]
        rest = pattern.sub("", rest)
    return found


def latex_key(latex: str) -> tuple[str, ...]:
    """LaTeX as tokens, without spacing commands and without braces around one token, so
    `a^{2} + b` and `a^2+b` are the same formula."""
    tokens = [_LATEX_SAME.get(t, t) for t in _LATEX_TOKEN.findall(latex) if t not in _LATEX_INVISIBLE]
    changed = True
    while changed:
        changed = False
        for i in range(len(tokens) - 2):
            if tokens[i] == "{" and tokens[i + 2] == "}" and tokens[i + 1] not in "{}":
                del tokens[i + 2], tokens[i]
                changed = True
                break
    return tuple(tokens)


def check_math(rule: dict[str, Any], page: str) -> tuple[bool, str]:
    math = rule.get("math") or ""
    if not math.strip():
        raise RuleError("'math' is empty")
    equations = page_equations(page, dollars=not rule.get("ignore_dollar_delimited", False))
    if math in equations:
        return True, ""
    key = latex_key(math)
    if any(latex_key(eq) == key for eq in equations):
        return True, ""
    return False, f"formula not found: {math[:60]!r} ({len(equations)} formulas on the page)"


# --------------------------------------------------------------------------- format / footnote / baseline

_FORMAT_PATTERNS = {
    "heading": [(r"^#{1,6}\s+(.+?)$", re.M), (r"<h[1-6][^>]*>(.*?)</h[1-6]>", re.I | re.S)],
    "bold": [(r"\*\*(.*?)\*\*", re.S), (r"__(.*?)__", re.S), (r"<b[^>]*>(.*?)</b>", re.I | re.S),
             (r"<strong[^>]*>(.*?)</strong>", re.I | re.S)],
    "italic": [(r"(?<!\*)\*(?!\*)(.*?)(?<!\*)\*(?!\*)", re.S), (r"(?<!_)_(?!_)(.*?)(?<!_)_(?!_)", re.S),
               (r"<i[^>]*>(.*?)</i>", re.I | re.S), (r"<em[^>]*>(.*?)</em>", re.I | re.S)],
}


def check_format(rule: dict[str, Any], page: str) -> tuple[bool, str]:
    text, max_diffs, kind = _required_text(rule, "text"), rule_max_diffs(rule), rule.get("format")
    if kind not in _FORMAT_PATTERNS:
        raise RuleError(f"format must be heading, bold or italic, got {kind!r}")
    spans = [normalize_text(s) for pattern, flags in _FORMAT_PATTERNS[kind] for s in re.findall(pattern, page, flags)]
    if not rule.get("case_sensitive", True):
        text, spans = text.lower(), [s.lower() for s in spans]
    threshold = fuzzy_threshold(max_diffs, text)
    if any(_partial_ratio(text, span) >= threshold for span in spans):
        return True, ""
    return False, f"{text[:40]!r} not found with {kind} formatting ({len(spans)} {kind} spans on the page)"


_SUPERSCRIPT_DIGITS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _alnum_lower(text: str) -> str:
    return "".join(c for c in normalize_text(text) if c.isalnum()).lower()


def check_footnote(rule: dict[str, Any], page: str) -> tuple[bool, str]:
    marker, max_diffs = str(rule.get("marker") or ""), rule_max_diffs(rule)
    if not marker or " " in marker:
        raise RuleError("'marker' must be given, without spaces")
    spans = [(m.start(), m.end()) for m in re.finditer(rf"\[\^{re.escape(marker)}\](?!:)", page)]
    spans += [(m.start(), m.end()) for m in re.finditer(rf"<sup[^>]*>{re.escape(marker)}</sup>", page, re.I)]
    if marker.isdigit() and marker.isascii():
        spans += [(m.start(), m.end()) for m in re.finditer(re.escape(marker.translate(_SUPERSCRIPT_DIGITS)), page)]
    if not spans:
        return False, f"footnote marker {marker!r} not found"
    problems = []
    for key, side in (("appears_before_marker", "before"), ("appears_after_marker", "after")):
        wanted = rule.get(key)
        if not wanted:
            continue
        if not normalize_text(wanted).strip():
            raise RuleError(f"'{key}' is empty")
        target, threshold = _alnum_lower(wanted), fuzzy_threshold(max_diffs, normalize_text(wanted))
        found = False
        for start, end in spans:
            nearby = _alnum_lower(page[max(0, start - 200):start] if side == "before" else page[end:end + 200])
            if not nearby:
                continue
            width = min(len(nearby), len(target) * 2)
            window = nearby[-width:] if side == "before" else nearby[:width]
            if _partial_ratio(target, window) >= threshold:
                found = True
                break
        if not found:
            problems.append(f"{wanted[:40]!r} not found {side} marker {marker!r}")
    return (False, "; ".join(problems)) if problems else (True, "")


_DISALLOWED = re.compile("[\u4e00-\u9fff\u3040-\u309f\u30a0-\u30ff\U0001f600-\U0001f64f"
                         "\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff\U0001f1e0-\U0001f1ff]")


def tail_repeats(text: str, longest: int = 5) -> list[int]:
    """For n = 1..longest: how many times the last n characters repeat back to back at the
    end of the text, whitespace runs counted as one space (a generation stuck in a loop
    ends in a long run). 0 where the text is shorter than n."""
    text = re.sub(r"\s+", " ", text)
    counts = []
    for n in range(1, longest + 1):
        tail, count, end = text[-n:], 0, len(text)
        while len(text) >= n and end - n >= 0 and text[end - n:end] == tail:
            count, end = count + 1, end - n
        counts.append(count)
    return counts


def check_baseline(rule: dict[str, Any], page: str) -> tuple[bool, str]:
    alnum = sum(c.isalnum() for c in page)
    max_length = rule.get("max_length")
    if max_length is not None:       # a page that should be blank
        counted = re.sub(r"!\[.*?\]\(.*?\)", "", page) if rule.get("max_length_skips_image_alt_tags") else page
        alnum = sum(c.isalnum() for c in counted)
        return (True, "") if alnum <= max_length else (False, f"{alnum} characters on a page expected blank")
    if alnum == 0:
        return False, "no letters or digits on the page"
    max_repeats = rule.get("max_repeats", 30)
    for n, count in enumerate(tail_repeats(page), start=1):
        if count > max_repeats:
            return False, f"the page ends with {count} repeats of its last {n} characters"
    disallowed = _DISALLOWED.findall(page)
    if rule.get("check_disallowed_characters", True) and disallowed:
        return False, f"characters outside the expected scripts: {''.join(disallowed[:10])!r}"
    return True, ""


# --------------------------------------------------------------------------- running rules

_CHECKS: dict[str, Callable[[dict[str, Any], str], tuple[bool, str]]] = {
    "present": check_presence, "absent": check_presence, "order": check_order, "table": check_table,
    "math": check_math, "format": check_format, "footnote": check_footnote, "baseline": check_baseline,
}


def check_rule(rule: dict[str, Any], markdown: Optional[str]) -> tuple[str, str]:
    """Run one olmOCR-bench rule on a page's markdown: ("pass" | "fail" | "unsupported", why)."""
    kind = rule.get("type")
    check = _CHECKS.get(kind)
    if check is None:
        return "unsupported", f"rule type '{kind}' is not scored by chatvlm bench"
    try:
        passed, why = check(rule, markdown or "")
    except RuleError as exc:
        return "unsupported", f"invalid {kind} rule: {exc}"
    return ("pass" if passed else "fail"), why


def load_rules(path: Path) -> list[dict[str, Any]]:
    """The rules of a .rules.jsonl file; a line that is not JSON becomes an "invalid" rule."""
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
