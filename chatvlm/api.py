"""The Python API: load a model once, then recognise or ask about page images.

    import chatvlm

    model = chatvlm.load_model("auto")            # same choice as `chatvlm ocr --model auto`
    print(model.ocr("scan.png"))                  # plain text
    print(model.markdown(image))                  # markdown (a PIL image, a path or bytes)
    for page in chatvlm.pages("report.pdf", pages="1-3"):
        print(model.ocr(page))

A `Model` wraps one loaded backend and runs it through the same path as the CLI (the
continuous engine's page stream where the backend has one, else `generate_batch`; then the
pipeline's postprocessing step), so API results equal CLI results for the same page.
The names ChatVLMLLM users know (`ModelLoader.load_model`, `process_image`,
`parse_document`) are thin aliases.
"""

from __future__ import annotations

import io
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from .config import BackendOptions, GenerationParams
from .errors import ChatVLMError, InputError, UsageError
from .i18n import _
from .records import LayoutBlock, Page, PageResult
from .registry import ModelSpec, cannot_chat_message

__all__ = ["ImageInput", "Model", "ModelLoader", "RecognitionError", "load_model", "pages"]

logger = logging.getLogger("chatvlm")

#: What the API accepts as one page: a PIL image, a path to an image file, the bytes of
#: one, or a numpy array (H x W x 3). PDFs and multi-page TIFFs go through `pages()`.
ImageInput = Union["PIL.Image.Image", str, Path, bytes, bytearray, Any]

_BACKEND_FIELDS = {f.name for f in fields(BackendOptions)} - {"model_path", "device", "extra"}
_GENERATION_FIELDS = {f.name for f in fields(GenerationParams)}
_ATTENTION = ("flash_attention_2", "sdpa", "eager")


class RecognitionError(ChatVLMError):
    """One or more pages could not be recognised.

    `results` holds what did succeed, in input order, with None for each failed page,
    so a batch never loses the pages that worked.
    """

    def __init__(self, message: str, results: Optional[list] = None, errors: Optional[dict[int, str]] = None):
        super().__init__(message)
        self.results = results or []
        self.errors = errors or {}


class LogReporter:
    """Pipeline hints and warnings (e.g. "no VLM weights, using tesseract") go to logging."""

    def start(self, total: int, model: str) -> None: ...
    def advance(self, result: PageResult) -> None: ...
    def finish(self) -> None: ...

    def message(self, text: str, level: str = "info") -> None:
        {"error": logger.error, "warning": logger.warning}.get(level, logger.info)(text)


# --------------------------------------------------------------------------- images

def to_image(image: ImageInput, max_pixels: int = 100_000_000):
    """One page as an RGB PIL image, from a PIL image, a path, bytes or a numpy array.

    Raises UsageError for a PDF or a multi-page file (use `chatvlm.pages(path)`), and
    InputError for a file that cannot be read.
    """
    from PIL import Image

    from .image_files import load_image_frame
    from .sources import open_document, sniff, to_rgb

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise InputError(_("{path}: no such file or folder").format(path=path))
        try:
            doc = open_document(path, path.stem, max_pixels)
            if doc.kind == "pdf" or doc.page_count > 1:
                raise UsageError(_("{path} has several pages (or is a PDF); pass them one at a time: "
                                   "for page in chatvlm.pages(path): ...").format(path=path))
            return doc.render(1, max_pixels=max_pixels)
        except InputError as exc:   # named as pages() names it
            raise InputError(f"{path}: {exc}") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        kind = sniff(data[:1024])
        if kind == "pdf":
            raise UsageError(_("these bytes are a PDF; save them to a file and use chatvlm.pages(path)"))
        if kind is None:
            raise InputError(_("not a PDF or a supported image (PNG, JPEG, TIFF, WebP, GIF, BMP); it starts with '{head}'").format(
                head=data[:16].decode("utf-8", "replace")))
        # The header is checked against our limit, not Pillow's global one, as for files.
        return load_image_frame(io.BytesIO(data), kind, 0, max_pixels)
    if hasattr(image, "__array_interface__"):
        return to_rgb(Image.fromarray(image))
    raise UsageError(_("unsupported image type {type}: pass a PIL image, a path or bytes").format(type=type(image).__name__))


def pages(path: Union[str, Path], pages: Union[None, str, int, Iterable[int]] = None, dpi: int = 200,
          max_pixels: int = 100_000_000) -> Iterator["PIL.Image.Image"]:
    """Yield the pages of a PDF, a multi-page TIFF or an image as RGB PIL images, one at a time.

    `pages` selects pages (1-based): "1-3,7", 2, or [1, 4]; None means every page.
    PDF pages are rendered lazily at `dpi`. A page that cannot be read raises InputError.
    """
    from .sources import iter_pages

    if isinstance(pages, int):
        selection: Optional[str] = str(pages)
    elif pages is None or isinstance(pages, str):
        selection = pages
    else:
        selection = ",".join(str(int(n)) for n in pages)
    for page in iter_pages([str(path)], selection, dpi=dpi, max_pixels=max_pixels):
        if page.error:
            where = f"{page.source}" if page.page is None else _("{path} page {page}").format(path=page.source, page=page.page)
            raise InputError(f"{where}: {page.error}")
        yield page.image


