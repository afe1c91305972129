"""Inputs -> documents -> pages.

Expands files, folders (recursive), globs (`**` included, expanded by us so quoting
does not matter) and `@list.txt` files; sniffs each file's type by its first bytes;
renders PDF pages lazily, one at a time, with poppler. A file that cannot be read
becomes an error record that names it and says why; it never crashes the batch.
"""

from __future__ import annotations

import glob
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from .errors import InputError, UsageError
from .i18n import _
from .image_files import REFUSE_FACTOR, bound_pixels, image_frame_count, load_image_frame, to_rgb
from .paths import readable_name, source_id

if TYPE_CHECKING:
    from .records import Page

GLOB_CHARS = re.compile(r"[*?\[]")

# When a folder is expanded, only files with these extensions are taken (ground-truth
# .txt/.json files often sit beside scans). Files named explicitly or matched by a glob
# are always taken and sniffed by content, so a text file named .png still gets its error.
DOCUMENT_EXTENSIONS = {".pdf", ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".webp", ".gif", ".bmp"}

# Pages above this many pixels are rendered or scaled down to it; images declaring more
# than REFUSE_FACTOR times it are refused outright (decompression bombs).
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass
class InputFile:
    path: Path
    doc_key: str                      # output folder, relative to OUT
    error: Optional[str] = None       # the argument itself was bad (no such file, empty glob)


@dataclass
class Document:
    """An opened input file: its kind, page count and hash. Rendering is lazy."""

    path: Path
    doc_key: str
    kind: str                         # "pdf" | "png" | "jpeg" | "tiff" | "webp" | "gif" | "bmp"
    sha256: str
    page_count: int
    page_sizes: dict[int, tuple[float, float]] = field(default_factory=dict)  # PDF: points

    def render(self, page: int, dpi: int = 200, max_pixels: int = DEFAULT_MAX_PIXELS):
        """Return page `page` (1-based) as an RGB PIL image, at most max_pixels large."""
        if self.kind == "pdf":
            return _render_pdf_page(self, page, dpi, max_pixels)
        return load_image_frame(self.path, self.kind, page - 1, max_pixels)


# --------------------------------------------------------------------------- inputs

def expand_inputs(inputs: list[str], reserved: Optional[dict[str, str]] = None,
                  exclude: tuple[Path, ...] = ()) -> list[InputFile]:
    """Expand CLI arguments into input files, deduplicated, in a stable order.

    `reserved` maps sources (paths.source_id) to the output folders earlier runs gave
    them: such a source keeps its folder and no other source gets it. Files under a
    folder in `exclude` (the output folder) are never taken from a folder or a glob.
    """
    found: list[InputFile] = []
    seen: set[str] = set()
    # output folder -> the source holding it, so two sources never share a folder
    holders: dict[str, str] = {key: source for source, key in (reserved or {}).items()}
    excluded = [p.expanduser().resolve() for p in exclude]

    def add(path: Path, base: Optional[Path], error: Optional[str] = None) -> None:
        source = source_id(path)
        if error is None:
            if source in seen:
                return
            seen.add(source)
        key = (reserved or {}).get(source) or _unique_key(_doc_key(path, base), source, holders)
        holders.setdefault(key, source)
        found.append(InputFile(path=path, doc_key=key, error=error))

    def wanted(path: Path) -> bool:
        real = path.resolve()
        return not any(real == folder or folder in real.parents for folder in excluded)

    for arg in _read_list_files(inputs):
        path = Path(arg).expanduser()
        if GLOB_CHARS.search(arg) and not path.exists():
            # An existing file is itself, whatever its name holds (`scan [1].png`).
            matches = sorted(glob.glob(arg, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and wanted(Path(m))]
            if not files:
                add(Path(arg), None, _("no file matches this pattern"))
            base = _glob_base(arg)
            for f in files:
                add(f, base)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)
                           and p.suffix.lower() in DOCUMENT_EXTENSIONS and wanted(p))
            for f in files:
                add(f, path)
        elif path.is_file():
            add(path, None)
        else:
            add(path, None, _("no such file or folder"))
    return found


def _read_list_files(inputs: list[str]) -> list[str]:
    out: list[str] = []
    for arg in inputs:
        if arg.startswith("@") and len(arg) > 1:
            list_path = Path(arg[1:])
            try:
                lines = list_path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise UsageError(_("cannot read list file {path}: {reason}").format(path=list_path, reason=exc.strerror)) from None
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    # Relative entries are relative to the list file, like most tools do.
                    entry = Path(line).expanduser()
                    if not entry.is_absolute():
                        candidate = list_path.parent / entry
                        if candidate.exists() or (not entry.exists() and not GLOB_CHARS.search(line)):
                            entry = candidate
                    out.append(str(entry))
        else:
            out.append(arg)
    return out


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base_parts = []
    for part in parts:
        if GLOB_CHARS.search(part):
            break
        base_parts.append(part)
    return Path(*base_parts) if base_parts else Path(".")


