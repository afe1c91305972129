"""Continuous batching: a finished row's cache slot is refilled with the next request.

The static decoder (`chatvlm.engine.decoder.StaticDecoder`) holds a slot cache
`[layers, slots, kv_heads, length, head_dim]`; every row has its own position, its own
write slot and its own key mask, so rows at different lengths decode together in one
step. The engine runs that step and keeps the slots busy:

1. **Admission.** While slots are free and requests wait, the next requests (as many as
   there are free slots, at most `refill_chunk`, and at most `prefill_tokens` prompt tokens
   counting padding, at least one: `chatvlm.engine.admission`) are prepared by the backend
   (`prepare`: the model's inputs and `generate` arguments) and prefilled by the model's
   own prefill (`StaticDecoder._prefill`: vision encoder, language-model prefill, first
   token). Their prompt KV is copied into the lowest free slots (`StaticDecoder.load_rows`);
   a request that ends on its first token never takes a slot. While rows are decoding,
   the prefills between two of their steps take `prefill_tokens` in all (the last one may
   go over by one request), so a refill of many long prompts does not stall them for long;
   with no row decoding, prefills follow one another.
2. **Decode.** One step for rows `[:b]`, b = the highest busy slot + 1 (on CUDA the next
   captured batch size); free slots inside `[:b]` compute a throw-away row and do not
   advance. Logits processors run per row on the row's own sequence (the processors the
   backend made for its group, restricted to the row), so a row is processed exactly
   as it would be alone.
3. **Finishing.** Every `sync_every` steps (or when a row reaches its token budget) the
   new tokens go to the host and through each row's own stop tracker (EOS, stop strings,
   loop guard; `new_tracker()` makes one per request). A finished row is yielded at once
   and its slot is free for the next admission.
4. **Draining.** Once no request is left, busy rows above a free slot move down into it
   when that narrows the step (`_compact`).
5. **A stream's pace and its bad requests.** `hold(idle)`, where given, is asked before a
   new request is taken from the stream (requests taken earlier still go): True keeps the
   rows decoding without taking more (the consumer cannot keep up); with `idle` (no row
   decoding, none waiting) it waits until more may come and returns False. A `prepare`
   that raises `RequestError` blames its group's requests, not the engine: the group is
   prepared again one request at a time, and the one that still fails is yielded as
   `Failed` while the others run on.

LongRoPE (Phi-3) is exact per row, as each page decoded alone by transformers' `generate`:

- a prefill picks its factor set from its largest position (long iff the prompt is longer
  than the original context): a group is prefilled together only if all its prompts fall
  on the same side of the original context (else it is split, `admission.take_now`);
- a decode step rotates each row by its own position (long iff position + 1 > original;
  the decoder's `top_pos` stays 0, so no row follows its neighbours);
- when a row is about to feed position `original` (its sequence first outgrows the
  original context), transformers' Phi-3 drops the cache and re-runs the whole sequence
  with the long factors: the engine does the same for that row alone (`_recompute`: the
  request prepared again, its generated tokens appended, the model's own prefill, the new
  KV into the row's slot).

Greedy only. On any error the decoder's cache, graphs and pool are freed
before the error propagates (an out-of-memory error then reaches the caller's
split-and-retry with the memory returned).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from .decoder import select_processor_rows
from .graphs import batch_bucket
from .lm import Unsupported
from .rope import next_positions
from .admission import DEFAULT_PREFILL_TOKENS, fits, take_now
from .requests import Failed, Finished, Prepared, RequestError


@dataclass
class _Row:
    index: int
    request: Any
    tracker: Any
    processors: list
    prompt: Optional[torch.Tensor]   # the row's (padded) prompt ids, for processors
    input_tokens: int
    max_new: int
    produced: int = 1                # tokens generated so far (the prefill's first one included)


@dataclass
class EngineStats:
    prefills: int = 0                # prefill calls (the first fill and every refill)
    prepares: int = 0                # prepare calls (admissions, recomputes, a split group's part again)
    prefill_sizes: list = field(default_factory=list)   # (rows, rows x longest prompt) per prefill
    recomputes: int = 0              # LongRoPE: rows re-prefilled at the original context
    admitted: int = 0                # requests admitted
    steps: int = 0
    row_steps: int = 0               # sum over steps of rows computed
    busy_row_steps: int = 0          # ... of which rows that were decoding a request
    compactions: int = 0             # rows moved down once no request was left to refill with
    prefill_s: float = 0.0
    decode_s: float = 0.0


def continuous_unsupported(decoder) -> Optional[str]:
    """Why the engine cannot run on this decoder's model at all (None: it can). Every
    language model the static decoder serves qualifies."""
    return None


def extended_inputs(inputs: dict, generated: torch.Tensor) -> dict:
    """One request's prepared inputs with its generated ids appended to the prompt (the
    sequence transformers' Phi-3 re-runs at LongRoPE's crossing). Only `input_ids` and
    `attention_mask` run along the sequence; another input that does cannot be extended."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for name, value in inputs.items():
        if name not in ("input_ids", "attention_mask") and torch.is_tensor(value) and value.dim() >= 2 \
                and tuple(value.shape[:2]) == tuple(ids.shape):
            raise Unsupported(f"input {name!r} runs along the sequence: cannot recompute at LongRoPE's crossing")
    new = generated.to(ids.device, ids.dtype).view(1, -1).expand(ids.shape[0], -1)
    out = dict(inputs)
    out["input_ids"] = torch.cat([ids, new], dim=1)
    out["attention_mask"] = torch.cat([mask, mask.new_ones(new.shape)], dim=1)
    return out


