"""One model's generation runs: which path a batch of requests takes, and its RawOutputs.

Model-agnostic. A model adapter (`ModelAdapter`: chatvlm.backends.hf.HFBackend and its
subclasses are adapters) says only what the model knows: its inputs for a group of
requests, stop ids and strings, logits processors, the token budget and context, how ids
become text. `GenerationRunner` decides the rest:

- a stream of requests (`generate_stream`, the pipeline's pages): one `ContinuousEngine`
  for the whole stream, each request given back as it finishes (chatvlm.engine.stream);
- more requests than continuous slots: `ContinuousEngine` over the static decoder (a
  finished row's slot is refilled with the next request at once);
- otherwise, or where the engine declines or fails: left-padded batches of at most `slots`
  requests through the static decoder, transformers' `generate` as its fallback (engine.batch);
- the report facts (decode mode and why, the engine's counters, declined / failed reasons)
  go into the `facts` dict the adapter reports.

Settings come from `BackendOptions.extra`, read at every call (they may change between
runs): decode = auto | fast | hf, decode_graphs, decode_len_bucket, decode_sync_every,
decode_max_len, decode_slots, decode_refill_chunk, decode_prefill_tokens. A synthetic run (`bench --synthetic`,
`BackendOptions.synthetic`) generates exactly its budget: no stop tokens, no loop guard,
and with `synthetic_tokens` = [A, B, seed] each request its own count.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from ..config import BackendOptions, GenerationParams
from ..errors import ChatVLMError
from ..i18n import _
from ..records import Page, RawOutput
from .adapter import ModelAdapter


class GenerationRunner:
    """Runs batches of requests for one adapter and keeps the run's decoding state: the
    static decoder (built once per model), why it or the continuous engine is off for the
    run, and the rows the engine may use."""

    def __init__(self, adapter: ModelAdapter, options: BackendOptions, facts: dict[str, Any]):
        self.adapter = adapter
        self.options = options
        self.facts = facts                      # the adapter's report facts (shared, written here)
        self.decoder = None                     # chatvlm.engine.decoder.StaticDecoder, built on first use
        self.decode_disabled: Optional[str] = None       # the static decoder failed: off for the run
        self.continuous_disabled: Optional[str] = None   # the engine failed: off for the run
        self.slots_cap: Optional[int] = None    # rows after an out-of-memory error
        self.batch_size: Optional[int] = None   # the run's batch size: the engine's default rows
        self.peak_memory_bytes = 0
        self._static_supported: Optional[tuple[Any, bool]] = None   # (model, served by the decoder)

    # ----------------------------------------------------------------- run settings
    @property
    def exact_length(self) -> bool:
        """bench --synthetic: every request runs its whole budget (no stops, no loop guard)."""
        return bool(self.options.synthetic)

    def stops(self) -> tuple[list[int], list[str]]:
        """Stop token ids and stop strings (none where every request runs its whole budget)."""
        if self.exact_length:
            return [], []
        return self.adapter.stop_token_ids(), self.adapter.stop_strings()

    def token_targets(self, requests: list[Page], params: GenerationParams) -> Optional[list[int]]:
        """bench --synthetic --tokens A-B: each request's own token count (options.extra
        "synthetic_tokens" = [A, B, seed]), at most max_new_tokens; None otherwise."""
        target = self.token_target(params)
        return [target(p) for p in requests] if target else None

    def token_target(self, params: GenerationParams):
        """`token_targets` for one request at a time (a stream): a callable, or None."""
        spec = self.options.extra.get("synthetic_tokens") if self.options.synthetic else None
        if not spec:
            return None
        from ..synthetic import page_token_target

        low, high, seed = (int(v) for v in spec)
        cap = self.adapter.max_new_tokens(params)
        return lambda p: min(cap, page_token_target(p.doc_key, p.page, low, high, seed))

    def max_new_within_context(self, params: GenerationParams, prompt_len: int, budget: Optional[int] = None) -> int:
        """New tokens a batch may generate: `budget` (default max_new_tokens) within the context."""
        from .generation import max_new_within_context
        max_new = budget if budget is not None else self.adapter.max_new_tokens(params)
        return max_new_within_context(max_new, self.adapter.max_positions(), prompt_len)

    # ----------------------------------------------------------------- decoder choice
    def static_decoder(self, params: GenerationParams):
        """The chatvlm static decoder for this request, or None for transformers `generate`.

        options.extra["decode"]: "auto" (default: ours when the model and request are
        supported), "fast" (same, the fallback still recorded), "hf" (always generate).
        The choice and its reason go to the facts: decode = "chatvlm-static" | "hf-generate".
        """
        from . import lm as fast

        model = self.adapter.model
        mode = str(self.options.extra.get("decode", "auto")).lower()
        if mode not in ("auto", "fast", "hf"):
            raise ChatVLMError(_("unknown decode mode {mode!r}; use auto, fast or hf").format(mode=mode))
        if mode == "hf":
            reason = "requested (--decode hf)"
        elif self.decode_disabled:
            reason = self.decode_disabled
        else:
            reason = fast.unsupported_reason(model, do_sample=bool(params.do_sample))
        if reason is not None:
            self.facts["decode"], self.facts["decode_reason"] = fast.HF, reason
            return None
        decoder = self.decoder
        if decoder is None or decoder.model is not model:
            opts = self.options.extra
            from .decoder import StaticDecoder

            decoder = self.decoder = StaticDecoder(
                model, use_graphs=opts.get("decode_graphs"),
                len_bucket=int(opts.get("decode_len_bucket", 256)),
                sync_every=opts.get("decode_sync_every"),
                max_len=int(opts["decode_max_len"]) if opts.get("decode_max_len") else None)
        self.facts["decode"] = fast.STATIC
        self.facts.pop("decode_reason", None)
        return decoder

    def decode_slots(self) -> int:
        """Rows the continuous engine keeps decoding (0: off). A batch of more requests than
        slots decodes continuously: a finished request's slot is refilled with the next one
        (at most `decode_refill_chunk` per prefill, default: as many as rows are free).

        On by default wherever the static decoder serves the model: as many rows as the run's
        batch size (`batch_size`; a size of one has nothing to refill alongside).
        `decode_slots=N` sets the rows, 0 turns the engine off; `decode=hf` has none. After
        an out-of-memory error the rows are halved (`slots_cap`)."""
        extra = self.options.extra
        if str(extra.get("decode", "auto")).lower() == "hf":
            return 0
        if extra.get("decode_slots") not in (None, ""):
            slots = int(extra["decode_slots"])
        else:
            slots = self._default_slots()
        cap = self.slots_cap
        return min(slots, cap) if slots and cap else slots

    def _default_slots(self) -> int:
        size = int(self.batch_size or 0)
        model = self.adapter.model
        if size < 2 or model is None or self.decode_disabled or self.continuous_disabled:
            return 0
        known = self._static_supported
        if known is None or known[0] is not model:
            from . import lm as fast
            known = self._static_supported = (model, fast.unsupported_reason(model) is None)
        return size if known[1] else 0

    def release(self) -> None:
        """Free the static decoder's KV pool and graphs (rebuilt, at the size needed, by the
        next batch); after an out-of-memory error, and when the model closes."""
        if self.decoder is not None:
            self.decoder.release()

    # ----------------------------------------------------------------- running requests
    def generate(self, requests: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        """RawOutputs for `requests`, in their order: continuously where the engine serves
        the batch, else batch by batch."""
        results = self._generate_continuous(requests, task, params)
        if results is not None:
            return results
        try:
            return self._generate_batches(requests, task, params)
        except Exception as exc:
            from ..scheduler import is_out_of_memory
            slots = self.decode_slots()
            if slots and len(requests) > 1 and is_out_of_memory(exc):
                # as after an engine's out-of-memory error: fewer rows from now on
                self._lower_slots(max(1, min(slots, len(requests)) // 2))
            raise

    def _lower_slots(self, cap: int) -> None:
        self.slots_cap = cap
        self.facts["decode_slots_lowered_to"] = cap

    def _generate_batches(self, requests: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        """The batch path: with continuous slots (a batch the engine does not serve),
        `slots` requests decode at a time, as many as the memory was sized for."""
        slots = self.decode_slots()
        if slots and len(requests) > slots:
            return [raw for i in range(0, len(requests), slots)
                    for raw in self._generate_group(requests[i:i + slots], task, params)]
        return self._generate_group(requests, task, params)

    def _generate_group(self, requests: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        t0 = time.perf_counter()
        inputs = self.adapter.build_inputs(requests, task, params)
        preprocess_s = time.perf_counter() - t0
        return self.generate_inputs(inputs, task, params, preprocess_s=preprocess_s,
                                    row_targets=self.token_targets(requests, params))

    def generate_inputs(self, inputs: dict, task: str, params: GenerationParams,
                        preprocess_s: float = 0.0, row_targets: Optional[list[int]] = None) -> list[RawOutput]:
        """Greedy (by default) left-padded generation for one batch of model inputs.

        `row_targets` (bench --synthetic with a token range): each row generates exactly its
        own count, the batch as long as its longest row."""
        import torch

        from .batch import batch_outputs, decode_batch

        t0 = time.perf_counter()
        inputs = self._on_device(inputs)
        preprocess_s += time.perf_counter() - t0
        prompt_len = inputs["input_ids"].shape[1]
        input_counts = inputs["attention_mask"].sum(dim=1).tolist()
        max_new = self.max_new_within_context(params, prompt_len, budget=max(row_targets) if row_targets else None)
        row_limits = [min(n, max_new) for n in row_targets] if row_targets else None

        def fresh_generation_state():
            """Tracker, processors and generate() arguments; both decoders mutate them, so
            a retry gets new ones."""
            return self.generation_state(inputs, task, params, max_new, prompt_len, row_limits=row_limits)

        state = fresh_generation_state()
        on_cuda = self._on_cuda()
        if on_cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        out, tracker = decode_batch(inputs, state, decoder=self.static_decoder(params),
                                    fresh_state=fresh_generation_state, generate=self.adapter.model.generate,
                                    max_new=max_new, pad_token_id=self.adapter.pad_token_id(), facts=self.facts,
                                    disable=lambda reason: setattr(self, "decode_disabled", reason))
        if on_cuda:
            self._note_peak_memory()
        generate_s = time.perf_counter() - t1

        def to_raw(ids, reason, input_tokens, generate_s, preprocess_s, extra):
            return self.raw_output(ids, reason, params, input_tokens, generate_s, preprocess_s, extra)

        return batch_outputs(out, prompt_len, tracker, input_counts, to_raw, generate_s, preprocess_s)

    def _generate_continuous(self, requests: list[Page], task: str, params: GenerationParams):
        """The batch through the continuous engine, or None where it does not apply (few
        requests, a model or request the static decoder or the engine does not serve, an
        engine that failed once in this run): the caller then decodes batch by batch."""
        from .requests import Prepared

        slots = self.decode_slots()
        if not slots or len(requests) <= slots or self.continuous_disabled:
            return None
        decoder = self._continuous_decoder(params)
        if decoder is None:
            return None
        preprocess = [0.0]
        input_errors: list[BaseException] = []

        def prepare(group: list[Page]) -> Prepared:
            t0 = time.perf_counter()
            try:
                inputs = self._on_device(self.adapter.build_inputs(group, task, params))
            except Exception as exc:
                input_errors.append(exc)    # a bad request, not the engine's failure
                raise
            preprocess[0] += time.perf_counter() - t0
            return self.prepared_group(group, task, params, inputs)

        engine = self.continuous_engine(decoder, slots, params, prepare)
        t1 = time.perf_counter()
        finished = [None] * len(requests)

        def outputs(generate_s: float) -> list[Optional[RawOutput]]:
            """The finished requests' RawOutputs (None for one not finished), the time shared evenly."""
            n, extra = len(requests), {"batch_size": slots, "batch_generate_s": generate_s, "continuous": True}
            return [None if d is None else
                    self.raw_output(d.tokens, d.reason, params, d.input_tokens, generate_s / n, preprocess[0] / n,
                                    extra) for d in finished]

        try:
            for done in engine.run(requests):
                finished[done.index] = done
        except Exception as exc:
            from .lm import Unsupported
            from ..scheduler import is_out_of_memory
            # The engine has freed the decoder's cache, graphs and pool before raising.
            if is_out_of_memory(exc):
                # Fewer rows from now on (as the scheduler lowers its batch size); it splits the batch.
                self._lower_slots(max(1, slots // 2))
                raise
            if any(exc is e for e in input_errors):
                raise   # a bad request: the scheduler splits the batch and so finds it
            if isinstance(exc, Unsupported):
                # A request it cannot serve (e.g. one that could cross LongRoPE's original
                # context): the requests already finished stand, the rest take the batch path.
                self._decline_continuous(str(exc))
                rest = [request for request, done in zip(requests, finished) if done is None]
                if len(rest) == len(requests):
                    return None
                self.facts.update(decoder.facts())
                made = iter(self._generate_batches(rest, task, params))
                return [next(made) if raw is None else raw for raw in outputs(time.perf_counter() - t1)]
            self._fail_continuous(exc)
            return None
        if self._on_cuda():
            self._note_peak_memory()
        generate_s = time.perf_counter() - t1 - preprocess[0]
        self.facts.update(decoder.facts())
        self.facts.update(engine.facts())
        self.facts.pop("decode_continuous_reason", None)
        return outputs(generate_s)

    def prepared_group(self, group: list[Page], task: str, params: GenerationParams, inputs: dict):
        """A group's device inputs as the engine's `Prepared` (its generate arguments and processors)."""
        from .requests import Prepared

        prompt_len = inputs["input_ids"].shape[1]
        max_new = self.max_new_within_context(params, prompt_len)
        _tracker, processors, gen_kwargs = self.generation_state(inputs, task, params, max_new, prompt_len)
        return Prepared(inputs, gen_kwargs, processors)

    def continuous_engine(self, decoder, slots: int, params: GenerationParams, prepare, hold=None):
        """A ContinuousEngine over `decoder` with this run's settings; bench --synthetic
        --tokens A-B: each request ends ("length") at its own count."""
        from .continuous import ContinuousEngine

        target = self.token_target(params)

        def new_tracker(request: Page):
            own = target(request) if target else None
            return self.new_tracker(params, 0, 1, row_limits=[own] if own is not None else None)

        extra = self.options.extra
        return ContinuousEngine(decoder, slots=slots, prepare=prepare, new_tracker=new_tracker,
                                max_new_tokens=self.adapter.max_new_tokens(params),
                                max_positions=self.adapter.max_positions(),
                                refill_chunk=int(extra.get("decode_refill_chunk") or 0) or None,
                                prefill_tokens=int(extra.get("decode_prefill_tokens") or 0) or None,
                                request_budget=target, hold=hold)

    def generate_stream(self, requests, task: str, params: GenerationParams, *, on_shrink=None,
                        fallback=None, hold=None):
        """A `PageStream` over `requests` (any iterable of pages, taken lazily): one
        continuous engine for the whole stream, (page, RawOutput) pairs as pages finish.
        None where the engine does not serve this run (no slots, a model or request the
        static decoder does not serve, an engine that failed once): the caller then goes
        batch by batch. See chatvlm.engine.stream for failures and the keywords."""
        from .stream import PageStream

        if not self.decode_slots() or self.continuous_disabled or self._continuous_decoder(params) is None:
            return None
        return PageStream(self, requests, task, params, on_shrink=on_shrink, fallback=fallback, hold=hold)

    def _continuous_decoder(self, params: GenerationParams):
        """The static decoder the continuous engine would run on, or None where it does not
        apply (the decoder does not serve the model or request, or the engine declines the
        model: the reason goes to the facts)."""
        from .continuous import continuous_unsupported

        decoder = self.static_decoder(params)
        if decoder is None:
            return None
        reason = continuous_unsupported(decoder)
        if reason:
            self.facts["decode_continuous"], self.facts["decode_continuous_reason"] = False, reason
            return None
        return decoder

    def _decline_continuous(self, why: str) -> None:
        """The engine gave back work it cannot serve (Unsupported): those requests take the batch path."""
        from .batch import count_fallback

        reason = f"continuous engine declined this batch: {why}"[:300]
        self.facts["decode_continuous"], self.facts["decode_continuous_reason"] = False, reason
        count_fallback(self.facts, "continuous", reason)

    def _fail_continuous(self, exc: BaseException) -> None:
        """The engine broke: off for the rest of the run, the report says why."""
        from .batch import count_fallback

        reason = self.continuous_disabled = f"continuous engine failed: {exc.__class__.__name__}: {exc}"[:300]
        self.facts["decode_continuous"], self.facts["decode_continuous_reason"] = False, reason
        count_fallback(self.facts, "continuous", reason)

    def report_facts(self) -> dict[str, Any]:
        """The facts, with decode_slots and decode_continuous always there: where no
        engine has run (or said why it did not), 0 slots or the slots set, and why the
        engine is off (`off_facts`)."""
        facts = dict(self.facts)
        if "decode_continuous" not in facts:
            facts.update(self.off_facts())
        facts.setdefault("decode_slots", self.decode_slots())
        return facts

    def off_facts(self) -> dict[str, Any]:
        """decode_slots, decode_continuous False, and why no continuous engine ran."""
        from . import lm as fast

        slots = self.decode_slots()
        facts: dict[str, Any] = {"decode_slots": slots, "decode_continuous": False}
        extra = self.options.extra
        model = self.adapter.model
        if str(extra.get("decode", "auto")).lower() == "hf":
            reason = "requested (--decode hf): transformers generate has no continuous engine"
        elif self.decode_disabled:
            reason = f"static decoder off for the run: {self.decode_disabled}"
        elif self.continuous_disabled:
            reason = self.continuous_disabled
        elif extra.get("decode_slots") not in (None, "") and not int(extra["decode_slots"]):
            reason = "turned off (-O decode_slots=0)"
        elif model is not None and (why := fast.unsupported_reason(model)) is not None:
            reason = f"model not served by the static decoder: {why}"
        elif not slots:
            reason = f"batch size {self.batch_size or 1}: nothing to refill alongside one page"
        else:
            reason = "not used yet: no batch had more pages than slots"
        facts["decode_continuous_reason"] = reason
        return facts

    # ----------------------------------------------------------------- one batch's state and results
    def new_tracker(self, params: GenerationParams, prompt_len: int, batch: int,
                    row_limits: Optional[list[int]] = None):
        """Stop tracking for a batch; `row_limits`: each row ends ("length") at its own count."""
        from .generation import new_tracker

        stop_ids, stop_strings = self.stops()
        return new_tracker(prompt_len, batch, stop_ids=stop_ids, stop_strings=stop_strings,
                           decode_raw=self.adapter.decode_raw,
                           loop_guard=params.loop_guard and not self.exact_length,
                           row_limits=row_limits, loop_settings=self.adapter.loop_settings)

    def generation_state(self, inputs: dict, task: str, params: GenerationParams, max_new: int, prompt_len: int,
                         row_limits: Optional[list[int]] = None):
        """A fresh tracker, the logits processors and the generate() arguments for a batch."""
        from .generation import generation_state

        attention = inputs["attention_mask"]
        stop_ids, _stop_strings = self.stops()
        tracker = self.new_tracker(params, prompt_len, attention.shape[0], row_limits)
        model_processors = self.adapter.logits_processors(task, params, inputs)
        penalty = self.adapter.repetition_penalty(params)
        self.facts["repetition_penalty"] = penalty
        processors, gen_kwargs = generation_state(
            attention, prompt_len, tracker, model_processors, penalty=penalty, max_new=max_new,
            exact_length=self.exact_length, do_sample=bool(params.do_sample),
            pad_token_id=self.adapter.pad_token_id(), stop_ids=stop_ids, bos_token_id=self.adapter.bos_token_id())
        return tracker, processors, gen_kwargs

    def raw_output(self, ids: list[int], reason: str, params: GenerationParams, input_tokens: int,
                   generate_s: float, preprocess_s: float, extra: dict) -> RawOutput:
        """One request's generated ids (up to its end) as text, with its finish reason."""
        from .generation import raw_output

        stop_ids, stop_strings = self.stops()
        return raw_output(ids, reason, decode=self.adapter.decode, stop_ids=stop_ids, stop_strings=stop_strings,
                          trim_loops=bool(params.loop_guard and not self.exact_length),
                          loop_settings=self.adapter.loop_settings, input_tokens=input_tokens,
                          generate_s=generate_s, preprocess_s=preprocess_s, extra=extra)

    # ----------------------------------------------------------------- device helpers
    def _on_device(self, inputs: dict) -> dict:
        """The adapter's inputs on its device, with an all-ones attention mask where it has none."""
        import torch

        inputs = self.adapter.to_device(inputs)
        if inputs.get("attention_mask") is None:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return inputs

    def _on_cuda(self) -> bool:
        import torch
        return self.adapter.device.startswith("cuda") and torch.cuda.is_available()

    def _note_peak_memory(self) -> None:
        import torch

        device = torch.device(self.adapter.device)
        torch.cuda.synchronize()
        self.peak_memory_bytes = max(self.peak_memory_bytes, int(torch.cuda.max_memory_allocated(device)))


# The BackendOptions.extra keys the runner and the batch sizing read (-O KEY=VALUE).
RUN_OPTION_KEYS = frozenset({"decode", "decode_graphs", "decode_len_bucket", "decode_sync_every", "decode_max_len",
                             "decode_slots", "decode_refill_chunk", "decode_prefill_tokens",
                             "probe_pages", "probe_tokens", "probe_margin"})
