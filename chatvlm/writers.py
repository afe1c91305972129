"""Per-page output files, the manifest and resume.

Every file is written atomically (temp file in the same folder, fsync, rename), so a
run killed at any moment leaves either the old file or the new one, never half of
one. The manifest line for a page is appended only after its files are in place, so
a line saying `ok` can be trusted; resume trusts the manifest, not file existence.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import OutputError
from .i18n import _
from .paths import path_text, source_id
from .records import PageResult

MANIFEST = "manifest.jsonl"
REPORT = "report.json"
DONE_STATUSES = ("ok", "skipped")


# Errors that say the output folder as a whole cannot take files (not one page's problem):
# the run stops with one clear message instead of failing every later page the same way.
OUTPUT_WIDE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _umask_at_import() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def file_mode() -> int:
    """Permissions a new file gets from the umask (0644 under the usual 022), like every other tool.

    mkstemp creates files 0600. os.umask() can only be read by setting it, which races with
    other threads, so Linux's /proc/self/status is read instead; elsewhere the umask seen
    at import (before any thread of ours existed).
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o666 & ~_UMASK_AT_IMPORT


def output_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        reason = _("a file is in the way where a folder is needed")
    return OutputError(_("cannot write {path}: {reason}").format(path=path, reason=reason))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    try:
        _atomic_write_bytes(path, data)
    except OSError as exc:
        if exc.errno in OUTPUT_WIDE_ERRNOS:
            raise output_error(path, exc) from None
        raise


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(path: Path, image) -> None:
    import io
    buf = io.BytesIO()
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    image.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def options_hash(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


def page_stem(page_number: Optional[int]) -> str:
    return f"page-{page_number:04d}" if page_number is not None else "file"


class Manifest:
    """OUT/manifest.jsonl: one JSON line per page, appended as pages finish.

    On open, earlier lines are read (a torn last line from a killed run is ignored)
    and kept by key (resolved source, page): the last line wins, and `./x.png` and
    `/abs/x.png` are one source. `compact()` rewrites the file with one line per key,
    so reruns never duplicate entries.
    """

    def __init__(self, out: Path):
        self.path = out / MANIFEST
        self.entries: dict[tuple[str, Optional[int]], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._shared: Optional[set[str]] = None   # computed once, from the lines read at open
        self._load()
        self._fh = None

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn write from a killed run: that page is simply redone
                if isinstance(entry, dict) and "source" in entry:
                    self.entries[_entry_key(entry)] = entry

    def is_done(self, source: Path, page: int, sha256: str, model: str, options: str) -> Optional[dict[str, Any]]:
        key = source_id(source)
        entry = self.entries.get((key, page))
        if (entry and entry.get("status") in DONE_STATUSES and entry.get("sha256") == sha256
                and entry.get("model") == model and entry.get("options") == options
                and key not in self._shared_folder_sources()):
            return entry
        return None

    def append(self, entry: dict[str, Any]) -> None:
        try:
            self._append(entry)
        except OSError as exc:
            # The page's files may be in place, but without its line it is redone on the next run.
            raise output_error(self.path, exc) from None

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # A torn last line must not glue onto the next entry.
                needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not self._ends_with_newline()
                self._fh = open(self.path, "a", encoding="utf-8")
                if needs_newline:
                    self._fh.write("\n")
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.entries[_entry_key(entry)] = entry

    def previous(self, source: Path, page: Optional[int]) -> dict[str, Any]:
        return self.entries.get((source_id(source), page), {})

    def doc_keys(self) -> dict[str, str]:
        """Each source's output folder from earlier runs, so a rerun writes where it wrote before.

        A folder that two sources wrote to (runs from before folders were kept apart) is
        nobody's: which of them the files hold is unknown, so both get a folder afresh.
        """
        shared = self._shared_folder_sources()
        return {source: doc for source, doc in self._folders().items() if source not in shared}

    def _folders(self) -> dict[str, str]:
        folders: dict[str, str] = {}
        for (source, _number), entry in self.entries.items():
            doc = entry.get("doc")
            if doc is None and entry.get("outputs"):
                doc = entry["outputs"][0].rsplit("/", 1)[0]   # lines written before "doc" existed
            if doc:
                folders[source] = doc
        return folders

    def _shared_folder_sources(self) -> set[str]:
        """Sources whose output folder another source wrote to as well: their pages are redone."""
        if self._shared is None:
            writers: dict[str, set[str]] = {}
            for source, doc in self._folders().items():
                writers.setdefault(doc, set()).add(source)
            self._shared = {source for sources in writers.values() if len(sources) > 1 for source in sources}
        return self._shared

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def compact(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if not self.entries and not self.path.exists():
                return
            text = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in self.entries.values())
            atomic_write_text(self.path, text)

    def close(self) -> None:
        try:
            self.compact()
        except (OSError, OutputError):
            # Compaction only tidies; the appended lines (each fsynced) are already the truth.
            pass


def write_page(out: Path, result: PageResult, formats: Iterable[str]) -> list[str]:
    """Write a recognised page's files; returns their paths relative to OUT."""
    page = result.page
    folder = out / page.doc_key
    stem = page_stem(page.page)
    written: list[str] = []

    def put_text(suffix: str, text: str) -> None:
        path = folder / f"{stem}{suffix}"
        atomic_write_text(path, text)
        written.append(path.relative_to(out).as_posix())

    formats = set(formats)
    # Picture crops and overlays first, so the markdown never links to a missing file.
    for name, image in result.images.items():
        path = folder / name
        atomic_save_image(path, image)
        written.append(path.relative_to(out).as_posix())
    if "text" in formats and result.text is not None:
        put_text(".txt", result.text)
    if "markdown" in formats and result.markdown is not None:
        put_text(".md", result.markdown)
    if "json" in formats:
        doc = {
            "source": path_text(page.source),
            "page": page.page,
            "model": result.model,
            "width": result.width,
            "height": result.height,
            "repaired": result.repaired,
            "dropped_blocks": result.dropped_blocks,
            "blocks": [b.to_dict() for b in (result.layout or [])],
        }
        put_text(".json", json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    return written


def manifest_entry(result: PageResult, options: str) -> dict[str, Any]:
    page = result.page
    entry = {
        "source": path_text(page.source),
        "resolved": source_id(page.source),
        "doc": page.doc_key,
        "page": page.page,
        "sha256": page.sha256 or None,
        "model": result.model,
        "status": result.status,
        "error": result.error,
        "outputs": result.outputs,
        "finish_reason": result.finish_reason,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "options": options,
    }
    if result.empty:
        entry["empty"] = True
    if result.repaired:
        entry["repaired"] = True
        entry["dropped_blocks"] = result.dropped_blocks
    return entry


def _entry_key(entry: dict[str, Any]) -> tuple[str, Optional[int]]:
    return entry.get("resolved") or source_id(entry["source"]), entry.get("page")