def _doc_key(path: Path, base: Optional[Path]) -> str:
    if base is not None:
        try:
            rel = path.relative_to(base)
        except ValueError:
            rel = Path(path.name)
    else:
        rel = Path(path.name)
    rel = rel.with_suffix("") if rel.suffix else rel
    parts = [p for p in rel.parts if p not in ("", ".", "..")]
    key = "/".join(_safe_part(p) for p in parts) or "input"
    return key


def _safe_part(part: str) -> str:
    cleaned = re.sub(r"[\x00-\x1f/\\:*?\"<>|]", "_", readable_name(part)).strip()
    return cleaned or "_"


def _unique_key(key: str, source: str, holders: dict[str, str]) -> str:
    """`key`, or when another source holds it, a free variant of it.

    The same stem with another extension (a.png beside a.pdf) gets the extension
    (`a_pdf`); the same file name from another folder gets a number (`x-2`, `x-3`).
    """
    holder = holders.get(key)
    if holder is None or holder == source:
        return key
    suffix = Path(source).suffix.lstrip(".")
    if suffix and Path(holder).suffix.lstrip(".").lower() != suffix.lower() and f"{key}_{suffix}" not in holders:
        return f"{key}_{suffix}"
    n = 2
    while f"{key}-{n}" in holders:
        n += 1
    return f"{key}-{n}"


# --------------------------------------------------------------------------- page ranges

def parse_page_ranges(spec: Optional[str]) -> Optional[list[tuple[int, Optional[int]]]]:
    """'1-3,7,10-' -> [(1, 3), (7, 7), (10, None)]; None selects every page."""
    if spec is None or not spec.strip():
        return None
    ranges: list[tuple[int, Optional[int]]] = []
    for chunk in spec.split(","):
        chunk = chunk.strip()
        m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d*))?", chunk)
        if not m:
            raise UsageError(_("bad page range '{spec}': use forms like 1-3,7,10-").format(spec=chunk))
        start = int(m.group(1))
        end: Optional[int]
        if m.group(2) is None:
            end = start
        elif m.group(2) == "":
            end = None
        else:
            end = int(m.group(2))
        if start < 1 or (end is not None and end < start):
            raise UsageError(_("bad page range '{spec}': pages are numbered from 1").format(spec=chunk))
        ranges.append((start, end))
    return ranges


def select_pages(page_count: int, ranges: Optional[list[tuple[int, Optional[int]]]]) -> list[int]:
    if ranges is None:
        return list(range(1, page_count + 1))
    chosen = set()
    for start, end in ranges:
        stop = page_count if end is None else min(end, page_count)
        chosen.update(range(start, stop + 1))
    return sorted(chosen)


# --------------------------------------------------------------------------- opening