# --------------------------------------------------------------------------- the model

class Model:
    """A loaded model. Create it with `load_model()`; use it as a context manager to free it."""

    def __init__(self, backend, params: Optional[GenerationParams] = None):
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.params = params or GenerationParams()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def can_chat(self) -> bool:
        return bool(self.spec.can_chat)

    def __repr__(self) -> str:
        return f"<chatvlm.Model {self.name}>"

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the model (GPU memory, worker threads)."""
        self.backend.close()

    # ----------------------------------------------------------------- recognition
    def recognize(self, images: Union[ImageInput, Sequence[ImageInput]], task: str = "markdown") -> Any:
        """Full `PageResult` records (text, markdown, layout, tokens, finish reason).

        One image gives one result; a list gives a list, in the same order.
        """
        single = not isinstance(images, (list, tuple))
        results = self._run([images] if single else list(images), self._task(task), strict=single)
        return results[0] if single else results

    def ocr(self, image: ImageInput) -> str:
        """Plain text of one page."""
        return self._text(self._run([image], self._task("text"))[0])

    def markdown(self, image: ImageInput) -> str:
        """Markdown of one page (headings, tables as HTML, formulas as $$ blocks)."""
        return self._markdown(self._run([image], self._task("markdown"))[0])

    def layout(self, image: ImageInput) -> list[LayoutBlock]:
        """Layout blocks of one page: bbox in page pixels, category, text, reading order."""
        if "layout" not in self.spec.tasks:
            raise UsageError(_("model '{name}' gives no layout boxes; use dots_ocr, deepseek_ocr, deepseek_ocr2 or tesseract").format(
                name=self.name))
        return list(self._run([image], "layout")[0].layout or [])

    def ocr_batch(self, images: Iterable[ImageInput], task: str = "text") -> list[str]:
        """Text (task="text") or markdown (task="markdown") of many pages, batched on the device.

        Raises RecognitionError if a page fails; its `results` keep every page that worked.
        """
        results = self._run(list(images), self._task(task), strict=False)
        return [self._markdown(r) if task == "markdown" else self._text(r) for r in results]

    def ask(self, image: ImageInput, question: str, history: Optional[list[tuple[str, str]]] = None) -> str:
        """Answer a free-form question about one page.

        `history` is the conversation so far as (question, answer) pairs; it is not changed.
        Only chat-capable models answer (see `chatvlm models`); others raise UsageError.
        """
        if not self.can_chat:
            raise UsageError(cannot_chat_message(self.spec))
        picture = to_image(image)
        return self.backend.ask(picture, question, list(history or []), self.params)

    # ----------------------------------------------------------------- ChatVLMLLM names
    def process_image(self, image: ImageInput, prompt: Optional[str] = None) -> str:
        """ChatVLMLLM name: OCR one page to text (with `prompt`: ask that question instead)."""
        if prompt:
            return self.ask(image, prompt)
        return self.ocr(image)

    def parse_document(self, image: ImageInput, return_json: bool = True) -> Union[dict[str, Any], str]:
        """ChatVLMLLM name: structure of one page.

        return_json=True gives {"model", "width", "height", "blocks": [...], "markdown", "text"};
        False gives the markdown string.
        """
        task = self._task("layout" if "layout" in self.spec.tasks else "markdown")
        result = self._run([image], task)[0]
        markdown = self._markdown(result)
        if not return_json:
            return markdown
        return {
            "model": self.name,
            "width": result.width,
            "height": result.height,
            "blocks": [b.to_dict() for b in (result.layout or [])],
            "markdown": markdown,
            "text": self._text(result),
            "finish_reason": result.finish_reason,
        }

    # ----------------------------------------------------------------- internals
    def _task(self, wanted: str) -> str:
        tasks = self.spec.tasks
        if wanted in tasks:
            return wanted
        if wanted == "text" and "markdown" in tasks:
            return "markdown"
        if wanted in ("text", "markdown") and "layout" in tasks:
            return "layout"
        if wanted not in ("text", "markdown", "layout"):
            raise UsageError(_("unknown task '{task}'; choose text, markdown or layout").format(task=wanted))
        return tasks[0]

    @staticmethod
    def _text(result: PageResult) -> str:
        if result.text is not None:
            return result.text
        from .textnorm import markdown_to_text
        return markdown_to_text(result.markdown or "")

    @staticmethod
    def _markdown(result: PageResult) -> str:
        return result.markdown if result.markdown is not None else (result.text or "")

    def _run(self, images: list[ImageInput], task: str, strict: bool = True) -> list[PageResult]:
        """The pages' results in input order; RecognitionError (keeping the good ones) if any failed.

        A backend with a continuous engine takes the pages as one stream (as `chatvlm ocr`
        does): its rows stay busy across the whole list, finished pages come back as they
        finish and are put back in order here. Other backends go batch by batch. Either
        way a page becomes its PageResult through the pipeline's own step
        (page_steps.postprocess_page), so API results equal CLI results.

        `strict` (one image): an image that cannot be read raises InputError as it is.
        Otherwise (a list) it fails alone, like a page whose recognition failed.
        """
        from .config import RunConfig
        from .page_steps import postprocess_page, record_times
        from .scheduler import failure_reason, generate_with_backoff

        # No files are written (formats=()): the postprocessing step only makes the record.
        config = RunConfig(inputs=[], out=Path("."), model=self.name, task=task, formats=(), generation=self.params)
        reporter = LogReporter()
        results: list[Optional[PageResult]] = [None] * len(images)
        errors: dict[int, str] = {}
        state = {"size": max(1, self.backend.default_batch_size(self.params))}

        def shrink(size: int) -> None:   # out of memory: later batches use the smaller size
            state["size"] = min(state["size"], size)

        def batch_path(batch: list[Page]) -> list:
            return generate_with_backoff(lambda b: self.backend.generate_batch(b, task, self.params), batch,
                                         shrink, release=self.backend.release_memory)

        def finish(page: Page, raw) -> None:
            record_times(page, raw)      # the page's own times, as the CLI records them
            result = postprocess_page(config, self.spec, self.backend, page, raw, reporter)
            page.image = None            # done: its pixels are not kept
            if result.status == "ok":
                results[page.index] = result
            else:
                errors[page.index] = failure_reason(raw) or result.error or "failed"

        def readable_pages() -> Iterator[Page]:
            # Decoded as the engine takes them, so a long list of paths never sits in memory as pixels.
            for index, image in enumerate(images):
                source = Path(image) if isinstance(image, (str, Path)) else Path(f"<image {index + 1}>")
                try:
                    picture = to_image(image)
                except InputError as exc:
                    if strict:
                        raise
                    errors[index] = str(exc)
                    continue
                yield Page(source=source, doc_key=source.stem, page=1, image=picture, index=index)

        if not self._stream(readable_pages(), task, shrink, batch_path, finish):
            pages = readable_pages()
            while True:
                # A continuous decoder that does not stream gets four batches' worth at once
                # (as the pipeline's window) and refills a finished page's row from them.
                size = state["size"] * (4 if self.backend.decode_slots() else 1)
                chunk = [page for _, page in zip(range(size), pages)]
                if not chunk:
                    break
                for page, raw in zip(chunk, batch_path(chunk)):
                    finish(page, raw)
        if errors:
            detail = "; ".join(_("image {n}: {reason}").format(n=i + 1, reason=r) for i, r in sorted(errors.items()))
            raise RecognitionError(_("recognition failed: {reason}").format(reason=detail), results, errors)
        return results  # type: ignore[return-value]

    def _stream(self, pages: Iterator[Page], task: str, shrink, batch_path, finish) -> bool:
        """The pages through the backend's continuous engine as one stream, each finished
        page to `finish` as it comes; False (nothing done) where the backend does not stream."""
        if not self.backend.decode_slots():
            return False
        stream = self.backend.generate_stream(pages, task, self.params, on_shrink=shrink, fallback=batch_path)
        if stream is None:
            return False
        try:
            for page, raw in stream:
                finish(page, raw)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                self.backend.abort()     # the engine's work in flight is abandoned
            stream.close()
            raise
        return True


# --------------------------------------------------------------------------- loading

def load_model(name: str = "auto", model_path: Union[str, Path, None] = None, device: Optional[str] = None,
               **options: Any) -> Model:
    """Load a model by its registry name (see `chatvlm models`), with the CLI's rules.

    name        a model name, or "auto" for the best model whose weights are here
                (tesseract when there are none)
    model_path  a local checkpoint folder instead of the Hugging Face cache/hub
    device      "cuda", "cuda:N" or "cpu" (default: the best available)
    options     dtype, attn ("flash_attention_2" | "sdpa" | "eager"), lang (tesseract,
                e.g. "rus+eng"), max_new_tokens, batch_size, max_pixels, min_pixels,
                repetition_penalty; anything else goes to the backend as a model-specific knob.
    """
    from .backends.base import create_backend
    from .pipeline import resolve_model

    backend_kw: dict[str, Any] = {}
    generation_kw: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in options.items():
        if key in _GENERATION_FIELDS:
            generation_kw[key] = value
        elif key in _BACKEND_FIELDS:
            backend_kw[key] = value
        else:
            extra[key] = value
    if backend_kw.get("attn") and backend_kw["attn"] not in _ATTENTION:
        raise UsageError(_("--attn must be flash_attention_2, sdpa or eager"))
    path = Path(model_path).expanduser() if model_path is not None else None
    spec = resolve_model(name, LogReporter(), path)
    backend = create_backend(spec, BackendOptions(model_path=path, device=device, extra=extra, **backend_kw))
    backend.load()
    return Model(backend, GenerationParams(**generation_kw))


class ModelLoader:
    """ChatVLMLLM name: `ModelLoader.load_model(name, model_path=None)`."""

    @staticmethod
    def load_model(name: str = "auto", model_path: Union[str, Path, None] = None, **options: Any) -> Model:
        return load_model(name, model_path=model_path, **options)

    @staticmethod
    def unload_model(model: Model) -> None:
        model.close()
