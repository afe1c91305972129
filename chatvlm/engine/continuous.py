"""Continuous batching: a finished row's cache slot is refilled with the next request.

The static decoder (`chatvlm.decode.StaticDecoder`) holds a slot cache
`[layers, slots, kv_heads, length, head_dim]`; every row has its own position, its own
write slot and its own key mask, so rows at different lengths decode together in one
step. The engine runs that step and keeps the slots busy:

1. **Admission.** While slots are free and requests wait, the next requests (as many as
   there are free slots, at most `refill_chunk`) are prepared by the backend (`prepare`:
   the model's inputs and `generate` arguments) and prefilled by the model's own prefill
   (`StaticDecoder._prefill`: vision encoder, language-model prefill, first token). Their
   prompt KV is copied into the lowest free slots (`StaticDecoder.load_rows`); a request
   that ends on its first token never takes a slot.
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

Greedy only. LongRoPE (Phi-3) is served while every row stays within the original
context, where the short factors apply to all rows whatever their neighbours; a request
that could cross it is declined before its prefill (`Unsupported`: the caller decodes
it on the batch path, which recomputes the cache at the crossing as transformers does).
On any error the decoder's cache, graphs and pool are freed
before the error propagates (an out-of-memory error then reaches the caller's
split-and-retry with the memory returned).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from ..decode import Unsupported, batch_bucket, next_positions, select_processor_rows


@dataclass
class Prepared:
    """A group of requests ready for the model's prefill (built by the backend)."""
    inputs: dict               # model inputs on the device; input_ids / attention_mask [n, length]
    gen_kwargs: dict           # `generate` arguments (generation_config, logits_processor, ...)
    processors: list = field(default_factory=list)   # logits processors for the group's rows


@dataclass
class Finished:
    """One request done."""
    index: int                 # its place in the request stream
    request: Any
    tokens: list[int]          # generated ids up to the end (a stop token included)
    reason: str                # "stop" | "loop" | "length"
    input_tokens: int          # real (unpadded) prompt tokens
    tracker: Any               # the request's stop tracker (loop details)


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
    admitted: int = 0                # requests admitted
    steps: int = 0
    row_steps: int = 0               # sum over steps of rows computed
    busy_row_steps: int = 0          # ... of which rows that were decoding a request
    compactions: int = 0             # rows moved down once no request was left to refill with
    prefill_s: float = 0.0
    decode_s: float = 0.0


def continuous_unsupported(decoder) -> Optional[str]:
    """Why the engine cannot run on this decoder's model at all (None: it can). Every
    language model the static decoder serves qualifies; LongRoPE is checked per request
    (`longrope_crossing`)."""
    return None


def longrope_crossing(original: Optional[int], first_positions: list[int], budgets: list[int]) -> Optional[str]:
    """Why rows starting their new tokens at `first_positions` with `budgets` new tokens
    each could leave LongRoPE's original context (None: none can). A row feeds positions up
    to first + budget - 2 (its last token is never fed back); transformers keeps the short
    factors while the largest position + 1 stays within `original`."""
    if not original:
        return None
    for first, budget in zip(first_positions, budgets):
        if first + budget - 1 > original:
            return (f"a request could cross LongRoPE's original context ({first} prompt positions + "
                    f"{budget} new tokens > {original} + 1)")
    return None


class ContinuousEngine:
    """Greedy decoding of a stream of requests with `slots` rows kept busy."""

    def __init__(self, decoder, *, slots: int, prepare: Callable[[list], Prepared],
                 new_tracker: Callable[[Any], Any], max_new_tokens: int, max_positions: Optional[int] = None,
                 refill_chunk: Optional[int] = None, request_budget: Optional[Callable[[Any], Optional[int]]] = None):
        """`new_tracker(request)`: the request's own stop tracker (a batch of one);
        `request_budget(request)`: its own token count where it has one (bench --synthetic
        --tokens A-B), at most `max_new_tokens`."""
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
        self.request_budget = request_budget
        self.stats = EngineStats()

    def run(self, requests: Iterable) -> Iterator[Finished]:
        """Finished requests, as they finish (not in input order)."""
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
        self._live: Optional[torch.Tensor] = None       # [pool rows] 1 where a slot decodes
        exhausted = False
        pending: list[torch.Tensor] = []
        while True:
            if self._free and not exhausted:
                group = []
                while len(group) < min(len(self._free), self.refill_chunk):
                    item = next(stream, None)
                    if item is None:
                        exhausted = True
                        break
                    group.append(item)
                if group:
                    yield from self._admit(group)
                    continue                            # refill every free slot before stepping
            if not self._rows:
                if exhausted:
                    return
                continue
            if exhausted and not pending:
                self._compact()
            t0 = time.perf_counter()
            b = self._width(max(self._rows) + 1)
            filled = max(self._wpos[s] for s in self._rows) + 1
            if dec.parts.longrope_original:
                # the factor set follows the largest position of the rows decoding (admission
                # keeps it within the original context: the short set, as for each row alone)
                dec.top_pos.copy_((dec.pos[:b] * self._live[:b]).max().view(1))
            logits = dec._run_step(b, filled)
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
            pending.append(nxt)
            due = any(row.produced >= row.max_new for row in self._rows.values())
            self.stats.decode_s += time.perf_counter() - t0
            dec.stats.decode_s += time.perf_counter() - t0
            if len(pending) >= dec.sync_every or due:
                chunk = torch.stack(pending, dim=1).cpu()     # [b, k]: the one host sync
                pending.clear()
                yield from self._finish_rows(chunk)

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
        prepared = self.prepare([request for _, request in group])
        inputs = prepared.inputs
        input_ids, attention = inputs.get("input_ids"), inputs.get("attention_mask")
        if input_ids is None or attention is None or input_ids.dim() != 2 or attention.shape != input_ids.shape:
            raise Unsupported("prepared inputs need input_ids and attention_mask [batch, length]")
        n, prompt_len = input_ids.shape
        counts = [int(c) for c in attention.sum(dim=1).tolist()]
        budgets = [self._budget(c, request) for c, (_, request) in zip(counts, group)]
        original = dec.parts.longrope_original
        # before any work: a row's first new position is its prompt token count (positions
        # from the attention mask); checked again on the prefill's own positions below
        crossing = longrope_crossing(original, counts, budgets)
        if crossing:
            raise Unsupported(crossing)
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
        self.stats.admitted += n
        first = sequences[:, prompt_len].to(dec.device)
        next_pos = next_positions(pos_ids, attention).to(dec.device)
        crossing = longrope_crossing(original, [int(p) for p in next_pos.tolist()], budgets)
        if crossing:
            raise Unsupported(crossing)
        dec.grow_pool(self.slots, need)
        dec._ensure_rope(int(next_pos.max()) + max(budgets) + 1, pos_ids.dim() == 3)
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
        s = self.stats
        """This engine's counts (the decoder's own facts keep the run's totals)."""
        return {"decode_continuous": True, "decode_slots": self.slots, "continuous_prefills": s.prefills,
                "continuous_steps": s.steps, "continuous_row_steps": s.row_steps,
                "continuous_busy_row_steps": s.busy_row_steps, "continuous_compactions": s.compactions,
                "continuous_prefill_s": round(s.prefill_s, 4), "continuous_decode_s": round(s.decode_s, 4)}
