"""A stream of pages through one continuous engine: finished pages come out as they finish.

`GenerationRunner.generate_stream` makes a `PageStream`. It takes pages lazily from any
iterable and keeps the engine's rows busy across the whole run (no drain at batch
boundaries); iterating it gives (page, RawOutput) pairs in finishing order, not in input
order (the caller restores the order it needs). Each RawOutput's `generate_s` is the
page's own time from its admission (inputs prepared) to its finish (rows overlap, so
these add up to more than the wall time); `preprocess_s` is its share of its prepare
group's time.

No page is lost to a failure:

- a group whose inputs cannot be prepared (a bad image, a processor error): its pages are
  prepared one at a time, and only the bad one comes back with an error RawOutput;
- out of memory inside the engine: the engine has freed its cache; the pages already
  given out stand; the unfinished ones (in flight, or taken and not yet admitted) go back
  in front of the rest of the stream, the rows are halved (`on_shrink(rows)` is told) and
  a new engine goes on. With one row left, the page that ran out of memory is retried
  once on an emptied card, then comes back with the reason (as the scheduler's
  split-and-retry does for a batch, `chatvlm.scheduler.generate_with_backoff`);
- `Unsupported` (a request the engine cannot serve): the unfinished pages take the batch
  path (`fallback`), then a new engine takes the rest of the stream, unless the engine
  had finished nothing (then the rest of the run goes batch by batch);
- any other engine failure: the engine is off for the run (`continuous_disabled`); the
  unfinished pages and the rest of the stream go batch by batch through `fallback`.

`fallback(pages)` returns one result per page (a RawOutput, or an exception object for a
page that failed): by default the runner's batch path with the scheduler's
split-and-retry. Exceptions raised by the input iterable or by `hold` are the caller's,
and propagate unchanged (an interrupt, an output folder that stopped taking files).
"""

from __future__ import annotations

import time
from collections import deque
from itertools import chain, count
from typing import Any, Callable, Iterable, Iterator, Optional

from ..config import GenerationParams
from ..records import Page, RawOutput


