"""Tesseract 5 as an offline CPU engine, through tesserocr (the C++ API, no subprocess).

One page: orientation and script detection (OSD) turns rotated scans upright, then a
full recognition pass whose block / paragraph / line boxes become text, markdown
(paragraphs) and layout blocks. Pages run in worker processes, one per core, each with
its own Tesseract handles. tesserocr holds Python's GIL during orientation detection and
image transfer (about a third of a page's time), so worker threads left part of the
second core idle; processes do not.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Optional

from ..config import BackendOptions, GenerationParams
from ..errors import ModelUnavailableError
from ..i18n import _, default_ocr_languages
from ..interrupt import Interrupted
from ..layout import blocks_to_markdown
from ..records import LayoutBlock, Page, PageResult, RawOutput
from ..registry import ModelSpec
from .base import Backend

DEFAULT_LANG = "eng+rus"   # with a Russian interface: "rus+eng" (i18n.default_ocr_languages)
# OSD is only trusted above this confidence; below it a page is left as rendered.
MIN_ORIENTATION_CONFIDENCE = 2.0

TESSDATA_CANDIDATES = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
    "/opt/homebrew/share/tessdata",
)


def find_tessdata() -> Optional[str]:
    env = os.environ.get("TESSDATA_PREFIX")
    candidates = ([env, os.path.join(env, "tessdata")] if env else []) + list(TESSDATA_CANDIDATES)
    for folder in candidates:
        if folder and Path(folder, "eng.traineddata").exists():
            return folder.rstrip("/") + "/"
    return None


def available_languages(tessdata: str) -> list[str]:
    return sorted(p.stem for p in Path(tessdata).glob("*.traineddata"))


class TesseractBackend(Backend):
    uses_gpu = False

    def __init__(self, spec: ModelSpec, options: Optional[BackendOptions] = None):
        super().__init__(spec, options)
        self.lang = self.options.lang or default_ocr_languages()
        self.tessdata: Optional[str] = None
        self.workers = int(self.options.extra.get("workers") or os.cpu_count() or 1)
        self._pool: Optional[ProcessPoolExecutor] = None
        self._aborted_pool: Optional[ProcessPoolExecutor] = None
        self._has_osd = False
        self._version = ""

    # ------------------------------------------------------------------ load
    def load(self) -> None:
        start = time.perf_counter()
        try:
            import tesserocr
        except ImportError as exc:
            raise ModelUnavailableError(_("the tesseract engine needs the tesserocr package: pip install tesserocr ({reason})").format(reason=exc)) from None
        self.tessdata = find_tessdata()
        if self.tessdata is None:
            raise ModelUnavailableError(_("no Tesseract language data found; install tesseract-ocr-eng and tesseract-ocr-rus (or set TESSDATA_PREFIX)"))
        have = available_languages(self.tessdata)
        missing = [code for code in self.lang.split("+") if code not in have]
        if missing:
            raise ModelUnavailableError(_("Tesseract language data missing for {langs} in {path}; installed: {have}").format(
                langs=", ".join(missing), path=self.tessdata, have=", ".join(have)))
        self._has_osd = "osd" in have
        self._version = tesserocr.tesseract_version().splitlines()[0]
        self._start_pool()
        self.load_s = time.perf_counter() - start

    def _start_pool(self) -> None:
        # "spawn": a fresh interpreter per worker, never a fork of a process that already
        # runs render and writer threads.
        # Workers spawned by the main thread may tie their life to it with PR_SET_PDEATHSIG
        # (which fires when the spawning *thread* ends); the parent watch covers the rest.
        tie_to_thread = threading.current_thread() is threading.main_thread()
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.tessdata, self.lang, self._has_osd, self.workers > 1, os.getpid(), tie_to_thread))
        try:
            # Start every worker now, so a Tesseract that cannot start fails here, not on page one.
            with _main_not_reimported():
                list(self._pool.map(_worker_ready, range(self.workers)))
        except Exception as exc:
            self.close()
            raise ModelUnavailableError(_("Tesseract could not start: {reason}").format(reason=exc)) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Kill the workers now (pages in flight are abandoned); a later batch starts new ones."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        self._aborted_pool = pool
        # ProcessPoolExecutor has no public way to stop workers mid-page before Python 3.14.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            try:
                process.kill()
            except (OSError, AttributeError):
                pass
        pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {"engine": self._version or "tesseract", "lang": self.lang, "device": "cpu",
                "workers": self.workers, "dtype": None, "attention": None}

    def default_batch_size(self, params: GenerationParams) -> int:
        # A batch ends when its slowest page does, leaving workers idle; eight pages per
        # worker keep that tail small.
        return params.batch_size or max(1, self.workers * 8)

    # ------------------------------------------------------------------ recognise
    def generate_batch(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        if self._pool is None:
            if self.tessdata is None:
                raise RuntimeError("load() first")
            self._start_pool()   # after abort(): fresh workers for the next run
        pool = self._pool
        try:
            with _main_not_reimported():
                found = list(pool.map(recognise_image, [page.image for page in pages]))
        except BrokenProcessPool:
            if pool is self._aborted_pool:
                raise Interrupted() from None   # abort() killed them: not a page's fault, no retry
            # A worker died (Tesseract crashed on some page): start fresh ones and let the
            # scheduler split the batch, so only the page that kills Tesseract fails.
            self.close()
            self._start_pool()
            raise RuntimeError(_("a Tesseract worker crashed on this batch")) from None
        outputs = []
        for page, result in zip(pages, found):
            if result["rotation"]:
                # The page keeps the upright image, so boxes, crops and overlays share one frame.
                page.image = page.image.rotate(result["rotation"], expand=True)
            outputs.append(RawOutput(text=result["text"], finish_reason="stop", generate_s=result["seconds"],
                                     extra={k: result[k] for k in ("rotation", "size", "blocks", "confidence")}))
        return outputs

    # ------------------------------------------------------------------ postprocess
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        width, height = raw.extra.get("size") or page.size
        layout = []
        for bbox, block_type, paras in raw.extra.get("blocks", []):
            if not bbox:
                continue
            category = _category(block_type, paras)
            text = "\n\n".join(paras)
            if category == "Section-header" and text:
                text = "## " + " ".join(text.split())
            if not text and category != "Picture":
                continue
            x1, y1, x2, y2 = bbox
            if category == "Picture" and (x2 - x1) * (y2 - y1) < MIN_PICTURE_AREA * width * height:
                continue   # specks, rules and separators Tesseract calls images
            layout.append(LayoutBlock(bbox=[int(x1), int(y1), int(x2), int(y2)], category=category, text=text, order=len(layout)))
        text = raw.text.strip()
        text = (text + "\n") if text else ""
        markdown = blocks_to_markdown(layout)
        return PageResult(
            page=page, model=self.spec.name, text=text, markdown=markdown, layout=layout,
            width=int(width), height=int(height), finish_reason=raw.finish_reason,
        )


# Tesseract reads best at about 300 DPI. A page under this many pixels on its long side is
# likely a low-resolution image (screenshots, web images at 72-150 DPI) and is upscaled 2x:
# on the corpus this took the Russian page from 2.1 % to 1.5 % CER and recovered the body
# text of a 600x800 article page that Tesseract otherwise missed.
SMALL_PAGE_LONG_SIDE = 1600
# Text-less "image" regions smaller than this fraction of the page are noise, not pictures.
MIN_PICTURE_AREA = 0.005


def upscale_factor(size: tuple[int, int]) -> int:
    return 2 if max(size) < SMALL_PAGE_LONG_SIDE else 1


def _lanczos():
    from PIL import Image
    return Image.LANCZOS


# Tesseract's PolyBlockType values (tesserocr.PT) onto the layout categories.
_BLOCK_CATEGORIES = {
    1: "Text",            # FLOWING_TEXT
    2: "Section-header",  # HEADING_TEXT
    3: "Text",            # PULLOUT_TEXT
    4: "Formula",         # EQUATION
    5: "Formula",         # INLINE_EQUATION
    6: "Table",           # TABLE
    7: "Text",            # VERTICAL_TEXT
    8: "Caption",         # CAPTION_TEXT
    9: "Picture",         # FLOWING_IMAGE
    10: "Picture",        # HEADING_IMAGE
    11: "Picture",        # PULLOUT_IMAGE
}


def _category(block_type: int, paragraphs: list[str]) -> str:
    category = _BLOCK_CATEGORIES.get(block_type, "Text")
    if category == "Picture" and paragraphs:
        # Tesseract calls some text regions images; text it read there is text.
        return "Text"
    return category


# --------------------------------------------------------------------------- worker processes

_ENGINE: dict[str, Any] = {}


@contextmanager
def _main_not_reimported():
    """Start worker processes without re-running the caller's __main__ in them.

    A "spawn" worker normally imports the parent's main script (or `-m` module) first: a
    user's script without an `if __name__ == "__main__"` guard would run again in every
    worker, and `python - <<EOF` has no file to import at all. The workers need only this
    module, so the main module's file and spec are hidden while workers start.
    """
    main = sys.modules.get("__main__")
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if main is not None and key in main.__dict__}
    try:
        for key in saved:
            setattr(main, key, None) if key == "__spec__" else delattr(main, key)
        yield
    finally:
        for key, value in saved.items():
            setattr(main, key, value)


def _start_worker(tessdata: str, lang: str, has_osd: bool, single_thread: bool, parent: int, tie_to_thread: bool) -> None:
    """Runs once in each worker process: Tesseract handles for recognition and for OSD."""
    _die_with_parent(parent, tie_to_thread)
    # Ctrl-C reaches the whole process group: the parent decides how to stop (it kills the
    # workers), so Ctrl-C must not kill a worker mid-page and look like a Tesseract crash.
    # SIGTERM stays deadly: ProcessPoolExecutor ends the workers of a broken pool with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if single_thread:
        # Parallelism comes from the worker processes; Tesseract's own OpenMP threads on
        # top of them only oversubscribe the cores (OCRmyPDF does the same).
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    import tesserocr

    _ENGINE["api"] = tesserocr.PyTessBaseAPI(path=tessdata, lang=lang, psm=tesserocr.PSM.AUTO)
    _ENGINE["osd"] = tesserocr.PyTessBaseAPI(path=tessdata, lang="osd", psm=tesserocr.PSM.OSD_ONLY) if has_osd else None


# How often a worker checks that its parent is alive (when PR_SET_PDEATHSIG is not used).
PARENT_WATCH_INTERVAL_S = 0.5


def _die_with_parent(parent: int, tie_to_thread: bool) -> None:
    """End this worker when the chatvlm process dies, however it dies (kill -9 included).

    Without this, a killed parent leaves its workers (and multiprocessing's resource tracker,
    which lives while they hold its pipe) running forever: they wait on a queue whose other
    end they hold themselves. On Linux the kernel sends SIGKILL at the parent's death
    (PR_SET_PDEATHSIG); everywhere a thread checks that the parent is still ours.
    """
    if tie_to_thread and sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:   # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_WATCH_INTERVAL_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


PR_SET_PDEATHSIG = 1   # linux/prctl.h


def _worker_ready(_index: int) -> bool:
    return _ENGINE.get("api") is not None


def recognise_image(image) -> dict[str, Any]:
    """One page, in a worker: orientation, recognition, blocks and paragraphs (all picklable)."""
    import tesserocr

    start = time.perf_counter()
    api = _ENGINE["api"]
    rotation = _orientation(image)
    if rotation:
        # OSD says how far the text is rotated clockwise; turn it back upright.
        image = image.rotate(rotation, expand=True)
    scale = upscale_factor(image.size)
    api.SetImage(image.resize((image.width * scale, image.height * scale), _lanczos()) if scale > 1 else image)
    api.Recognize()
    blocks = []
    iterator = api.GetIterator()
    level_block, level_para = tesserocr.RIL.BLOCK, tesserocr.RIL.PARA
    if iterator is not None:
        block_type = None
        block_bbox = None
        block_paras: list[str] = []
        while True:
            if iterator.IsAtBeginningOf(level_block):
                if block_bbox is not None:
                    blocks.append((block_bbox, block_type, block_paras))
                block_type = iterator.BlockType()
                block_bbox = iterator.BoundingBox(level_block)
                block_paras = []
            text = _utf8_text(lambda: iterator.GetUTF8Text(level_para)).strip()
            if text:
                block_paras.append(text)
            if not iterator.Next(level_para):
                break
        if block_bbox is not None:
            blocks.append((block_bbox, block_type, block_paras))
    confidence = api.MeanTextConf()
    full_text = _utf8_text(api.GetUTF8Text)
    api.Clear()
    return {
        "text": full_text,
        "rotation": rotation,
        "size": image.size,
        # boxes back in the page's own pixels
        "blocks": [([v // scale for v in b] if b else None, int(t) if t is not None else 0, p) for b, t, p in blocks],
        "confidence": confidence,
        "seconds": time.perf_counter() - start,
    }


def _utf8_text(get_text) -> str:
    """Text of a page or block; "" where there is none.

    tesserocr raises RuntimeError("No text returned") for a page or block without
    words (a blank page, a photo, a ruled form): that is an empty page, not a failure.
    """
    try:
        return get_text() or ""
    except RuntimeError as exc:
        if "no text" in str(exc).lower():
            return ""
        raise


def _orientation(image) -> int:
    osd = _ENGINE.get("osd")
    if osd is None:
        return 0
    try:
        osd.SetImage(image)
        result = osd.DetectOrientationScript()
    except Exception:
        return 0
    finally:
        osd.Clear()
    if not result:
        return 0
    degrees = int(result.get("orient_deg") or 0)
    if degrees and float(result.get("orient_conf") or 0.0) >= MIN_ORIENTATION_CONFIDENCE:
        return degrees
    return 0
