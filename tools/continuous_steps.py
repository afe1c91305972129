"""Decode steps of continuous batching vs batch-by-batch decoding, on pages of uneven length.

Counts, not times: a tiny random-weight Qwen2-VL (chatvlm.testing, a push towards EOS
so pages stop at different points) on the CPU, fp32, greedy. The same pages run
(a) in batches of `--slots` pages through the compacting static decoder, each batch
decoded until its longest page ends, and (b) through the continuous engine with
`--slots` rows, a finished row refilled with the next page. Both must give the same
tokens; the script prints the steps each took, the rows computed, and the useful rows.

    PYTHONPATH=. python3 tools/continuous_steps.py --pages 32 --slots 8 --tokens 96
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=32)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96, help="max new tokens per page")
    parser.add_argument("--eos-boost", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from chatvlm.config import BackendOptions, GenerationParams
    from chatvlm.records import Page
    from chatvlm.registry import get_spec
    from chatvlm.testing import build_tiny_checkpoint

    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    pages = []
    for i in range(args.pages):
        w, h = int(rng.integers(40, 260)), int(rng.integers(40, 260))
        pages.append(Page(source=Path(f"p{i}.png"), doc_key="d", page=1, index=i,
                          image=Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_checkpoint("qwen_vl_2b", Path(tmp), eos_boost=args.eos_boost)
        spec = get_spec("qwen_vl_2b")
        be = spec.backend_class()(spec, BackendOptions(model_path=folder, device="cpu", extra={"decode": "fast"}))
        be.load()
        params = GenerationParams(max_new_tokens=args.tokens)

        be.options.extra["decode_slots"] = 0
        batched = []
        for start in range(0, len(pages), args.slots):
            batched += be.generate_batch(pages[start:start + args.slots], "text", params)
        stats = be.runner.decoder.stats
        by_batch = {"steps": stats.steps, "row_steps": stats.row_steps}

        be.runner.decoder = None
        be.options.extra["decode_slots"] = args.slots
        continuous = be.generate_batch(pages, "text", params)
        facts = be.describe()

    same = [(r.text, r.output_tokens) for r in batched] == [(r.text, r.output_tokens) for r in continuous]
    lengths = [r.output_tokens for r in continuous]
    useful = sum(max(0, n - 1) for n in lengths)
    report = {
        "hardware": "CPU, 1 thread; tiny random-weight Qwen2-VL (counts only, not speed)",
        "pages": args.pages, "slots": args.slots, "max_new_tokens": args.tokens,
        "tokens_per_page": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
        "same_tokens": same,
        "useful_row_steps": useful,
        "batch_by_batch": by_batch,
        "continuous": {"steps": facts["continuous_steps"], "row_steps": facts["continuous_row_steps"],
                       "busy_row_steps": facts["continuous_busy_row_steps"],
                       "prefills": facts["continuous_prefills"]},
    }
    report["steps_saved"] = f"{1 - report['continuous']['steps'] / by_batch['steps']:.1%}"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