class ContinuousEngine:
    """Greedy decoding of a stream of requests with `slots` rows kept busy."""

    def __init__(self, decoder, *, slots: int, prepare: Callable[[list], Prepared],
                 new_tracker: Callable[[Any], Any], max_new_tokens: int, max_positions: Optional[int] = None,
                 refill_chunk: Optional[int] = None, request_budget: Optional[Callable[[Any], Optional[int]]] = None,
                 prefill_tokens: Optional[int] = None, hold: Optional[Callable[[bool], bool]] = None):
        """`new_tracker(request)`: the request's own stop tracker (a batch of one);
        `request_budget(request)`: its own token count where it has one (bench --synthetic
        --tokens A-B), at most `max_new_tokens`; `prefill_tokens`: the most prompt tokens one
        prefill takes (rows x longest prompt; at least one request always goes)."""
        reason = continuous_unsupported(decoder)
        if reason:
            raise Unsupported(reason)
        if slots < 1 or max_new_tokens < 1:
            raise Unsupported(f"slots {slots} / max_new_tokens {max_new_tokens} < 1")
        self.decoder = decoder
        self.slots = int(slots)
        self.prepare = prepare
        self.new_tracker = new_tracker
        self.max_new = int(max_new_tokens)
        self.max_positions = max_positions
        self.refill_chunk = int(refill_chunk or slots)
        self.prefill_tokens = int(prefill_tokens or DEFAULT_PREFILL_TOKENS)
        self.request_budget = request_budget
        self.hold = hold
        self.stats = EngineStats()

    def run(self, requests: Iterable) -> Iterator[Finished]:
        """Finished requests, as they finish (not in input order); `Failed` ones too where
        `prepare` raises RequestError."""
        try:
            yield from self._run(requests)
        except BaseException:
            self.decoder.release()
            raise

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def _run(self, requests: Iterable) -> Iterator[Finished]:
        dec = self.decoder
        stream = enumerate(requests)
        self._free = list(range(self.slots))            # a heap: the lowest free slot first
        self._rows: dict[int, _Row] = {}
        self._gen = torch.zeros(self.slots, self.max_new, dtype=torch.long)   # host tokens per slot
        self._gen_dev: Optional[torch.Tensor] = None    # device copy, only for processors
        self._wpos = [0] * self.slots                   # host mirror of each slot's write slot
        self._pos = [0] * self.slots                    # host mirror of each slot's next position
        self._waiting: deque = deque()                  # requests taken from the stream, not admitted
        self._prompt_tokens: dict[int, int] = {}        # request index -> its prompt tokens, once prepared
        self._alone: set[int] = set()                   # request indices prepared one at a time (RequestError)
        self._live: Optional[torch.Tensor] = None       # [pool rows] 1 where a slot decodes
        original = dec.parts.longrope_original
        exhausted = False
        self._since_step = 0                            # prompt tokens prefilled since the last step
        pending: list[torch.Tensor] = []
        while True:
            # (pending is empty here whenever a row is at the crossing: reaching it forces a sync)
            crossing = [s for s in sorted(self._rows) if original and self._pos[s] == original]
            if crossing:
                yield from self._recompute(crossing)
                continue
            # admission needs the rows' tokens on the host (no pending steps)
            if self._free and (self._waiting or not exhausted) and not pending and self._prefill_budget() > 0:
                group, exhausted = self._next_group(stream, exhausted)
                if group:
                    yield from self._admit(group)
                    continue
            if not self._rows:
                if exhausted and not self._waiting:
                    return
                continue
            if exhausted and not self._waiting and not pending:
                self._compact()
            t0 = time.perf_counter()
            b = self._width(max(self._rows) + 1)
            filled = max(self._wpos[s] for s in self._rows) + 1
            logits = dec._run_step(b, filled)
            self._since_step = 0
            dec.stats.steps += 1
            dec.stats.row_steps += b
            self.stats.steps += 1
            self.stats.row_steps += b
            self.stats.busy_row_steps += len(self._rows)
            if any(row.processors for row in self._rows.values()):
                logits = logits.clone()
                for s, row in self._rows.items():
                    if row.processors:
                        seq = torch.cat([row.prompt, self._gen_dev[s, :row.produced]]).unsqueeze(0)
                        for proc in row.processors:
                            logits[s:s + 1] = proc(seq, logits[s:s + 1])
            nxt = logits.argmax(dim=-1)
            live = self._live[:b]
            dec.tok[:b].copy_(nxt)
            dec.pos[:b] += live
            dec.wpos[:b] += live
            for s, row in self._rows.items():
                if self._gen_dev is not None and row.processors:
                    self._gen_dev[s, row.produced] = nxt[s]
                row.produced += 1
                self._wpos[s] += 1
                self._pos[s] += 1
            pending.append(nxt)
            due = any(row.produced >= row.max_new or (original and self._pos[s] == original)
                      for s, row in self._rows.items())
            self.stats.decode_s += time.perf_counter() - t0
            dec.stats.decode_s += time.perf_counter() - t0
            if len(pending) >= dec.sync_every or due:
                chunk = torch.stack(pending, dim=1).cpu()     # [b, k]: the one host sync
                pending.clear()
                yield from self._finish_rows(chunk)

    def _prefill_budget(self) -> int:
        """Prompt tokens the next prefill may take: all of `prefill_tokens` with no row
        decoding, else what the prefills since the rows' last step left of it."""
        return self.prefill_tokens - self._since_step if self._rows else self.prefill_tokens

    def _next_group(self, stream, exhausted: bool) -> tuple[list, bool]:
        """The next requests to prepare (held-back ones first, then the stream), as many as
        slots are free (at most `refill_chunk`) and, where their prompt length is already
        known, within the prefill budget; and whether the stream has run out."""
        group, counts, budget = [], [], self._prefill_budget()
        while len(group) < min(len(self._free), self.refill_chunk):
            if self._waiting:
                item = self._waiting.popleft()
            elif exhausted or (self.hold is not None and self.hold(not self._rows and not group)):
                break
            else:
                item = next(stream, None)
                if item is None:
                    exhausted = True
                    break
            if item[0] in self._alone:
                # its group could not be prepared: it goes on its own
                if group:
                    self._waiting.appendleft(item)
                else:
                    group.append(item)
                break
            known = self._prompt_tokens.get(item[0])
            if known is not None and not fits(counts, known, budget):
                self._waiting.appendleft(item)
                break
            group.append(item)
            if known is not None:
                counts.append(known)
        return group, exhausted

    def _width(self, rows: int) -> int:
        """Rows a step computes to cover slots [:rows] (on CUDA a captured batch size)."""
        dec = self.decoder
        return min(batch_bucket(rows) if dec.use_graphs else rows, dec.k.shape[1])

    def _compact(self) -> None:
        """No request left to refill with: busy rows above a free slot move down into it when
        that narrows the step (their KV, mask, token, position and write slot move along)."""
        dec = self.decoder
        busy = sorted(self._rows)
        n = len(busy)
        if self._width(busy[-1] + 1) <= self._width(n):
            return
        sources = [s for s in busy if s >= n]
        targets = sorted(s for s in self._free if s < n)
        assert len(sources) == len(targets), "every hole below the busy count has a row above it"
        src = torch.tensor(sources, dtype=torch.long, device=dec.device)
        dst = torch.tensor(targets, dtype=torch.long, device=dec.device)
        for buf in (dec.mask, dec.tok, dec.pos, dec.wpos):
            buf[dst] = buf[src]
        dec.k[:, dst] = dec.k[:, src]
        dec.v[:, dst] = dec.v[:, src]
        self._live[dst], self._live[src] = 1, 0
        for s, d in zip(sources, targets):
            self._rows[d] = self._rows.pop(s)
            self._wpos[d] = self._wpos[s]
            self._pos[d] = self._pos[s]
            self._gen[d] = self._gen[s]
            if self._gen_dev is not None:
                self._gen_dev[d] = self._gen_dev[s]
        self._free = sorted(set(self._free) - set(targets) | set(sources))
        heapq.heapify(self._free)
        self.stats.compactions += 1

    def _finish_rows(self, chunk: torch.Tensor) -> Iterator[Finished]:
        """The last `k` tokens of every row through its tracker; finished rows leave."""
        k = chunk.shape[1]
        for s in sorted(self._rows):
            row = self._rows[s]
            start = row.produced - k
            for j in range(k):
                n = start + j + 1
                self._gen[s, n - 1] = chunk[s, j]
                if self._ended(row, s, n):
                    yield self._release_slot(s, n)
                    break

    def _ended(self, row: _Row, slot: int, n: int) -> bool:
        row.tracker(self._gen[slot:slot + 1, :n])
        return row.tracker.ends[0] is not None or n >= row.max_new

    def _release_slot(self, slot: int, n: int) -> Finished:
        row = self._rows.pop(slot)
        heapq.heappush(self._free, slot)
        self._live[slot] = 0
        return self._finished(row, self._gen[slot], n)

    def _finished(self, row: _Row, tokens: torch.Tensor, n: int) -> Finished:
        end, reason = row.tracker.result(0, n)
        return Finished(row.index, row.request, tokens[:end].tolist(), reason, row.input_tokens, row.tracker)

    # ------------------------------------------------------------------ admission
    def _admit(self, group: list[tuple[int, Any]]) -> Iterator[Finished]:
        dec = self.decoder
        t0 = time.perf_counter()
        try:
            prepared = self.prepare([request for _, request in group])
        except RequestError as exc:
            # nothing of the group is admitted yet: the rest of the engine is untouched
            if len(group) > 1:
                self._alone.update(index for index, _ in group)
                self._waiting.extendleft(reversed(group))
            else:
                self._alone.discard(group[0][0])
                yield Failed(group[0][0], group[0][1], exc.error)
            return
        self.stats.prepares += 1
        inputs = prepared.inputs
        input_ids, attention = inputs.get("input_ids"), inputs.get("attention_mask")
        if input_ids is None or attention is None or input_ids.dim() != 2 or attention.shape != input_ids.shape:
            raise Unsupported("prepared inputs need input_ids and attention_mask [batch, length]")
        n, prompt_len = input_ids.shape
        counts = [int(c) for c in attention.sum(dim=1).tolist()]
        self._prompt_tokens.update((index, c) for (index, _), c in zip(group, counts))
        now = take_now(counts, budget=self._prefill_budget(), original=dec.parts.longrope_original)
        if len(now) < n:
            # too many tokens, or both sides of LongRoPE's original context: the rest wait
            # (their lengths now known), the first part is prepared again on its own
            self._waiting.extendleft(reversed([item for i, item in enumerate(group) if i not in now]))
            del prepared, inputs, input_ids, attention
            yield from self._admit([group[i] for i in now])
            return
        budgets = [self._budget(c, request) for c, (_, request) in zip(counts, group)]
        need = prompt_len + max(budgets)
        if dec.max_len is not None and need > dec.max_len:
            raise Unsupported(f"prompt + new tokens ({need}) exceed the decoder's cache limit ({dec.max_len})")
        if dec.parts.window and need > dec.parts.window:
            raise Unsupported(f"prompt + new tokens ({need}) exceed the sliding window ({dec.parts.window})")
        per_row = []
        for j in range(n):
            procs = select_processor_rows(prepared.processors, [j]) if prepared.processors else []
            if procs is None:
                raise Unsupported("a logits processor cannot be restricted to one row")
            per_row.append(procs)
        sequences, cache, pos_ids = dec._prefill(inputs, prepared.gen_kwargs)
        self.stats.prefills += 1
        self.stats.prefill_sizes.append((n, n * prompt_len))
        self._since_step += n * prompt_len
        self.stats.admitted += n
        first = sequences[:, prompt_len].to(dec.device)
        next_pos = next_positions(pos_ids, attention).to(dec.device)
        dec.grow_pool(self.slots, need)
        dec._ensure_rope(int(next_pos.max()) + max(budgets) + 1, pos_ids.dim() == 3)
        dec.top_pos.zero_()             # LongRoPE: each row's factor set follows its own position
        next_host = [int(p) for p in next_pos.tolist()]
        if self._live is None or self._live.shape[0] != dec.k.shape[1]:
            live = torch.zeros(dec.k.shape[1], dtype=torch.long, device=dec.device)
            if self._live is not None:
                live[:self._live.shape[0]] = self._live
            self._live = live
        first_host = first.cpu()
        slots, rows, done = [], [], []
        for j, (index, request) in enumerate(group):
            row = _Row(index, request, self.new_tracker(request), per_row[j],
                       input_ids[j] if per_row[j] else None, counts[j], budgets[j])
            slot = heapq.heappop(self._free)
            self._gen[slot, 0] = first_host[j]
            if self._ended(row, slot, 1):
                heapq.heappush(self._free, slot)
                done.append(self._finished(row, self._gen[slot], 1))
                continue
            self._rows[slot] = row
            self._wpos[slot] = prompt_len
            self._pos[slot] = next_host[j]
            self._live[slot] = 1
            if row.processors:
                if self._gen_dev is None:
                    self._gen_dev = torch.zeros(self.slots, self.max_new, dtype=torch.long, device=dec.device)
                self._gen_dev[slot, 0] = first[j]
            slots.append(slot)
            rows.append(j)
        if slots:
            dec.load_rows(slots, cache, attention, first, next_pos, rows=rows)
        del cache
        self.stats.prefill_s += time.perf_counter() - t0
        dec.stats.prefill_s += time.perf_counter() - t0
        yield from done

    def _recompute(self, slots: list[int]) -> Iterator[Finished]:
        """Rows about to feed position `original` (their sequence first outgrows LongRoPE's
        original context): as transformers' Phi-3, the whole sequence again with the long
        factors. For each row alone: its request prepared again, its generated tokens
        appended, the model's own prefill (its next token), the new KV into its slot."""
        dec = self.decoder
        for slot in slots:
            t0 = time.perf_counter()
            row = self._rows[slot]
            prepared = self.prepare([row.request])
            self.stats.prepares += 1
            inputs = extended_inputs(prepared.inputs, self._gen[slot, :row.produced])
            attention = inputs["attention_mask"]
            length = attention.shape[1]
            sequences, cache, pos_ids = dec._prefill(inputs, prepared.gen_kwargs)
            self._since_step += length
            token = sequences[:, length].to(dec.device)
            next_pos = next_positions(pos_ids, attention).to(dec.device)
            dec.load_rows([slot], cache, attention, token, next_pos)
            del cache
            self._wpos[slot] = length
            self._pos[slot] = int(next_pos[0])
            self._gen[slot, row.produced] = int(token[0])
            if self._gen_dev is not None and row.processors:
                self._gen_dev[slot, row.produced] = token[0]
            row.produced += 1
            self.stats.recomputes += 1
            dec.stats.recomputes += 1
            self.stats.prefill_s += time.perf_counter() - t0
            dec.stats.prefill_s += time.perf_counter() - t0
            if self._ended(row, slot, row.produced):
                yield self._release_slot(slot, row.produced)

    def _budget(self, prompt_tokens: int, request: Any) -> int:
        """New tokens for a request: its own count or the budget, within the model's context."""
        budget = self.max_new
        own = self.request_budget(request) if self.request_budget is not None else None
        if own is not None:
            budget = max(1, min(budget, int(own)))
        if self.max_positions:
            return max(1, min(budget, self.max_positions - prompt_tokens))
        return budget

    def facts(self) -> dict:
        """This engine's counts (the decoder's own facts keep the run's totals); prefill
        sizes in tokens are rows x longest prompt (padding included)."""
        s = self.stats
        tokens = [t for _, t in s.prefill_sizes]
        return {"decode_continuous": True, "decode_slots": self.slots, "continuous_prefills": s.prefills,
                "continuous_prepares": s.prepares, "continuous_prefill_budget": self.prefill_tokens,
                "continuous_prefill_tokens": sum(tokens), "continuous_prefill_tokens_max": max(tokens, default=0),
                "continuous_prefill_rows_max": max((r for r, _ in s.prefill_sizes), default=0),
                "continuous_recomputes": s.recomputes,
                "continuous_steps": s.steps, "continuous_row_steps": s.row_steps,
                "continuous_busy_row_steps": s.busy_row_steps, "continuous_compactions": s.compactions,
                "continuous_prefill_s": round(s.prefill_s, 4), "continuous_decode_s": round(s.decode_s, 4)}
