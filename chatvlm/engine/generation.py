"""One batch's generation settings and its results, from plain inputs.

Model-agnostic: stop tokens and strings, the decode function, the model's own logits
processors and the penalty come from the backend as data and callables.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..records import RawOutput


def max_new_within_context(max_new: int, max_positions: Optional[int], prompt_len: int) -> int:
    """New tokens a batch may generate: `max_new` within the model's context (if known)."""
    if max_positions:
        max_new = max(1, min(max_new, max_positions - prompt_len))
    return max_new


def new_tracker(prompt_len: int, batch: int, *, stop_ids: Sequence[int], stop_strings: Sequence[str],
                decode_raw: Callable[[list[int]], str], loop_guard: bool,
                row_limits: Optional[list[int]] = None, loop_settings: Optional[dict[str, Any]] = None):
    """Stop tracking for a batch (EOS, stop strings, loop guard, per-row limits);
    `row_limits`: each row ends ("length") at its own count."""
    from ..loop_guard import make_tracker

    return make_tracker(prompt_len, batch, stop_ids=list(stop_ids), stop_strings=list(stop_strings),
                        decode=decode_raw,   # stop strings; markup-only repeats
                        loop_guard=loop_guard, row_limits=row_limits, **(loop_settings or {}))


def generation_state(attention_mask, prompt_len: int, tracker, model_processors: list, *, penalty: float,
                     max_new: int, exact_length: bool, do_sample: bool, pad_token_id: int,
                     stop_ids: Sequence[int], bos_token_id: Optional[int]) -> tuple[list, dict[str, Any]]:
    """The logits processors (a padding-safe repetition penalty first, when not 1.0, then
    the model's own) and the generate() arguments for one left-padded batch.

    `exact_length`: every row runs exactly `max_new` tokens (bench --synthetic)."""
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    from ..loop_guard import PaddingSafeRepetitionPenalty, as_logits_processor

    pad_lengths = [prompt_len - int(n) for n in attention_mask.sum(dim=1).tolist()]
    processors = [as_logits_processor(p) for p in model_processors]
    if penalty != 1.0:
        processors.insert(0, as_logits_processor(PaddingSafeRepetitionPenalty(penalty, pad_lengths)))
    # A fresh config: only what chatvlm decides (greedy, stops, budget), nothing inherited
    # from the checkpoint's generation_config.json (sampling defaults, penalties).
    generation_config = GenerationConfig(
        max_new_tokens=max_new, min_new_tokens=max_new if exact_length else None,
        do_sample=bool(do_sample), num_beams=1,
        pad_token_id=pad_token_id, eos_token_id=list(stop_ids) or None,
        bos_token_id=bos_token_id,
    )
    gen_kwargs: dict[str, Any] = dict(
        generation_config=generation_config, logits_processor=LogitsProcessorList(processors),
        stopping_criteria=StoppingCriteriaList([tracker]),
    )
    return processors, gen_kwargs


def text_loop_settings(loop_settings: dict[str, Any]) -> dict[str, Any]:
    """trim_repetition keywords matching the token-level settings (scaled ~2 chars/token)."""
    out: dict[str, Any] = {}
    if "min_repeats" in loop_settings:
        out["min_repeats"] = max(2, int(loop_settings["min_repeats"]) - 2)
    if "min_span" in loop_settings:
        out["min_span"] = int(loop_settings["min_span"])
    return out


def raw_output(ids: list[int], reason: str, *, decode: Callable[[list[int]], str], stop_ids: Sequence[int],
               stop_strings: Sequence[str], trim_loops: bool, loop_settings: dict[str, Any], input_tokens: int,
               generate_s: float, preprocess_s: float, extra: dict) -> RawOutput:
    """One page's generated ids (up to its end) as text, with its finish reason: the stop
    token and anything from a stop string on are cut; with `trim_loops`, a row that ran
    out ("length") or looped has its repeated tail trimmed (and then counts as "loop")."""
    from ..loop_guard import trim_repetition

    text_ids = ids[:-1] if (reason == "stop" and ids and ids[-1] in stop_ids) else ids
    text = decode(text_ids)
    if reason == "stop":
        for s in stop_strings:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
    trimmed = False
    if trim_loops and reason in ("loop", "length"):
        text, trimmed = trim_repetition(text, **text_loop_settings(loop_settings))
        if trimmed:
            reason = "loop"
    return RawOutput(text=text, input_tokens=input_tokens, output_tokens=len(ids), finish_reason=reason,
                     generate_s=generate_s, preprocess_s=preprocess_s, extra={**extra, "loop_trimmed": trimmed})
