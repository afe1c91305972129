"""The backend contract every model family implements.

    load()                      the only method that touches disk or the hub
    generate_batch(pages, ...)  raw generations, one per page, in input order
    postprocess(page, raw, ...) pure string work: text / markdown / layout
    close()                     free the model (GPU memory) before the next one
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

from ..config import BackendOptions, GenerationParams
from ..records import Page, PageResult, RawOutput
from ..registry import ModelSpec


class Backend(ABC):
    #: False for engines that run on the CPU in parallel worker processes (tesseract)
    uses_gpu: bool = True
    #: the model-specific settings (-O KEY=VALUE, BackendOptions.extra) this backend reads
    option_keys: frozenset[str] = frozenset()

    def __init__(self, spec: ModelSpec, options: Optional[BackendOptions] = None):
        self.spec = spec
        self.options = options or BackendOptions()
        self.load_s: float = 0.0

    @abstractmethod
    def load(self) -> None:
        """Load weights (once). Raise ModelUnavailableError with a clear message on failure."""

    @abstractmethod
    def generate_batch(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        """Recognise a batch of pages; len(result) == len(pages), same order."""

    @abstractmethod
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        """Turn one raw generation into text / markdown / layout. No torch here."""

    def close(self) -> None:
        """Release the model. Backends holding GPU memory override this."""

    def release_memory(self) -> None:
        """Free caches the backend keeps between batches (e.g. a decoder's KV pool), after an
        out-of-memory error; the model stays loaded. Backends holding such caches override this."""

    def abort(self) -> None:
        """The run was interrupted: abandon work in flight at once (close() still follows).

        Work in the calling thread is interrupted by the signal itself; engines that run
        pages elsewhere (worker processes) stop them here.
        """

    def describe(self) -> dict[str, Any]:
        """Engine facts for the report: device, dtype, attention kernel, versions."""
        return {}

    def default_batch_size(self, params: GenerationParams) -> int:
        return params.batch_size or 1

    def decode_slots(self) -> int:
        """Rows a continuous decoder keeps busy (0: this backend decodes batch by batch).
        A backend with slots is handed the run's pages as a stream (`generate_stream`), or
        where it does not stream a whole window of pages in one generate_batch call, and
        refills a finished row with the next page."""
        return 0

    def generate_stream(self, pages, task: str, params: GenerationParams, *, on_shrink=None, fallback=None,
                        hold=None):
        """Pages taken lazily from an iterable, (page, RawOutput) pairs given back as each
        finishes (any order), with the rows kept busy across the whole run
        (chatvlm.engine.stream.PageStream). None: this backend (or this run) does not
        stream, and the caller goes window by window through generate_batch."""
        return None

    def page_cost(self, page: Page) -> float:
        """Relative cost of a page, for bucketing batches (GPU backends: image tokens)."""
        width, height = page.size
        return float(width * height)

    def ask(self, image, question: str, history: Optional[list[tuple[str, str]]] = None,
            params: Optional[GenerationParams] = None) -> str:
        """Answer a free-form question about one page (chat-capable VLMs only)."""
        from ..registry import cannot_chat_message
        from ..errors import UsageError
        raise UsageError(cannot_chat_message(self.spec))


def create_backend(spec: ModelSpec, options: Optional[BackendOptions] = None) -> Backend:
    return spec.backend_class()(spec, options)
