"""File names as text that is always valid UTF-8, and one identity per input file.

A name whose bytes are not UTF-8 (CP1251 or CP866 names unpacked from Windows archives,
say) reaches Python with its bad bytes as lone surrogates, which cannot be written to a
UTF-8 file. The manifest and the report keep such a name exactly, its bad bytes escaped
as \\xNN; an output folder gets a readable decoding of it instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union

_UNDECODABLE = re.compile("[\udc80-\udcff]")

# Windows code pages for Russian: CP1251 (ANSI: Explorer, most programs) and CP866
# (OEM: ZIP archives and DOS tools). A name is read in whichever reads more like Russian.
LEGACY_ENCODINGS = ("cp1251", "cp866")


def has_undecodable(text: str) -> bool:
    return _UNDECODABLE.search(text) is not None


def path_text(path: Union[str, Path]) -> str:
    """The path as valid UTF-8 text: bytes that are not UTF-8 become \\xNN, all else is kept."""
    text = str(path)
    if not has_undecodable(text):
        return text
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def source_id(path: Union[str, Path]) -> str:
    """One input file, however it was spelled (`./x.png`, `/abs/x.png`, a symlink): its real path."""
    return path_text(Path(path).expanduser().resolve())


def readable_name(name: str) -> str:
    """A file name as readable text: a name that is not UTF-8 is read as CP1251 or CP866."""
    if not has_undecodable(name):
        return name
    raw = os.fsencode(name)
    best, best_score = raw.decode("utf-8", "backslashreplace"), -1
    for encoding in LEGACY_ENCODINGS:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        score = _russian_score(text)
        if score > best_score:
            best, best_score = text, score
    return best


# The commonest Russian letters. Read in the wrong code page, a Russian name turns into
# box-drawing characters, punctuation, rare Cyrillic letters (Ћ, Џ) or rare Russian ones.
_COMMON_LETTERS = set("оеаинтсрвлкмдпу")


def _russian_score(text: str) -> int:
    score = 0
    for ch in text.lower():
        if ch in _COMMON_LETTERS:
            score += 2
        elif "а" <= ch <= "я" or ch == "ё" or (ch.isascii() and ch.isalnum()):
            score += 1
    return score
