"""What one `chatvlm bench` run is asked to do, and what it hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import RunConfig

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
LAYOUTS = ("olmocr-bench",)


@dataclass
class BenchConfig:
    """What one `chatvlm bench` run does. `base` carries the page and generation options
    shared with `ocr` (inputs, pages, dpi, device, dtype, batch size, ...)."""

    base: RunConfig
    models: Optional[list[str]] = None          # None = every model with local weights, plus tesseract
    model_paths: dict[str, Path] = field(default_factory=dict)
    repeats: int = 1
    layout: Optional[str] = None                # "olmocr-bench": also <name>_pg<N>_repeat<K>.md
    synthetic: bool = False
    tokens: int = 512                           # --synthetic: tokens per page (the low end of a range)
    tokens_max: Optional[int] = None            # --tokens A-B: each page draws its count in tokens..tokens_max
    seed: int = 0                               # the draw's seed (recorded in bench.json)
    synthetic_configs: dict[str, Path] = field(default_factory=dict)
    ignore_case: str = "auto"                   # "auto" | "yes" | "no"
    warmup: bool = True
    roofline: bool = True                       # count FLOPs/bytes on the warm-up page, measure the card
    command_line: Optional[list[str]] = None

    @property
    def out(self) -> Path:
        return self.base.out

    @property
    def token_range(self) -> Optional[tuple[int, int]]:
        """(A, B) when pages draw their own token count, else None (every page `tokens`)."""
        if self.tokens_max is None or self.tokens_max == self.tokens:
            return None
        return self.tokens, self.tokens_max

    @property
    def tokens_label(self) -> str:
        rng = self.token_range
        return f"{rng[0]}-{rng[1]}" if rng else str(self.tokens)


@dataclass
class BenchOutcome:
    exit_code: int
    report: dict[str, Any]
