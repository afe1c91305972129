"""An uploaded file -> the page images a request asked for, within the server's limits.

Every refusal is an `ApiError` carrying the HTTP status and a message that names the
reason, so the client learns what to change: 413 for too large (bytes, pixels, pages),
415 for what is not an image or a PDF, 422 for a file that cannot be read (truncated,
corrupt, encrypted), 400 for a bad `pages` value.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional

from ..errors import InputError, UsageError
from ..i18n import _
from ..sources import REFUSE_FACTOR, open_document, parse_page_ranges, select_pages, sniff


class ApiError(Exception):
    """An error the client caused (or must wait out): its HTTP status and a clear message."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass
class Limits:
    max_upload_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 50_000_000          # per page, as uploaded (PDF pages are rendered within it)
    max_pages: int = 50                   # pages one request may ask for
    dpi: int = 200


@dataclass
class PageImage:
    number: int                           # 1-based page of the document
    image: object = None                  # PIL image, None when the page could not be rendered
    error: Optional[str] = None
    render_s: float = 0.0


@dataclass
class Upload:
    filename: str
    kind: str                             # "pdf", "png", ...
    page_count: int
    pages: list[PageImage] = field(default_factory=list)


def too_large(limit_bytes: int) -> ApiError:
    return ApiError(413, "too_large", _("the upload is larger than the limit of {mb:.0f} MB").format(mb=limit_bytes / 1024 / 1024))


def read_upload(stream: BinaryIO, filename: str, limits: Limits, pages: Optional[str] = None,
                single_page: Optional[int] = None) -> Upload:
    """Read the upload into a private temporary file, check it, render the selected pages.

    `pages` is a range like "1-3,7" (None: every page); `single_page` picks exactly one
    page (questions are about one page). Pages that fail to render come back with their
    error; if none renders, the request fails with the first reason.
    """
    try:
        ranges = parse_page_ranges(pages)
    except UsageError as exc:
        raise ApiError(400, "bad_pages", str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="chatvlm-upload-") as folder:
        path = Path(folder) / "upload"
        with open(path, "wb") as out:
            copied = _copy_limited(stream, out, limits.max_upload_bytes)
        if copied == 0:
            raise ApiError(400, "empty_file", _("{name}: empty file (0 bytes)").format(name=filename))
        with open(path, "rb") as fh:
            kind = sniff(fh.read(1024))
        if kind is None:
            raise ApiError(415, "unsupported_type", _("{name}: not a PDF or a supported image (PNG, JPEG, TIFF, WebP, GIF, BMP)").format(
                name=filename))
        if kind != "pdf":
            _check_image_pixels(path, filename, limits.max_pixels)
        try:
            doc = open_document(path, "upload", limits.max_pixels)
        except InputError as exc:
            raise ApiError(422, "unreadable", f"{filename}: {exc}") from None
        if single_page is not None:
            if not 1 <= single_page <= doc.page_count:
                raise ApiError(400, "bad_pages", _("{name}: there is no page {page}; the document has {count}").format(
                    name=filename, page=single_page, count=doc.page_count))
            numbers = [single_page]
        else:
            numbers = select_pages(doc.page_count, ranges)
        if not numbers:
            raise ApiError(400, "bad_pages", _("{name}: no pages selected; the document has {count}").format(
                name=filename, count=doc.page_count))
        if len(numbers) > limits.max_pages:
            raise ApiError(413, "too_many_pages", _("{name}: {n} pages selected, the limit is {limit}; choose fewer with 'pages'").format(
                name=filename, n=len(numbers), limit=limits.max_pages))
        upload = Upload(filename=filename, kind=kind, page_count=doc.page_count)
        oversized = 0
        for number in numbers:
            started = time.perf_counter()
            try:
                image = doc.render(number, limits.dpi, limits.max_pixels)
                upload.pages.append(PageImage(number, image=image, render_s=time.perf_counter() - started))
            except InputError as exc:
                upload.pages.append(PageImage(number, error=str(exc)))
                oversized += _pdf_page_pixels(doc, number, limits.dpi) > limits.max_pixels * REFUSE_FACTOR
    if all(page.image is None for page in upload.pages):
        status, code = (413, "too_many_pixels") if oversized == len(upload.pages) else (422, "unreadable")
        raise ApiError(status, code, f"{filename}: {upload.pages[0].error}")
    return upload


def _pdf_page_pixels(doc, number: int, dpi: int) -> float:
    points = doc.page_sizes.get(number) if doc.kind == "pdf" else None
    return points[0] / 72 * dpi * points[1] / 72 * dpi if points else 0.0


def _copy_limited(stream: BinaryIO, out: BinaryIO, limit: int) -> int:
    copied = 0
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return copied
        copied += len(chunk)
        if copied > limit:
            raise too_large(limit)
        out.write(chunk)


def _check_image_pixels(path: Path, filename: str, max_pixels: int) -> None:
    """Refuse an image whose header declares more pixels than allowed, before decoding it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        # Pillow's own refusal: far above any limit a server would set.
        raise ApiError(413, "too_many_pixels", _("{name}: the image has far more pixels than the limit of {limit:.1f} MP").format(
            name=filename, limit=max_pixels / 1e6)) from None
    except Exception:
        return   # unreadable headers get their precise reason from open_document
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels", _("{name}: the image is {w}x{h} ({mp:.1f} MP), above the limit of {limit:.1f} MP").format(
            name=filename, w=width, h=height, mp=width * height / 1e6, limit=max_pixels / 1e6))
