"""Run configuration: what the CLI (or the Python API) asks a run to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

OUTPUT_FORMATS = ("text", "markdown", "json")
# Spellings of one dtype (`--dtype bf16` and `--dtype bfloat16` give the same pages).
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
# BackendOptions.extra keys that decide how fast pages are made, not what they say.
RUN_ONLY_EXTRA = frozenset({"workers"})


@dataclass
class GenerationParams:
    """Per-run generation settings; None means "the model spec's default"."""

    max_new_tokens: Optional[int] = None
    batch_size: Optional[int] = None        # None = backend default ("auto" on GPU)
    do_sample: bool = False
    repetition_penalty: Optional[float] = None
    loop_guard: bool = True                 # stop and trim generations that repeat themselves
    max_pixels: Optional[int] = None        # override the model's pixel budget
    min_pixels: Optional[int] = None


@dataclass
class BackendOptions:
    """How to load a backend: where the weights are and where it runs."""

    model_path: Optional[Path] = None       # local checkpoint folder (else the hub cache)
    device: Optional[str] = None            # "cuda", "cuda:1", "cpu"; None = best available
    dtype: Optional[str] = None             # "bfloat16", "float16", "float32"; None = by device
    attn: Optional[str] = None              # "flash_attention_2" | "sdpa" | "eager"; None = best
    lang: Optional[str] = None              # tesseract languages, e.g. "eng+rus"
    synthetic: bool = False                 # random weights from the full config (bench --synthetic)
    extra: dict = field(default_factory=dict)  # model-specific knobs (num_crops, mode, ...)


@dataclass
class RunConfig:
    inputs: list[str]
    out: Path
    model: str = "auto"
    task: str = "markdown"                   # "text" | "markdown" | "layout"
    formats: tuple[str, ...] = ("text", "markdown")
    pages: Optional[str] = None              # "1-3,7"
    max_pages: Optional[int] = None          # stop planning after this many pages in all (bench --max-pages)
    dpi: int = 200
    force: bool = False
    overlay: bool = False
    skip_headers: bool = False               # leave page headers/footers out of markdown
    max_image_pixels: int = 50_000_000       # pages above this are downscaled, far above refused (sources.py)
    backend: BackendOptions = field(default_factory=BackendOptions)
    generation: GenerationParams = field(default_factory=GenerationParams)
    prefetch: int = 4                        # pages rendered ahead of the recogniser
    workers: Optional[int] = None            # CPU engines: parallel workers (None = cores)
    command: str = "ocr"
    ray: Optional[str] = None                # None: this machine; "local", "auto", "ray://host:10001", "host:port"
    gpus_per_worker: float = 1.0             # with ray: GPU share of one model worker (0.5 = two per GPU)
    model_options: tuple[str, ...] = ()      # keys the user gave with -O, checked against the chosen backend

    def options_key(self) -> dict:
        """Every setting that changes what a page's files say: resume only trusts a page done
        with the same. Settings that change only speed or placement (device, attention kernel,
        batch size, workers, Ray, prefetch, page selection) are left out on purpose."""
        gen = self.generation
        return {
            "task": self.task,
            "formats": sorted(self.formats),
            "overlay": self.overlay,                  # page-NNNN.layout.png is an output too
            "skip_headers": self.skip_headers,
            "dpi": self.dpi,
            "max_image_pixels": self.max_image_pixels,   # larger pages are downscaled to it
            "model_path": str(self.backend.model_path) if self.backend.model_path is not None else None,
            "dtype": DTYPE_ALIASES.get((self.backend.dtype or "").lower(), self.backend.dtype),
            "lang": self.backend.lang,
            "synthetic": self.backend.synthetic,
            "max_new_tokens": gen.max_new_tokens,
            "do_sample": gen.do_sample,
            "repetition_penalty": gen.repetition_penalty,
            "loop_guard": gen.loop_guard,
            "min_pixels": gen.min_pixels,
            "max_pixels": gen.max_pixels,
            "extra": {k: self.backend.extra[k] for k in sorted(self.backend.extra) if k not in RUN_ONLY_EXTRA},
        }

def task_for_formats(formats: tuple[str, ...], command: str) -> str:
    """Pick the one generation task that serves every requested output format.

    A VLM pass is expensive, so each page is recognised once: layout JSON needs the
    layout task (markdown and text are derived from it), markdown needs the markdown
    task (text is derived from it), and text alone gets the plain-OCR prompt.
    """
    if command == "layout" or "json" in formats:
        return "layout"
    if "markdown" in formats:
        return "markdown"
    return "text"