class PageStream:
    """Iterate for (page, result) as pages finish; `busy_s` (seconds the engine and the
    batch path worked, waits for the input excluded) and `groups` (prepare groups and
    batches) describe the run so far; `close()` abandons the pages in flight."""

    def __init__(self, runner, requests: Iterable[Page], task: str, params: GenerationParams, *,
                 on_shrink: Optional[Callable[[int], None]] = None,
                 fallback: Optional[Callable[[list[Page]], list]] = None,
                 hold: Optional[Callable[[bool], bool]] = None):
        self.runner = runner
        self.task, self.params = task, params
        self.on_shrink = on_shrink
        self.fallback = fallback or self._batch_path
        self.hold = hold
        self.busy_s = 0.0
        self.groups = 0
        self._source = iter(requests)
        self._front: deque[Page] = deque()     # unfinished pages handed back, before the rest of the source
        self._admitted: dict[int, float] = {}  # id(page) -> when its preparation began
        self._preprocess: dict[int, float] = {}
        self._strikes: dict[int, int] = {}     # id(page) -> out-of-memory errors with one row
        self._outside: Optional[BaseException] = None   # raised by the caller's iterable or hold
        self._waiting_s = 0.0                  # time spent in the caller's iterable and hold
        self._results = self._run()

    def __iter__(self) -> Iterator[tuple[Page, Any]]:
        return self

    def __next__(self) -> tuple[Page, Any]:
        t0, waited = time.perf_counter(), self._waiting_s
        try:
            return next(self._results)
        finally:
            self.busy_s += (time.perf_counter() - t0) - (self._waiting_s - waited)

    def close(self) -> None:
        self._results.close()

    # ------------------------------------------------------------------ the caller's side
    def _next_source(self) -> Optional[Page]:
        """The next page handed back, else of the caller's iterable (None at its end)."""
        if self._front:
            return self._front.popleft()
        t0 = time.perf_counter()
        try:
            return next(self._source, None)
        except BaseException as exc:
            self._outside = exc
            raise
        finally:
            self._waiting_s += time.perf_counter() - t0

    def _hold(self, idle: bool) -> bool:
        if self._front or self.hold is None:
            return False          # pages handed back are taken at once
        t0 = time.perf_counter()
        try:
            return self.hold(idle)
        except BaseException as exc:
            self._outside = exc
            raise
        finally:
            self._waiting_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ the run
    def _run(self) -> Iterator[tuple[Page, Any]]:
        from ..scheduler import free_memory, is_out_of_memory
        from .lm import Unsupported

        runner = self.runner
        engines, declined = 0, False
        while True:
            slots = runner.decode_slots()
            decoder = runner.static_decoder(self.params) if slots and not runner.continuous_disabled else None
            if decoder is None:
                yield from self._batches(self._rest())
                return
            taken: dict[int, Page] = {}      # the engine's request index -> page, until it finishes
            finished = 0
            engine = runner.continuous_engine(decoder, slots, self.params, self._prepare, hold=self._hold)
            engines += 1
            runner.facts["continuous_engines"] = engines     # more than one: restarted after a failure
            try:
                for done in engine.run(self._feed(taken)):
                    page = taken.pop(done.index)
                    finished += 1
                    yield page, self._result(page, done, slots)
            except Exception as exc:
                if exc is self._outside:
                    raise
                # The engine freed the decoder's cache before raising. Unfinished pages, in order:
                unfinished = [taken[i] for i in sorted(taken)]
                runner.facts.update(decoder.facts())
                if is_out_of_memory(exc):
                    exc.__traceback__ = None          # its frames hold the failed attempt's tensors
                    reason = f"{exc.__class__.__name__}: {exc}"
                    del exc
                    free_memory(runner.release)
                    self._front.extendleft(reversed(unfinished))
                    if slots > 1:
                        runner._lower_slots(max(1, slots // 2))
                        if self.on_shrink is not None:
                            self.on_shrink(runner.decode_slots())
                    elif not unfinished:
                        yield from self._batches(self._rest())    # nothing of ours was on the card
                        return
                    else:
                        # one row: the page in flight ran out of memory; alone on an emptied card once more
                        page = unfinished[0]
                        self._strikes[id(page)] = self._strikes.get(id(page), 0) + 1
                        if self._strikes[id(page)] > 1:
                            self._front.popleft()
                            yield page, self._failed(page, reason)
                    continue
                if isinstance(exc, Unsupported):
                    declined = True
                    runner._decline_continuous(str(exc))
                    yield from self._batches(unfinished)
                    if finished:
                        continue
                    yield from self._batches(self._rest())
                    return
                runner._fail_continuous(exc)
                yield from self._batches(chain(unfinished, self._rest()))
                return
            runner.facts.update(decoder.facts())
            runner.facts.update(engine.facts())        # the counts of the last engine
            if declined:
                runner.facts["decode_continuous"] = False    # the reason stays: some pages took the batch path
            else:
                runner.facts.pop("decode_continuous_reason", None)
            if runner._on_cuda():
                runner._note_peak_memory()
            return

    def _feed(self, taken: dict[int, Page]) -> Iterator[Page]:
        """The engine's requests (its indices count from 0), each recorded until it finishes."""
        for index in count():
            page = self._next_source()
            if page is None:
                return
            taken[index] = page
            yield page

    def _rest(self) -> Iterator[Page]:
        while (page := self._next_source()) is not None:
            yield page

    def _prepare(self, group: list[Page]):
        """The group's inputs on the device; a failure of the pages themselves (not out of
        memory) is the engine's RequestError, so it isolates the bad page."""
        from ..scheduler import is_out_of_memory
        from .requests import RequestError

        runner = self.runner
        t0 = time.perf_counter()
        try:
            inputs = runner._on_device(runner.adapter.build_inputs(group, self.task, self.params))
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            raise RequestError(exc) from None
        now = time.perf_counter()
        self.groups += 1
        for page in group:
            self._admitted.setdefault(id(page), now)
            self._preprocess[id(page)] = self._preprocess.get(id(page), 0.0) + (now - t0) / len(group)
        return runner.prepared_group(group, self.task, self.params, inputs)

    def _result(self, page: Page, done, slots: int) -> RawOutput:
        from .requests import Failed

        if isinstance(done, Failed):
            self._admitted.pop(id(page), None)
            self._preprocess.pop(id(page), None)
            return self._failed(page, f"{done.error.__class__.__name__}: {done.error}")
        now = time.perf_counter()
        generate_s = now - self._admitted.pop(id(page), now)
        preprocess_s = self._preprocess.pop(id(page), 0.0)
        self._strikes.pop(id(page), None)
        return self.runner.raw_output(done.tokens, done.reason, self.params, done.input_tokens,
                                      generate_s, preprocess_s,
                                      {"batch_size": slots, "continuous": True, "stream": True})

    @staticmethod
    def _failed(page: Page, reason: str) -> RawOutput:
        return RawOutput(text="", finish_reason="error", error=reason[:500])

    # ------------------------------------------------------------------ the batch path
    def _batches(self, pages: Iterable[Page]) -> Iterator[tuple[Page, Any]]:
        """Pages through `fallback`, as many at a time as the run's batch size."""
        batch: list[Page] = []
        for page in pages:
            batch.append(page)
            if len(batch) >= self._batch_size():
                yield from self._fallback(batch)
                batch = []
        if batch:
            yield from self._fallback(batch)

    def _batch_size(self) -> int:
        runner = self.runner
        return max(1, runner.decode_slots() or runner.batch_size or 1)

    def _fallback(self, batch: list[Page]) -> Iterator[tuple[Page, Any]]:
        self.groups += 1
        yield from zip(batch, self.fallback(batch))

    def _batch_path(self, batch: list[Page]) -> list:
        from ..scheduler import generate_with_backoff

        runner = self.runner
        return generate_with_backoff(lambda pages: runner.generate(pages, self.task, self.params), batch,
                                     release=runner.release)
