"""Micro-benchmark: per-step decode time, transformers `generate` vs chatvlm.engine.decoder.

Builds a Qwen2-1.5B-shaped language model (the text part of qwen_vl_2b's full config in
chatvlm/data/qwen_vl_2b.json: 28 layers, hidden 1536, 12 query / 2 KV heads, vocab 151936) with
RANDOM weights, a prompt of --prompt-len tokens, and times decode steps only (prefill
subtracted / excluded) at each batch size. Random weights: the speed is honest, the
tokens are noise. Runs on whatever device is present (CUDA: bf16 + CUDA graphs).

    python3 tools/bench_decode.py                                  # full size, GPU
    python3 tools/bench_decode.py --layers 4 --prompt-len 256 --steps 16 --batches 1,8,64   # CPU smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_lm(layers, device, dtype, vocab=None):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from chatvlm.registry import get_spec

    full = get_spec("qwen_vl_2b").full_config
    config = Qwen2Config(
        vocab_size=vocab or full["vocab_size"], hidden_size=full["hidden_size"],
        intermediate_size=full["intermediate_size"], num_hidden_layers=layers or full["num_hidden_layers"],
        num_attention_heads=full["num_attention_heads"], num_key_value_heads=full["num_key_value_heads"],
        max_position_embeddings=full["max_position_embeddings"], rms_norm_eps=full["rms_norm_eps"],
        rope_theta=full["rope_theta"], tie_word_embeddings=True, hidden_act="silu",
    )
    config._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    return model.eval().requires_grad_(False)


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_generate(model, inputs, steps, device, repeats=2):
    """Seconds per decode step of transformers generate (run(steps+1) - run(1)) / steps."""
    import torch
    from transformers import GenerationConfig

    def run(n):
        cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                               eos_token_id=None)
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, generation_config=cfg)
        sync(device)
        return time.perf_counter() - t

    run(2)                                          # warm-up
    return (min(run(steps + 1) for _ in range(repeats)) - min(run(1) for _ in range(repeats))) / steps


def time_static(model, inputs, steps, device, graphs, repeats=2):
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from chatvlm.engine.decoder import StaticDecoder
    from chatvlm.loop_guard import make_tracker

    dec = StaticDecoder(model, use_graphs=graphs)
    batch, prompt_len = inputs["input_ids"].shape

    def run(n):
        tracker = make_tracker(prompt_len, batch, stop_ids=[], loop_guard=False)
        cfg = GenerationConfig(max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
        kwargs = dict(generation_config=cfg, stopping_criteria=StoppingCriteriaList([tracker]))
        before = dec.stats.decode_s, dec.stats.steps
        dec.generate(dict(inputs), kwargs, max_new_tokens=n, tracker=tracker, pad_token_id=0)
        return dec.stats.decode_s - before[0], dec.stats.steps - before[1]

    run(min(steps, 8) + 1)                           # warm-up (and graph capture)
    per_step = min(s / max(n, 1) for s, n in (run(steps + 1) for _ in range(repeats)))
    return per_step, dec


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the full 28)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default: the full 151936)")
    ap.add_argument("--prompt-len", type=int, default=1290, help="prompt tokens in the cache (1 MP page ~ 1290)")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--no-graphs", action="store_true", help="our step without CUDA graphs")
    ap.add_argument("--skip-generate", action="store_true")
    args = ap.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    torch.manual_seed(0)
    model = build_lm(args.layers, device, dtype, args.vocab)
    n_layers = model.config.num_hidden_layers
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    graphs = device.startswith("cuda") and not args.no_graphs
    print(f"Qwen2-1.5B-shaped LM, RANDOM weights: {n_layers} layers, hidden {model.config.hidden_size}, "
          f"vocab {model.config.vocab_size}, {str(dtype).replace('torch.', '')}, prompt {args.prompt_len} tokens, "
          f"{args.steps} decode steps; device {name}; ours: {'CUDA graphs' if graphs else 'eager'}")
    rows = []
    for b in [int(x) for x in args.batches.split(",") if x]:
        ids = torch.randint(100, model.config.vocab_size, (b, args.prompt_len), device=device)
        mask = torch.ones_like(ids)
        if b > 1:
            mask[1:, : args.prompt_len // 8] = 0            # some left padding
        inputs = {"input_ids": ids, "attention_mask": mask}
        hf = None if args.skip_generate else time_generate(model, inputs, args.steps, device)
        ours, dec = time_static(model, inputs, args.steps, device, graphs)
        rows.append((b, hf, ours))
        del dec
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"{'batch':>5} | {'generate ms/step':>16} | {'chatvlm ms/step':>15} | {'speed-up':>8} | {'tok/s ours':>10}")
    print("-" * 68)
    for b, hf, ours in rows:
        hf_s = f"{hf * 1e3:16.1f}" if hf is not None else f"{'-':>16}"
        up = f"{hf / ours:7.2f}x" if hf is not None else f"{'-':>8}"
        print(f"{b:5d} | {hf_s} | {ours * 1e3:15.1f} | {up} | {b / ours:10.0f}")


if __name__ == "__main__":
    main()
