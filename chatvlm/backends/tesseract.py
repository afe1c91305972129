"""Tesseract 5 as an offline CPU engine, through tesserocr (the C++ API, no subprocess).

One page: orientation and script detection (OSD) turns rotated scans upright, then a
full recognition pass whose block / paragraph / line boxes become text, markdown
(paragraphs) and layout blocks. Pages run in parallel worker threads, each with its
own API handle: tesserocr releases the GIL while Tesseract works, so every core is used.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from ..config import BackendOptions, GenerationParams
from ..errors import ModelUnavailableError
from ..i18n import _, default_ocr_languages
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
        self._local = threading.local()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._version = ""

    # ------------------------------------------------------------------ load
    def load(self) -> None:
        start = time.perf_counter()
        if self.workers > 1:
            # Parallelism comes from our worker threads; Tesseract's own OpenMP threads on
            # top of them only oversubscribe the cores (the advice OCRmyPDF follows too).
            os.environ.setdefault("OMP_THREAD_LIMIT", "1")
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
        self._api()  # fail here, not on the first page, if Tesseract cannot start
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tesseract")
        self.load_s = time.perf_counter() - start

    def _api(self):
        """This thread's Tesseract handles (recognition and OSD), created once."""
        import tesserocr

        api = getattr(self._local, "api", None)
        if api is None:
            api = tesserocr.PyTessBaseAPI(path=self.tessdata, lang=self.lang, psm=tesserocr.PSM.AUTO)
            self._local.api = api
            self._local.osd = (tesserocr.PyTessBaseAPI(path=self.tessdata, lang="osd", psm=tesserocr.PSM.OSD_ONLY)
                               if self._has_osd else None)
        return api

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        return {"engine": self._version or "tesseract", "lang": self.lang, "device": "cpu",
                "workers": self.workers, "dtype": None, "attention": None}

    def default_batch_size(self, params: GenerationParams) -> int:
        # A batch ends when its slowest page does, leaving workers idle; eight pages per
        # worker make that tail small (measured on 2 cores: 4 pages a batch gave 1.46x a
        # single thread, 16 gave 2.0x).
        return params.batch_size or max(1, self.workers * 8)

    # ------------------------------------------------------------------ recognise
    def generate_batch(self, pages: list[Page], task: str, params: GenerationParams) -> list[RawOutput]:
        if self._pool is None:
            raise RuntimeError("load() first")
        return list(self._pool.map(self._recognise, pages))

    def _recognise(self, page: Page) -> RawOutput:
        import tesserocr

        start = time.perf_counter()
        api = self._api()
        image = page.image
        rotation = self._orientation(image)
        if rotation:
            # OSD says how far the text is rotated clockwise; turn it back upright. The
            # page keeps the upright image so boxes, crops and overlays all share one frame.
            image = image.rotate(rotation, expand=True)
            page.image = image
        scale = upscale_factor(image.size)
        api.SetImage(image.resize((image.width * scale, image.height * scale), _lanczos()) if scale > 1 else image)
        api.Recognize()
        blocks = []
        paragraphs = []
        iterator = api.GetIterator()
        level_block = tesserocr.RIL.BLOCK
        level_para = tesserocr.RIL.PARA
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
                text = (iterator.GetUTF8Text(level_para) or "").strip()
                if text:
                    block_paras.append(text)
                    paragraphs.append(text)
                if not iterator.Next(level_para):
                    break
            if block_bbox is not None:
                blocks.append((block_bbox, block_type, block_paras))
        confidence = api.MeanTextConf()
        full_text = api.GetUTF8Text() or ""
        api.Clear()
        return RawOutput(
            text=full_text,
            finish_reason="stop",
            generate_s=time.perf_counter() - start,
            extra={
                "rotation": rotation,
                "size": image.size,
                # boxes back in the page's own pixels
                "blocks": [([v // scale for v in b] if b else None, int(t) if t is not None else 0, p) for b, t, p in blocks],
                "confidence": confidence,
            },
        )

    def _orientation(self, image) -> int:
        osd = getattr(self._local, "osd", None)
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
