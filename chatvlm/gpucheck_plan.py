"""The GPU check's plan: which bench runs, how many pages each, in what order, how long.

Every target needs its runs (chatvlm.gpucheck_targets says which): each VLM through the
engine at 512 tokens per page, qwen_vl_2b once more at 256-1024 tokens per page, and each
VLM other than qwen_vl_2b through transformers `generate` (`-O decode=hf`, fewer pages, one
batch) for its speed-up. Runs that only inform (qwen_vl_2b through `generate`, batch 1)
join when the budget has room for them.

The `generate` baselines skip bench's warm-up page (`--no-warmup`): only their pages/s is
judged, `generate` compiles nothing and captures no graph, so the cold page would cost a
full page of decoding (about a seventh of the planned time over the six baselines) to remove a
start-up of well under a second from a batch of tens of seconds. The engine runs keep it:
their first-page, roofline and speed figures must not include compilation or graph capture.

The runs come in priority order: qwen_vl_2b's, DeepSeek-OCR's, the other engines', then the
`generate` baselines. Each run's time cap comes out of one budget, so if the check runs
long it is the last runs that are cut, never the check's own time limit that is hit.

The planned seconds come from PLANNING: figures for one H100/H200 that size the plan, not
measurements (each run's wall time in gpu_check.json is the figure to correct them with).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

A4_200DPI = (1654, 2339)
VLMS = ("qwen_vl_2b", "qwen3_vl_2b", "got_ocr_hf", "dots_ocr", "phi3_vision", "deepseek_ocr2", "deepseek_ocr")
BASELINE_MODEL = "qwen_vl_2b"          # its own targets are absolute; the others' are against generate
# Pages that cost several times more (dots.ocr's and Phi-3.5-vision's thousands of image
# tokens, DeepSeek-OCR's MoE language model): fewer of them keep the check in its budget.
HEAVY_MODELS = ("dots_ocr", "phi3_vision", "deepseek_ocr2", "deepseek_ocr")
TARGET_TOKENS = "512"
TARGET_RANGE = "256-1024"

# What a run is for (gpucheck_targets picks its runs by these).
ENGINE, RANGE, GENERATE, BATCH1 = "engine", "range", "generate", "batch1"


@dataclass(frozen=True)
class Figures:
    """Planning figures of one model on one H100/H200 (bf16, A4 at 200 DPI, 512 tokens/page)."""

    start_s: float            # process start to a loaded model: imports, build, the card's limits, roofline counts
    first_page_s: float       # one cold page through the engine (CUDA graphs captured on the way)
    pages_per_s: float        # the engine over a full run
    generate_page_s: float    # one page through transformers generate at batch 1 (512 steps)


# Guesses, not measurements: the engine at its target rate (qwen_vl_2b 8 pages/s,
# DeepSeek-OCR 2 pages/s) or a little below, transformers generate at about 20-25 ms a step
# (DeepSeek-OCR's MoE about 15-20), a process start of 10-15 s. A batch of n pages through
# generate takes about (1 + n/20) times one page.
PLANNING: dict[str, Figures] = {
    "qwen_vl_2b": Figures(start_s=12, first_page_s=5, pages_per_s=8.0, generate_page_s=11),
    "qwen3_vl_2b": Figures(start_s=12, first_page_s=5, pages_per_s=6.0, generate_page_s=12),
    "got_ocr_hf": Figures(start_s=10, first_page_s=4, pages_per_s=10.0, generate_page_s=10),
    "dots_ocr": Figures(start_s=14, first_page_s=6, pages_per_s=3.0, generate_page_s=11),
    "phi3_vision": Figures(start_s=15, first_page_s=6, pages_per_s=2.5, generate_page_s=13),
    "deepseek_ocr": Figures(start_s=15, first_page_s=6, pages_per_s=2.0, generate_page_s=8),
    "deepseek_ocr2": Figures(start_s=15, first_page_s=6, pages_per_s=2.0, generate_page_s=10),
}
GENERATE_BATCH_GROWTH = 0.05          # per page in the batch


@dataclass
class Run:
    """One `chatvlm bench --synthetic` process: a model and how it is asked to run."""

    id: str                                   # folder name under runs/
    model: str
    role: str = ENGINE
    decode: str = "auto"                      # -O decode=...
    batch: str = "auto"                       # -b
    pages: int = 1
    tokens: str = TARGET_TOKENS               # --tokens: N, or A-B
    seed: Optional[int] = None                # --seed, with a range
    optional: bool = False                    # informs only: joins when the budget has room
    warmup: bool = True                       # bench's warm-up page (False: --no-warmup)
    estimate_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.id, "model": self.model, "role": self.role, "decode": self.decode, "batch": self.batch,
                "pages": self.pages, "tokens": self.tokens, "seed": self.seed, "optional": self.optional,
                "warmup": self.warmup, "estimate_s": round(self.estimate_s, 1)}


@dataclass
class Settings:
    out: Path
    pages: int = 64                           # engine runs of the light models (qwen_vl_2b's two included)
    heavy_pages: int = 24                     # engine runs of HEAVY_MODELS
    generate_pages: int = 16                  # generate baselines (one batch of this many)
    heavy_generate_pages: int = 8
    batch1_pages: int = 0                     # qwen_vl_2b at batch 1 (informs only; 0: none)
    tokens: str = TARGET_TOKENS               # every run but the range run
    range_tokens: str = TARGET_RANGE          # qwen_vl_2b's second run
    seed: int = 1
    device: Optional[str] = None
    models: Sequence[str] = VLMS
    baselines: bool = True                    # the generate baselines (the speed-up targets need them)
    optional: str = "auto"                    # runs that only inform: auto (when they fit), all, none
    budget_s: float = 480.0                   # all runs together; page drawing and start-up come on top
    slack: float = 2.0                        # a run's cap: this many times its planned seconds ...
    floor_s: float = 30.0                     # ... but at least this ...
    max_run_s: float = 150.0                  # ... and at most this
    reserve_s: float = 20.0                   # kept back for each run still to come
    page_size: tuple[int, int] = A4_200DPI
    max_pixels: Optional[int] = None
    synthetic_configs: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)   # -O per model
    dry_run: bool = False
    python: str = sys.executable


def tokens_mean(label: str) -> float:
    low, _sep, high = str(label).partition("-")
    return (int(low) + int(high or low)) / 2


def estimate_s(run: Run, settings: Settings) -> float:
    """Planned seconds of a run, from PLANNING scaled by its tokens per page."""
    fig = PLANNING[run.model]
    scale = tokens_mean(run.tokens) / 512
    if run.decode == "hf":
        batch = int(run.batch) if run.batch.isdigit() else run.pages
        batches = math.ceil(run.pages / max(1, batch))
        one_batch = fig.generate_page_s * scale * (1 + GENERATE_BATCH_GROWTH * min(batch, run.pages))
        warmup = fig.generate_page_s * scale if run.warmup else 0.0
        return fig.start_s + warmup + batches * one_batch
    if run.role == BATCH1:
        return fig.start_s + fig.first_page_s * scale * (1 + run.pages)
    return fig.start_s + fig.first_page_s * scale + run.pages / (fig.pages_per_s / scale)


def plan_runs(settings: Settings) -> list[Run]:
    """The runs in priority order, each with its planned seconds; optional runs only where
    they fit the budget (settings.optional "auto"), always ("all") or never ("none")."""
    models = [m for m in VLMS if m in settings.models]

    def engine_pages(model: str) -> int:
        return settings.heavy_pages if model in HEAVY_MODELS else settings.pages

    def generate_pages(model: str) -> int:
        return settings.heavy_generate_pages if model in HEAVY_MODELS else settings.generate_pages

    def generate_run(model: str, optional: bool = False) -> Run:
        pages = generate_pages(model)
        return Run(id=f"{model}-generate", model=model, role=GENERATE, decode="hf", batch=str(pages), pages=pages,
                   tokens=settings.tokens, optional=optional, warmup=False)

    runs: list[Run] = []
    if BASELINE_MODEL in models:
        runs.append(Run(id=BASELINE_MODEL, model=BASELINE_MODEL, pages=engine_pages(BASELINE_MODEL),
                        tokens=settings.tokens))
        runs.append(Run(id=f"{BASELINE_MODEL}-range", model=BASELINE_MODEL, role=RANGE,
                        pages=engine_pages(BASELINE_MODEL), tokens=settings.range_tokens, seed=settings.seed))
    order = [m for m in ("deepseek_ocr", "deepseek_ocr2") if m in models]
    order += [m for m in models if m != BASELINE_MODEL and m not in order]
    runs += [Run(id=m, model=m, pages=engine_pages(m), tokens=settings.tokens) for m in order]
    if settings.baselines:
        runs += [generate_run(m) for m in order]
    extras: list[Run] = []
    if BASELINE_MODEL in models:
        if settings.baselines:
            extras.append(generate_run(BASELINE_MODEL, optional=True))
        if settings.batch1_pages:
            extras.append(Run(id=f"{BASELINE_MODEL}-batch1", model=BASELINE_MODEL, role=BATCH1, batch="1",
                              pages=settings.batch1_pages, tokens=settings.tokens, optional=True))
    for run in runs + extras:
        run.estimate_s = estimate_s(run, settings)
    planned = sum(r.estimate_s for r in runs)
    for run in extras:
        fits = planned + run.estimate_s <= settings.budget_s
        if settings.optional == "all" or (settings.optional == "auto" and fits):
            runs.append(run)
            planned += run.estimate_s
    return runs


def left_out(settings: Settings, runs: Sequence[Run]) -> list[str]:
    """Optional runs the plan left out (they did not fit the budget, or --optional none)."""
    everything = plan_runs(Settings(**{**settings.__dict__, "optional": "all"}))
    kept = {r.id for r in runs}
    return [r.id for r in everything if r.id not in kept]


def planned_s(runs: Sequence[Run]) -> float:
    return sum(r.estimate_s for r in runs)


def run_cap(remaining_s: float, runs_after: int, estimate: float, settings: Settings) -> float:
    """A run's time cap: `slack` times its planned seconds, within [floor_s, max_run_s], and
    never so much that less than `reserve_s` is left for each run after it."""
    wanted = min(settings.max_run_s, max(settings.floor_s, settings.slack * estimate))
    return max(0.0, min(wanted, remaining_s - settings.reserve_s * max(0, runs_after)))
