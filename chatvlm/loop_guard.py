"""Model-agnostic loop guard, and the anti-repetition settings models ship with.

OCR VLMs fall into repeating themselves on dotted lines, tables and blank forms and
then generate until `max_new_tokens` (every model in chatvlm does it: see the
reference notes). Three pieces, usable on their own:

- `find_token_loop(ids)`: pure, on a list of generated token ids. A loop is a tail that
  repeats one block of `period` tokens at least `min_repeats` times and spans at least
  `min_span` tokens. The thresholds are deliberately high (a real loop runs to the token
  budget; a legitimate table or dotted leader rarely repeats one exact block 256 tokens
  long), so the guard costs at most a few hundred wasted tokens and never cuts real text.
- `GenerationTracker`: a transformers `StoppingCriteria` that follows every row of a
  batch: it records where each row ended and why ("stop" on a stop token or stop string,
  "loop" when `find_token_loop` fires), and stops that row only (per-row bool result).
- `trim_repetition(text)`: pure, cuts a repeated tail from decoded text (keeps one copy),
  also catching repeated lines whose tokenisation differs slightly.

Forms and tables repeat for real: a blank form has twenty identical empty table rows,
a ledger page forty `<tr><td></td><td></td></tr>`, a contents page dotted leaders, a
page of lines to write on `________`. So a repeat made only of markup (HTML/markdown/
LaTeX table syntax, separators such as `---`, `___`, `...`, and whitespace; see
`is_markup_only`) is a loop only when it runs far longer than any page holds
(`MARKUP_MIN_REPEATS` copies; a near-periodic markup tail `2 * MARKUP_MIN_SPAN` tokens),
in the spirit of
DeepSeek-OCR exempting `<td>`/`</td>` from its n-gram ban; a model stuck emitting empty
rows is still stopped, after at most a page's worth of them. A repeat with any letter or
digit in it (the same sentence, a table row with text) keeps the ordinary thresholds: an
identical row of text 8+ times over 256+ tokens does not happen on a real page, so 50
copies of it are a loop.

Plus the models' own settings: `WindowedNoRepeatNGram` (DeepSeek-OCR's windowed,
whitelisted n-gram ban, batch-safe), `NoRepeatNGramRows` (transformers' whole-sequence
`no_repeat_ngram_size` ban on chosen rows of a batch: GOT-OCR2 uses it on single-view
pages only) and `PaddingSafeRepetitionPenalty` (transformers' repetition penalty, but
ignoring left padding so batched == single-page runs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

# Defaults for the token-level detector.
MIN_REPEATS = 8          # copies of the block
MIN_SPAN = 256           # tokens covered by the repeated tail
MAX_PERIOD = 128         # longest block looked for (a table row / a line)
CHECK_EVERY = 8          # run the detector every N generated tokens (cheap, stops at most N-1 late)
MAX_DISTINCT = 3         # ... or the last 2*MIN_SPAN tokens use at most this many distinct ids
                         # (near-periodic loops, e.g. when an n-gram ban breaks the exact period)

# Defaults for the text-level trimmer.
TEXT_MIN_REPEATS = 6
TEXT_MIN_SPAN = 200      # characters
TEXT_MAX_PERIOD = 600    # characters
LINE_MIN_REPEATS = 8     # the same line (after whitespace normalisation) this many times in a row

# Repeats made only of markup (empty table rows, separators, whitespace): a loop only far
# beyond what one page holds (an A4 page has at most ~60 lines or table rows).
MARKUP_MIN_REPEATS = 100
MARKUP_MIN_SPAN = 1024   # tokens: the near-periodic check then looks at 2 * this many

# Markup that carries no text: table tags (HTML), LaTeX table commands, HTML entities for
# spaces; what is left must be separators, table punctuation or whitespace.
_MARKUP_TAGS = re.compile(
    r"</?(?:table|thead|tbody|tfoot|tr|td|th|br|hr|p|div|span|colgroup|col)\b[^<>]*>"
    r"|\\(?:hline|midrule|toprule|bottomrule|cline\{[^}]*\}|\\|newline)"
    r"|&nbsp;|&#160;", re.IGNORECASE)
_MARKUP_CHARS = set(" \t\r\n|-:+=_.*~&/\\\u00a0\u00b7\u2026\u2013\u2014\u2500\u2502\u2012\u2015")


@dataclass(frozen=True)
class Loop:
    start: int           # index where the repeated region starts (first copy)
    period: int          # block length
    repeats: float       # copies in the tail (may end in a partial copy)

    @property
    def keep(self) -> int:
        """Length to keep: everything before the loop plus one copy of the block."""
        return self.start + self.period


def _tail_loop(seq: Sequence, max_period: int, min_repeats: float, min_span: int) -> Optional[Loop]:
    """Longest periodic tail of `seq` (any sequence supporting == on items), or None."""
    import numpy as np

    n = len(seq)
    if n < min_span:
        return None
    arr = np.asarray(seq)
    best: Optional[Loop] = None
    for period in range(1, min(max_period, n // 2) + 1):
        # trailing run of positions i with arr[i] == arr[i - period]
        eq = arr[period:] == arr[:-period]
        if not eq[-1]:
            continue
        bad = np.flatnonzero(~eq)
        run = len(eq) - (bad[-1] + 1) if bad.size else len(eq)
        span = run + period
        repeats = span / period
        if repeats >= min_repeats and span >= min_span:
            start = n - span
            if best is None or start < best.start:
                best = Loop(start=start, period=period, repeats=repeats)
    return best


def _low_diversity(tail: Sequence, span: int, max_distinct: int) -> Optional[Loop]:
    if max_distinct <= 0 or len(tail) < span:
        return None
    window = tail[-span:]
    if len(set(int(t) for t in window)) <= max_distinct:
        return Loop(start=len(tail) - span, period=0, repeats=0.0)
    return None


def is_markup_only(text: str) -> bool:
    """True when `text` (a repeated stretch of output) holds no words or numbers: only table
    markup (HTML tags, markdown pipes and rules, LaTeX `&`, `\\\\`, `\\hline`), separators
    (`-`, `_`, `.`, `=`, `*`, `…`, `—`, box-drawing lines) and whitespace. A tag cut at either
    end of the stretch (the repeat can start anywhere in a row) is ignored."""
    text = re.sub(r"^[^<>]*>", "", text)         # the tail of a tag cut at the start
    text = re.sub(r"<[^<>]*$", "", text)         # the head of a tag cut at the end
    text = _MARKUP_TAGS.sub("", text)
    return all(c in _MARKUP_CHARS for c in text)


def _find_loop(ids: Sequence[int], min_repeats: int, min_span: int, max_period: int,
               max_distinct: int, diversity_span: Optional[int] = None) -> Optional[Loop]:
    diversity_span = diversity_span or 2 * min_span
    window = max(max_period * max(min_repeats, 2) + min_span, diversity_span)
    tail = list(ids[-window:]) if len(ids) > window else list(ids)
    loop = _tail_loop(tail, max_period, min_repeats, min_span) or _low_diversity(tail, diversity_span, max_distinct)
    if loop is None:
        return None
    offset = len(ids) - len(tail)
    return Loop(start=loop.start + offset, period=loop.period, repeats=loop.repeats)


def markup_window(max_period: int = MAX_PERIOD, markup_min_repeats: int = MARKUP_MIN_REPEATS,
                  markup_min_span: int = MARKUP_MIN_SPAN) -> int:
    """How many trailing tokens find_token_loop needs to judge a markup-only repeat."""
    return max(max_period * markup_min_repeats + markup_min_span, 2 * markup_min_span)


def find_token_loop(ids: Sequence[int], *, min_repeats: int = MIN_REPEATS, min_span: int = MIN_SPAN,
                    max_period: int = MAX_PERIOD, max_distinct: int = MAX_DISTINCT,
                    decode: Optional[Callable[[list[int]], str]] = None,
                    markup_min_repeats: int = MARKUP_MIN_REPEATS,
                    markup_min_span: int = MARKUP_MIN_SPAN) -> Optional[Loop]:
    """A repetition loop at the end of `ids` (generated token ids), or None.

    Exact: a block of <= max_period tokens repeated >= min_repeats times over >= min_span
    tokens. Near-periodic: the last 2*min_span tokens use <= max_distinct distinct ids.
    A near-periodic loop has period 0 (no block to keep; trim the text instead).
    With `decode` (token ids -> text), a repeat whose text is markup only (empty table
    rows, separators, whitespace: `is_markup_only`) must reach markup_min_repeats copies,
    or for a near-periodic tail 2*markup_min_span tokens (pass `markup_window()` ids).
    """
    loop = _find_loop(ids, min_repeats, min_span, max_period, max_distinct)
    if loop is None or decode is None:
        return loop
    # The repeated stretch: the periodic tail, or for a near-periodic loop its latest
    # half (the window's start may still hold the text the repeat followed).
    stretch = ids[loop.start:] if loop.period else ids[len(ids) - min_span:]
    if not is_markup_only(decode([int(i) for i in stretch])):
        return loop
    return _find_loop(ids, max(min_repeats, markup_min_repeats), min_span, max_period, max_distinct,
                      diversity_span=2 * max(min_span, markup_min_span))


def _trim_lines(text: str, min_repeats: int) -> Optional[str]:
    lines = text.split("\n")
    # drop a trailing partial line before counting
    if len(lines) < min_repeats:
        return None
    norm = [" ".join(line.split()) for line in lines]
    end = len(norm) - 1
    # the last line may be a cut-off copy of the repeated line
    if norm[end] and end > 0 and norm[end - 1].startswith(norm[end]) and norm[end] != norm[end - 1]:
        end -= 1
    while end > 0 and not norm[end]:
        end -= 1
    target = norm[end]
    if not target:
        return None
    count, i, first = 0, end, end
    while i >= 0:
        if norm[i] == target:
            count += 1
            first = i
        elif norm[i]:            # blank lines between copies are allowed
            break
        i -= 1
    if count < min_repeats or (is_markup_only(target) and count < max(min_repeats, MARKUP_MIN_REPEATS)):
        return None
    return "\n".join(lines[: first + 1])


def trim_repetition(text: str, *, min_repeats: int = TEXT_MIN_REPEATS, min_span: int = TEXT_MIN_SPAN,
                    max_period: int = TEXT_MAX_PERIOD, line_repeats: int = LINE_MIN_REPEATS) -> tuple[str, bool]:
    """Cut a repeated tail from decoded text, keeping one copy. Returns (text, trimmed).

    A tail repeating markup only (`is_markup_only`: empty table rows, separators) is cut
    only past MARKUP_MIN_REPEATS copies.
    """
    if not text:
        return text, False
    chars = [ord(c) for c in text]
    loop = _tail_loop(chars, max_period, min_repeats, min_span)
    if loop is not None and is_markup_only(text[loop.start:]):
        loop = _tail_loop(chars, max_period, max(min_repeats, MARKUP_MIN_REPEATS), min_span)
    if loop is not None:
        kept = text[: loop.keep].rstrip()
        return kept, True
    kept_lines = _trim_lines(text, line_repeats)
    if kept_lines is not None and len(kept_lines) < len(text):
        return kept_lines.rstrip(), True
    return text, False


class GenerationTracker:
    """Per-row bookkeeping of a batched `generate` call, as a transformers StoppingCriteria.

    Records for each row the number of generated tokens (stop token included) and the
    reason it ended: "stop" (a stop token, or a stop string in the decoded tail),
    "loop" (the loop guard fired; the row is stopped early), else "length" at the end.
    Rows are left-padded, so every row's generated tokens start at `prompt_len`.
    `row_limits` (optional, one per row) ends a row at its own token count ("length"), so
    rows of one batch can stop at different lengths (bench --synthetic --tokens A-B).
    With `decode`, a repeat made only of markup (empty table rows, separators) is judged
    by the longer markup thresholds (find_token_loop), so real forms and tables go on.
    """

    def __init__(self, prompt_len: int, batch_size: int, stop_ids: Iterable[int] = (),
                 stop_strings: Iterable[str] = (), decode=None, loop_guard: bool = True,
                 min_repeats: int = MIN_REPEATS, min_span: int = MIN_SPAN, max_period: int = MAX_PERIOD,
                 check_every: int = CHECK_EVERY, max_distinct: int = MAX_DISTINCT,
                 row_limits: Optional[Sequence[int]] = None):
        self.prompt_len = prompt_len
        if row_limits is not None and len(row_limits) != batch_size:
            raise ValueError(f"row_limits has {len(row_limits)} entries for a batch of {batch_size}")
        self.row_limits = [int(n) for n in row_limits] if row_limits is not None else None
        self.stop_ids = set(int(i) for i in stop_ids)
        self.stop_strings = [s for s in stop_strings if s]
        self.decode = decode
        self.loop_guard = loop_guard
        self.min_repeats, self.min_span, self.max_period = min_repeats, min_span, max_period
        self.max_distinct = max_distinct
        self.check_every = max(1, check_every)
        self.ends: list[Optional[int]] = [None] * batch_size
        self.reasons: list[Optional[str]] = [None] * batch_size
        self.loops: list[Optional[Loop]] = [None] * batch_size
        self._tail_len = max((len(s) for s in self.stop_strings), default=0) + 8

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        gen = input_ids[:, self.prompt_len:]
        steps = gen.shape[1]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if steps == 0:
            return done
        last = gen[:, -1].tolist()
        check_loop = self.loop_guard and steps >= self.min_span and steps % self.check_every == 0
        rows_cpu = None
        for row, token in enumerate(last):
            if self.ends[row] is not None:
                done[row] = True
                continue
            if token in self.stop_ids:
                self.ends[row], self.reasons[row] = steps, "stop"
            elif self.stop_strings and self.decode is not None:
                tail = self.decode(gen[row, -self._tail_len:].tolist())
                if any(s in tail for s in self.stop_strings):
                    self.ends[row], self.reasons[row] = steps, "stop"
            if self.ends[row] is None and check_loop:
                if rows_cpu is None:
                    window = max(self.max_period * max(self.min_repeats, 2) + self.min_span, 2 * self.min_span)
                    rows_cpu = gen[:, -window:].cpu().numpy()
                loop = find_token_loop(rows_cpu[row], min_repeats=self.min_repeats, min_span=self.min_span,
                                       max_period=self.max_period, max_distinct=self.max_distinct)
                if loop is not None and self.decode is not None:
                    # Markup only? Then judge it on the longer window the markup rule needs.
                    longer = gen[row, -markup_window(self.max_period):].cpu().numpy()
                    loop = find_token_loop(longer, min_repeats=self.min_repeats, min_span=self.min_span,
                                           max_period=self.max_period, max_distinct=self.max_distinct,
                                           decode=self.decode)
                if loop is not None:
                    self.ends[row], self.reasons[row] = steps, "loop"
                    self.loops[row] = loop
            if self.ends[row] is None and self.row_limits is not None and steps >= self.row_limits[row]:
                self.ends[row], self.reasons[row] = self.row_limits[row], "length"
            if self.ends[row] is not None:
                done[row] = True
        return done

    def result(self, row: int, generated: int) -> tuple[int, str]:
        """(number of generated tokens of this row, finish reason) after generate returned."""
        if self.ends[row] is not None:
            return self.ends[row], self.reasons[row]
        return generated, "length"


def _stopping_criteria_base():
    from transformers import StoppingCriteria
    return StoppingCriteria


def make_tracker(*args, **kwargs) -> "GenerationTracker":
    """A GenerationTracker that is also a transformers StoppingCriteria instance."""
    base = _stopping_criteria_base()
    cls = type("GenerationTrackerCriteria", (GenerationTracker, base), {})
    return cls(*args, **kwargs)


class WindowedNoRepeatNGram:
    """DeepSeek-OCR's windowed no-repeat n-gram ban (process/ngram_norepeat.py), batch-safe.

    Within the last `window_size` generated tokens, a token that would complete an
    n-gram already seen is banned, except whitelisted ids (DeepSeek: <td>, </td>).
    Only generated tokens count (all rows share `prompt_len` under left padding).
    """

    row_independent = True      # no per-row state: a compacted batch (chatvlm.engine.decoder) can reuse it

    def __init__(self, ngram_size: int, window_size: int, prompt_len: int, whitelist: Iterable[int] = ()):
        self.n, self.w, self.prompt_len = int(ngram_size), int(window_size), int(prompt_len)
        self.whitelist = set(int(i) for i in whitelist)

    def banned_tokens(self, seq: Sequence[int]) -> set[int]:
        n = self.n
        if len(seq) < n:
            return set()
        prefix = tuple(seq[len(seq) - (n - 1):]) if n > 1 else ()
        banned = set()
        for i in range(max(0, len(seq) - self.w), len(seq) - n + 1):
            if tuple(seq[i:i + n - 1]) == prefix:
                banned.add(seq[i + n - 1])
        return banned - self.whitelist

    def __call__(self, input_ids, scores):
        gen = input_ids[:, self.prompt_len:]
        if gen.shape[1] < self.n:
            return scores
        for row, seq in enumerate(gen[:, -(self.w + self.n):].tolist()):
            banned = self.banned_tokens(seq)
            if banned:
                scores[row, sorted(banned)] = float("-inf")
        return scores


class NoRepeatNGramRows:
    """transformers' `NoRepeatNGramLogitsProcessor` (what `no_repeat_ngram_size=N` does in
    `generate`) applied to the rows of a batch where `enabled[row]` is True.

    The ban looks at each row's own tokens only (no state between steps), so restricting
    it to some rows, or to the rows left after chatvlm.engine.decoder compacts a batch
    (`select_rows`), gives every row what it would get alone.
    """

    def __init__(self, ngram_size: int, enabled: Sequence[bool]):
        from transformers import NoRepeatNGramLogitsProcessor

        self.ngram_size = int(ngram_size)
        self.enabled = [bool(e) for e in enabled]
        self.ban = NoRepeatNGramLogitsProcessor(self.ngram_size)

    def select_rows(self, rows: Sequence[int]) -> "NoRepeatNGramRows":
        return NoRepeatNGramRows(self.ngram_size, [self.enabled[r] for r in rows])

    def __call__(self, input_ids, scores):
        if all(self.enabled):
            return self.ban(input_ids, scores)
        rows = [i for i, on in enumerate(self.enabled) if on]
        if not rows:
            return scores
        scores = scores.clone()
        scores[rows] = self.ban(input_ids[rows], scores[rows])
        return scores


class PaddingSafeRepetitionPenalty:
    """transformers' repetition penalty (CTRL rule) that ignores left padding.

    The stock processor penalises every id in `input_ids`, pad tokens included, so a
    padded row in a batch is penalised differently from the same page run alone (the
    Qwen pad token is also a stop token). Here pad positions count as the row's first
    real token, which is penalised anyway.
    """

    def __init__(self, penalty: float, pad_lengths: Sequence[int]):
        self.penalty = float(penalty)
        self.pad_lengths = list(pad_lengths)

    def select_rows(self, rows: Sequence[int]) -> "PaddingSafeRepetitionPenalty":
        """The same penalty for a batch made of these original rows (chatvlm.engine.decoder compaction)."""
        return PaddingSafeRepetitionPenalty(self.penalty, [self.pad_lengths[r] for r in rows])

    def __call__(self, input_ids, scores):
        import torch

        if self.penalty == 1.0:
            return scores
        batch, length = input_ids.shape
        pads = torch.tensor(self.pad_lengths, device=input_ids.device).clamp(max=length - 1)
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0)
        first_real = input_ids.gather(1, pads.unsqueeze(1))
        ids = torch.where(positions >= pads.unsqueeze(1), input_ids, first_real)
        vocab = scores.shape[-1]
        ids = ids.clamp(max=vocab)
        padded = torch.nn.functional.pad(scores, (0, 1))
        score = padded.gather(1, ids)
        score = torch.where(score < 0, score * self.penalty, score / self.penalty)
        return padded.scatter(1, ids, score)[..., :vocab]


def as_logits_processor(obj):
    """Wrap one of the callables above as a transformers LogitsProcessor instance."""
    from transformers import LogitsProcessor

    class _Wrapped(LogitsProcessor):
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, input_ids, scores):
            return self.inner(input_ids, scores)

    return _Wrapped(obj)