MAGIC = (
    (b"%PDF", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def sniff(head: bytes) -> Optional[str]:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    # PDF allows junk before the header within the first 1024 bytes.
    if b"%PDF-" in head[:1024]:
        return "pdf"
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_document(path: Path, doc_key: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Document:
    """Open an input file far enough to know its kind and page count.

    Raises InputError with a reason a user can act on.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise InputError(_("cannot read file: {reason}").format(reason=exc.strerror or exc)) from None
    if size == 0:
        raise InputError(_("empty file (0 bytes)"))
    kind = sniff(head)
    if kind is None:
        shown = "".join(c if c.isprintable() else " " for c in head[:16].decode("utf-8", "replace")).strip()
        raise InputError(_("not a PDF or a supported image (PNG, JPEG, TIFF, WebP, GIF, BMP); it starts with '{head}'").format(head=shown))
    digest = file_sha256(path)
    if kind == "pdf":
        count, sizes = _pdf_info(path)
        return Document(path, doc_key, kind, digest, count, sizes)
    count = image_frame_count(path, kind, max_pixels)
    return Document(path, doc_key, kind, digest, count)


# --------------------------------------------------------------------------- PDFs

def _pdf_info(path: Path) -> tuple[int, dict[int, tuple[float, float]]]:
    from pdf2image import pdfinfo_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError

    try:
        info = pdfinfo_from_path(str(path), timeout=60)
    except PDFInfoNotInstalledError:
        raise InputError(_("poppler (pdfinfo) is not installed; install poppler-utils to read PDFs")) from None
    except PDFPageCountError as exc:
        raise InputError(_pdf_reason(str(exc))) from None
    except Exception as exc:  # poppler can fail in many ways on broken files
        raise InputError(_pdf_reason(str(exc))) from None
    # "Encrypted: yes" alone is no refusal: a PDF with only an owner password (print or
    # copy restrictions) opens without one, and one that needs a password failed above.
    pages = int(info.get("Pages", 0) or 0)
    if pages <= 0:
        raise InputError(_("the PDF has no pages (damaged or truncated file)"))
    sizes: dict[int, tuple[float, float]] = {}
    m = re.match(r"\s*([\d.]+)\s*x\s*([\d.]+)", str(info.get("Page size", "")))
    if m:
        # pdfinfo reports the first page's size; others are checked when rendered.
        sizes[1] = (float(m.group(1)), float(m.group(2)))
    return pages, sizes


def _pdf_reason(message: str) -> str:
    low = message.lower()
    if "incorrect password" in low or "encrypt" in low:
        return _("the PDF is encrypted (password protected); decrypt it first (e.g. qpdf --decrypt)")
    if "couldn't find trailer" in low or "couldn't read xref" in low or "may not be a pdf" in low or "unable to get page count" in low:
        return _("damaged or truncated PDF (poppler: {detail})").format(detail=_first_line(message))
    return _("cannot read PDF (poppler: {detail})").format(detail=_first_line(message))


def _first_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    interesting = [ln for ln in lines if "error" in ln.lower()] or lines
    text = interesting[0] if interesting else "unknown error"
    return text[:200]


def _pdf_page_points(doc: Document, page: int) -> Optional[tuple[float, float]]:
    if page in doc.page_sizes:
        return doc.page_sizes[page]
    from pdf2image import pdfinfo_from_path
    try:
        info = pdfinfo_from_path(str(doc.path), first_page=page, last_page=page, timeout=60)
    except Exception:
        return None
    for key, value in info.items():
        if key.startswith("Page") and key.endswith("size"):
            m = re.match(r"\s*([\d.]+)\s*x\s*([\d.]+)", str(value))
            if m:
                doc.page_sizes[page] = (float(m.group(1)), float(m.group(2)))
                return doc.page_sizes[page]
    return None


def _render_pdf_page(doc: Document, page: int, dpi: int, max_pixels: int):
    from pdf2image import convert_from_path

    points = _pdf_page_points(doc, page)
    if points is not None:
        w_px, h_px = points[0] / 72 * dpi, points[1] / 72 * dpi
        if w_px * h_px > max_pixels * REFUSE_FACTOR:
            raise InputError(_("page {page} is {w:.0f}x{h:.0f} px at {dpi} DPI ({mp:.0f} MP), above the limit of {limit:.0f} MP; "
                               "lower --dpi or raise --max-image-pixels").format(
                page=page, w=w_px, h=h_px, dpi=dpi, mp=w_px * h_px / 1e6, limit=max_pixels * REFUSE_FACTOR / 1e6))
        if w_px * h_px > max_pixels:
            # Lower the DPI for this page instead of allocating gigabytes.
            dpi = max(10, int(dpi * (max_pixels / (w_px * h_px)) ** 0.5))
    try:
        images = convert_from_path(str(doc.path), dpi=dpi, first_page=page, last_page=page,
                                   timeout=300, thread_count=1)
    except Exception as exc:
        raise InputError(_("cannot render page {page}: {reason}").format(page=page, reason=_pdf_reason(str(exc)))) from None
    if not images:
        raise InputError(_("cannot render page {page}: poppler returned no image").format(page=page))
    image = images[0]
    return to_rgb(bound_pixels(image, max_pixels))


# --------------------------------------------------------------------------- convenience

def plan_pages(inputs: list[str], pages: Optional[str] = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               reserved: Optional[dict[str, str]] = None,
               exclude: tuple[Path, ...] = ()) -> Iterator[tuple["Page", Optional[Document]]]:
    """Every selected page of every input, not yet rendered: (page, its document).

    An input that cannot be opened comes as one Page with page=None, its error set and no
    document. Opening reads page counts and hashes only; pixels come from doc.render().
    `reserved` and `exclude` are expand_inputs'.
    """
    from .records import Page

    ranges = parse_page_ranges(pages)
    for item in expand_inputs(inputs, reserved, exclude):
        if item.error:
            yield Page(source=item.path, doc_key=item.doc_key, page=None, error=item.error), None
            continue
        try:
            doc = open_document(item.path, item.doc_key, max_pixels)
        except InputError as exc:
            yield Page(source=item.path, doc_key=item.doc_key, page=None, error=str(exc)), None
            continue
        for number in select_pages(doc.page_count, ranges):
            yield Page(source=item.path, doc_key=item.doc_key, page=number, sha256=doc.sha256,
                       page_count=doc.page_count), doc


def iter_pages(inputs: list[str], pages: Optional[str] = None, dpi: int = 200,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator["Page"]:
    """Every page of every input, rendered lazily (the Python API's `chatvlm.pages`)."""
    for page, doc in plan_pages(inputs, pages, max_pixels):
        if doc is not None:
            try:
                page.image = doc.render(page.page, dpi, max_pixels)
            except InputError as exc:
                page.error = str(exc)
        yield page
