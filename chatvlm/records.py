"""The records that flow one way through chatvlm: source -> backend -> writer.

They are plain dataclasses with no torch in them, so that sources, writers and
postprocessing can be tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

# Stages every page passes through, in order; the report aggregates these keys.
STAGES = ("render", "preprocess", "recognise", "postprocess", "write")

# Tasks a backend can be asked to run on a page. "text" is plain OCR, "markdown"
# structured OCR, "layout" blocks with boxes (markdown is derived from them).
TASKS = ("text", "markdown", "layout")


@dataclass
class Page:
    """One page image (or one failed input) handed from sources to the backend.

    `image` is a PIL image in RGB, already rendered; it is dropped once the page
    has been recognised so a long batch does not hold every page in memory.
    """

    source: Path                    # the input file as given (after expansion)
    doc_key: str                    # output folder name, mirrors the input path
    page: Optional[int]             # 1-based page number; None when the file failed
    sha256: str = ""
    page_count: Optional[int] = None
    image: Any = None               # PIL.Image.Image
    error: Optional[str] = None     # set when the file or page could not be read
    timings: dict[str, float] = field(default_factory=dict)
    index: int = 0                  # position in the run, for ordering results

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size if self.image is not None else (0, 0)


@dataclass
class RawOutput:
    """What a backend's generate_batch returns for one page."""

    text: str
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    finish_reason: str = "stop"     # "stop" | "length" | "loop" | "error"
    generate_s: float = 0.0
    preprocess_s: float = 0.0
    error: Optional[str] = None     # a per-page failure inside a batch (e.g. OOM after splitting)
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific facts for postprocess


@dataclass
class LayoutBlock:
    """One block of a page: bbox [x1, y1, x2, y2] in pixels of the rendered page.

    A block without a place on the page keeps its text with `bbox` None, so markdown and
    text lose nothing; it is left out of overlays and picture crops. `problem` says what
    was wrong when the model gave an unusable box (missing, malformed, empty or off the
    page); it is None when the model gives no boxes for such blocks (Qwen3-VL's markdown
    boxes only pictures and tables).
    """

    bbox: Optional[list[int]]
    category: str
    text: str = ""
    order: int = 0
    confidence: Optional[float] = None
    problem: Optional[str] = None

    @property
    def placed(self) -> bool:
        return self.bbox is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bbox": list(self.bbox) if self.bbox is not None else None,
                               "category": self.category, "text": self.text, "order": self.order}
        if self.confidence is not None:
            out["confidence"] = round(float(self.confidence), 4)
        if self.problem:
            out["problem"] = self.problem
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayoutBlock":
        bbox = data.get("bbox")
        return cls(
            bbox=[int(v) for v in bbox] if bbox is not None else None,
            category=str(data.get("category", "Text")),
            text=str(data.get("text", "")),
            order=int(data.get("order", 0)),
            confidence=data.get("confidence"),
            problem=data.get("problem"),
        )


@dataclass
class PageResult:
    """A recognised page, ready for the writers."""

    page: Page
    model: str
    status: str = "ok"              # "ok" | "error" | "skipped"
    error: Optional[str] = None
    text: Optional[str] = None
    markdown: Optional[str] = None
    layout: Optional[list[LayoutBlock]] = None
    width: int = 0
    height: int = 0
    finish_reason: Optional[str] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    repaired: bool = False          # the model output was malformed and salvaged
    dropped_blocks: int = 0         # blocks the salvage left out (broken tail, repeats, bad boxes)
    empty: bool = False             # recognised, and the page holds no text (a blank back, a photo)
    timings: dict[str, float] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)  # extra images to write (crops, overlay): name -> PIL image
    outputs: list[str] = field(default_factory=list)      # written paths, relative to OUT

    @classmethod
    def failed(cls, page: Page, model: str, error: str) -> "PageResult":
        return cls(page=page, model=model, status="error", error=error, timings=dict(page.timings))


class Reporter:
    """Receives a run's progress events (pipeline, bench); the base class ignores them.

    The CLI's rich progress bar (ui.RichReporter), the Python API's logging and the tests
    subclass it; it sits here, beside the records it carries, so that every layer can
    name it without importing the pipeline.
    """

    def start(self, total: int, model: str) -> None: ...
    def advance(self, result: PageResult) -> None: ...
    def message(self, text: str, level: str = "info") -> None: ...
    def summary(self, report: dict[str, Any]) -> None:
        """The run's report, just before finish() (not called when the run broke off)."""
    def finish(self) -> None: ...
    def workers(self, rows: list[dict[str, Any]]) -> None:
        """Cluster runs: one row per model worker (node, pages, pages/s), updated as pages finish."""
