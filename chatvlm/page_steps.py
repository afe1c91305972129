"""The steps of one page after it is rendered: recognise (in a batch), postprocess, write.

The pipeline runs them in this process; a cluster worker (chatvlm.distributed) runs the
first two where the page's pixels are, and the driver writes. Both call these functions,
so a page becomes the same PageResult and the same files wherever it was recognised.
"""

from __future__ import annotations

import time
from typing import Optional

from .config import RunConfig
from .errors import OutputError
from .i18n import _
from .layout import blocks_to_markdown, draw_overlay, picture_crops
from .textnorm import markdown_to_text
from .paths import path_text
from .records import Page, PageResult, RawOutput, Reporter
from .registry import ModelSpec
from .scheduler import failure_reason, generate_with_backoff
from .timing import stopwatch
from .writers import page_stem, write_page


def recognise_batch(config: RunConfig, backend, batch: list[Page], shrink) -> tuple[list, float]:
    """One batch through the backend (split on failure, see generate_with_backoff), with
    each page's recognise/preprocess timings set; returns the raw outputs and the seconds taken."""
    start = time.perf_counter()
    raws = generate_with_backoff(lambda b: backend.generate_batch(b, config.task, config.generation), batch, shrink,
                                 release=backend.release_memory)
    elapsed = time.perf_counter() - start
    for page, raw in zip(batch, raws):
        record_times(page, raw, shared_s=elapsed / len(batch))
    return raws, elapsed


def record_times(page: Page, raw, shared_s: Optional[float] = None) -> None:
    """A page's recognise/preprocess timings: its own from its RawOutput where the engine
    measured them, else its share `shared_s` of its batch's time (None: leave it unset)."""
    own = raw.generate_s if isinstance(raw, RawOutput) and raw.generate_s else None
    if own is not None or shared_s is not None:
        page.timings["recognise"] = own if own is not None else shared_s
    if isinstance(raw, RawOutput) and raw.preprocess_s:
        page.timings["preprocess"] = raw.preprocess_s


def postprocess_page(config: RunConfig, spec: ModelSpec, backend, page: Page, raw, reporter: Reporter) -> PageResult:
    """A raw generation into a PageResult (text, markdown, layout, picture crops), not yet written.

    Runs where the page's pixels are: in this process, or on a cluster worker.
    """
    reason = failure_reason(raw)
    if reason is not None:
        reporter.message(_("{path} page {page}: recognition failed: {reason}").format(path=path_text(page.source), page=page.page, reason=reason), "error")
        return PageResult.failed(page, spec.name, _("recognition failed: {reason}").format(reason=reason))
    timings = page.timings
    try:
        with stopwatch(timings, "postprocess"):
            result = backend.postprocess(page, raw, config.task)
            _add_page_images(config, page, result)
        result.timings = timings
        result.empty = has_no_text(result)
        if result.empty:
            reporter.message(_("{path} page {page}: no text on this page").format(path=path_text(page.source), page=page.page), "info")
    except Exception as exc:
        reporter.message(_("{path} page {page}: cannot write output: {reason}").format(path=path_text(page.source), page=page.page, reason=exc), "error")
        return PageResult.failed(page, spec.name, f"postprocess/write failed: {exc.__class__.__name__}: {exc}")
    if result.finish_reason == "loop":
        reporter.message(_("{path} page {page}: the model started repeating itself; output cut at the repetition").format(
            path=path_text(page.source), page=page.page), "warning")
    return result


def has_no_text(result: PageResult) -> bool:
    """A blank page, a photo or a form without words: nothing to read, which is no failure."""
    if (result.text or "").strip() or any(block.text.strip() for block in result.layout or []):
        return False
    return not markdown_to_text(result.markdown or "").strip()


def write_result(config: RunConfig, spec: ModelSpec, result: PageResult, reporter: Reporter) -> PageResult:
    """Write a postprocessed page's files; a page that cannot be written becomes a failed one."""
    if result.status != "ok":
        return result
    page = result.page
    try:
        with stopwatch(result.timings, "write"):
            result.outputs = write_page(config.out, result, config.formats)
    except OutputError:
        raise   # the output folder itself failed: the run stops (run() says so once)
    except Exception as exc:
        reporter.message(_("{path} page {page}: cannot write output: {reason}").format(path=path_text(page.source), page=page.page, reason=exc), "error")
        return PageResult.failed(page, spec.name, f"postprocess/write failed: {exc.__class__.__name__}: {exc}")
    return result


def _add_page_images(config: RunConfig, page: Page, result: PageResult) -> None:
    """Picture crops for the markdown, and the overlay picture, from the page's pixels."""
    if result.layout is None:
        return
    if page.image is None:
        if config.skip_headers:
            result.markdown = blocks_to_markdown(result.layout, skip_headers=True)
        return
    stem = page_stem(page.page)
    if "markdown" in config.formats and any(b.category == "Picture" for b in result.layout):
        names, crops = picture_crops(page.image, result.layout, stem)
        result.markdown = blocks_to_markdown(result.layout, skip_headers=config.skip_headers, picture_names=names)
        result.images.update(crops)
    elif config.skip_headers:
        result.markdown = blocks_to_markdown(result.layout, skip_headers=True)
    if config.overlay:
        result.images[f"{stem}.layout.png"] = draw_overlay(page.image, result.layout)
