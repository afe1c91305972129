"""One left-padded batch through the static decoder, with transformers' generate as the
fallback, and its generated rows as RawOutputs.

The rules for falling back: an out-of-memory error goes up (the scheduler splits the
batch); a request the decoder declines (Unsupported) takes generate for this batch only;
any other failure of the decoder takes generate and disables the decoder for the run (it
is an optimisation; the report says why). The backend hands in the decoder, a factory of
fresh generation state (both paths mutate it) and its model's generate.
"""

from __future__ import annotations

from typing import Any, Callable

from ..records import RawOutput


def decode_batch(inputs: dict, state: tuple[Any, list, dict], *, decoder,
                 fresh_state: Callable[[], tuple[Any, list, dict]], generate: Callable[..., Any], max_new: int,
                 pad_token_id: int, facts: dict[str, Any], disable: Callable[[str], None]) -> tuple[Any, Any]:
    """(generated ids incl. the prompt, the stop tracker that saw them). `state`: the
    tracker, processors and generate() arguments for the first try; `fresh_state` makes
    new ones for the fallback. `decoder` None: generate only. The decoder's facts, or the
    fallback and its reason, go into `facts`; `disable(reason)` turns the static decoder
    off for the run."""
    import torch

    tracker, processors, gen_kwargs = state
    with torch.inference_mode():
        out = None
        if decoder is not None:
            try:
                out = decoder.generate(inputs, gen_kwargs, max_new_tokens=max_new, tracker=tracker,
                                       processors=processors, pad_token_id=pad_token_id)
                facts.update(decoder.facts())
            except Exception as exc:
                from .lm import HF, Unsupported
                from ..scheduler import is_out_of_memory
                # The decoder has freed its cache, graphs and pool before raising.
                if is_out_of_memory(exc):
                    raise   # the scheduler splits the batch
                if isinstance(exc, Unsupported):
                    # This request only (e.g. too long for the decoder): this batch goes to generate.
                    reason = f"static decoder declined this batch: {exc}"[:300]
                else:
                    # Our decoder is an optimisation: if it breaks on this model or library
                    # version, say so in the report and use transformers for the rest of the run.
                    reason = f"static decoder failed: {exc.__class__.__name__}: {exc}"[:300]
                    disable(reason)
                facts["decode"], facts["decode_reason"] = HF, reason
                count_fallback(facts, "decode", reason)
                tracker, processors, gen_kwargs = fresh_state()
        if out is None:
            out = generate(**inputs, **gen_kwargs)
    return out, tracker


def count_fallback(facts: dict[str, Any], kind: str, reason: str) -> None:
    """One more fallback of `kind` ("decode": a batch the static decoder declined or failed
    on; "continuous": work the continuous engine declined or failed on) and, the first
    time, its reason. The per-batch `decode_reason` / `decode_continuous_reason` are
    cleared when a later batch succeeds; these stay for the whole run."""
    facts[f"{kind}_fallbacks"] = int(facts.get(f"{kind}_fallbacks") or 0) + 1
    facts.setdefault(f"{kind}_first_fallback_reason", reason)


def batch_outputs(out, prompt_len: int, tracker, input_counts: list[int],
                  to_raw: Callable[..., RawOutput], generate_s: float, preprocess_s: float) -> list[RawOutput]:
    """Each row's new ids, up to where the tracker says it ended, as a RawOutput
    (`to_raw(ids, reason, input_tokens, generate_s, preprocess_s, extra)`); the batch's
    time is shared evenly."""
    generated = out[:, prompt_len:].tolist()
    batch = len(generated)
    results: list[RawOutput] = []
    for row in range(batch):
        n, reason = tracker.result(row, len(generated[row]))
        results.append(to_raw(generated[row][:n], reason, int(input_counts[row]), generate_s / batch,
                              preprocess_s / batch, {"batch_size": batch, "batch_generate_s": generate_s}))
    return results
