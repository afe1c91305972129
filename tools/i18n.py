#!/usr/bin/env python3
"""Keep chatvlm's message catalogues in step with the code.

    python tools/i18n.py check      # exit 1 if a message is missing, untranslated, stale, or the .mo is old
    python tools/i18n.py update     # add new messages to every .po (empty msgstr), drop obsolete ones
    python tools/i18n.py compile    # write the .mo files from the .po files

Messages are found with `ast`: every `_("...")` and `N_("...")` call in the chatvlm package
whose argument is a string literal (and `_()` on anything else is reported, since it can
never match a catalogue entry). The .po and .mo files are read and written with polib
(the `test` extra); chatvlm itself needs only the standard gettext module to read the .mo.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

try:
    import polib
except ImportError:   # pragma: no cover - said plainly instead of a traceback
    sys.exit("tools/i18n.py needs polib: python3 -m pip install polib (or the project's [test] extra)")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "chatvlm"
LOCALE = PACKAGE / "locale"
DOMAIN = "chatvlm"
LANGUAGES = ("ru",)
MARKERS = ("_", "N_")

# The header of a new catalogue (an existing one keeps its own).
METADATA = {
    "ru": {
        "Project-Id-Version": "chatvlm",
        "Language": "ru",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
        "Plural-Forms": "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);",
    },
}
HEADER_COMMENT = "chatvlm interface messages ({lang}); python3 tools/i18n.py update keeps them in step with the code"
WRAP = 78   # polib's and GNU msgmerge's line width
BRACE_FLAG = "python-brace-format"

PLACEHOLDER = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)?(?:[:!][^{}]*)?\}")
MARKUP = re.compile(r"\[/?[a-z][a-z ]*\]|\[/\]")


# --------------------------------------------------------------------------- extraction

@dataclass
class Message:
    msgid: str
    refs: list[str] = field(default_factory=list)


@dataclass
class Problem:
    where: str
    text: str


def source_files(package: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def extract(package: Path = PACKAGE) -> tuple[dict[str, Message], list[Problem]]:
    """Every translatable literal in the package, in order of first appearance.

    Problems: `_()` called on an f-string, a concatenation or a formatted string, which
    can never match a catalogue entry.
    """
    messages: dict[str, Message] = {}
    problems: list[Problem] = []
    for path in source_files(package):
        rel = path.relative_to(package.parent).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        calls = [node for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in MARKERS]
        for node in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):   # source order
            if len(node.args) != 1 or node.keywords:
                continue
            arg = node.args[0]
            where = f"{rel}:{node.lineno}"
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                messages.setdefault(arg.value, Message(arg.value)).refs.append(where)
            elif isinstance(arg, (ast.JoinedStr, ast.BinOp)) or (
                    isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "format"):
                problems.append(Problem(where, "_() needs a plain string literal (format after translating)"))
    return messages, problems


# --------------------------------------------------------------------------- .po and .mo files

def po_path(lang: str) -> Path:
    return LOCALE / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(lang: str) -> Path:
    return LOCALE / lang / "LC_MESSAGES" / f"{DOMAIN}.mo"


def read_po(path: Path) -> polib.POFile:
    return polib.pofile(str(path), wrapwidth=WRAP)


def write_po(path: Path, catalogue: polib.POFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    catalogue.wrapwidth = WRAP
    catalogue.save(str(path))


def compile_mo(catalogue: polib.POFile) -> bytes:
    """GNU .mo bytes: the translated entries (not fuzzy, not empty) and the header."""
    return catalogue.to_binary()


def translations(catalogue: polib.POFile) -> tuple[dict[str, str], dict[str, str]]:
    """(header, msgid -> msgstr): what a .mo compiled from `catalogue` holds."""
    return dict(catalogue.metadata), {entry.msgid: entry.msgstr for entry in catalogue.translated_entries()}


def mo_translations(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(header, msgid -> msgstr) of a compiled .mo."""
    compiled = polib.mofile(str(path))
    return dict(compiled.metadata), {entry.msgid: entry.msgstr for entry in compiled if entry.msgid}


# --------------------------------------------------------------------------- operations

def update(lang: str) -> tuple[int, int]:
    """Bring a .po in line with the code: (added, dropped). Entries follow the code's order;
    translations, translator comments and flags of known messages are kept."""
    messages, _problems = extract()
    path = po_path(lang)
    old = read_po(path) if path.exists() else None
    known = {entry.msgid: entry for entry in old or [] if not entry.obsolete}
    new = polib.POFile(wrapwidth=WRAP)
    new.header = (old.header if old is not None else "") or HEADER_COMMENT.format(lang=lang)
    new.metadata = old.metadata if old is not None else dict(METADATA.get(lang, {}))
    new.metadata_is_fuzzy = old.metadata_is_fuzzy if old is not None else False
    added = 0
    for msgid, message in messages.items():
        entry = known.get(msgid)
        if entry is None:
            entry = polib.POEntry(msgid=msgid, msgstr="")
            added += 1
        # File names only: line numbers would change the catalogue on every edit.
        entry.occurrences = [(name, "") for name in dict.fromkeys(ref.rsplit(":", 1)[0] for ref in message.refs)]
        entry.flags = [f for f in entry.flags if f != BRACE_FLAG] + ([BRACE_FLAG] if PLACEHOLDER.search(msgid) else [])
        new.append(entry)
    dropped = len([msgid for msgid in known if msgid not in messages])
    write_po(path, new)
    return added, dropped


def check(lang: str) -> list[Problem]:
    """Everything that is wrong with a language's catalogue."""
    messages, problems = extract()
    path = po_path(lang)
    if not path.exists():
        return problems + [Problem(str(path), "catalogue missing")]
    catalogue = read_po(path)
    entries = {entry.msgid: entry for entry in catalogue if not entry.obsolete}
    rel = path.relative_to(ROOT).as_posix()
    for msgid, message in messages.items():
        entry = entries.get(msgid)
        where = message.refs[0]
        if entry is None:
            problems.append(Problem(where, f"not in {rel}: {msgid!r}"))
        elif not entry.msgstr.strip():
            problems.append(Problem(where, f"untranslated in {rel}: {msgid!r}"))
        elif entry.fuzzy:
            problems.append(Problem(where, f"fuzzy in {rel}: {msgid!r}"))
        else:
            if sorted(PLACEHOLDER.findall(msgid)) != sorted(PLACEHOLDER.findall(entry.msgstr)):
                problems.append(Problem(where, f"placeholders differ in {rel}: {msgid!r} -> {entry.msgstr!r}"))
            if "[/" in msgid and MARKUP.findall(msgid) != MARKUP.findall(entry.msgstr):
                problems.append(Problem(where, f"rich markup differs in {rel}: {msgid!r} -> {entry.msgstr!r}"))
    for msgid in entries:
        if msgid and msgid not in messages:
            problems.append(Problem(rel, f"obsolete (no longer in the code): {msgid!r}"))
    # The .mo must say what the .po says (compared as catalogues: byte layouts vary by writer).
    mo = mo_path(lang)
    if not mo.exists() or mo_translations(mo) != translations(catalogue):
        problems.append(Problem(mo.relative_to(ROOT).as_posix(), "out of date; run: python tools/i18n.py compile"))
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("check", "update", "compile", "extract"))
    args = parser.parse_args(argv)
    if args.action == "extract":
        messages, problems = extract()
        for message in messages.values():
            print(f"{message.refs[0]}\t{message.msgid!r}")
        for problem in problems:
            print(f"{problem.where}: {problem.text}", file=sys.stderr)
        return 1 if problems else 0
    status = 0
    for lang in LANGUAGES:
        if args.action == "update":
            added, dropped = update(lang)
            print(f"{lang}: {added} new message(s), {dropped} obsolete dropped"
                  + ("; now translate the empty msgstr entries and compile" if added else ""))
        elif args.action == "compile":
            mo_path(lang).write_bytes(compile_mo(read_po(po_path(lang))))
            print(f"{lang}: wrote {mo_path(lang).relative_to(ROOT)}")
        else:
            problems = check(lang)
            for problem in problems:
                print(f"{problem.where}: {problem.text}")
            if problems:
                status = 1
            else:
                print(f"{lang}: catalogue complete and compiled")
    return status


if __name__ == "__main__":
    sys.exit(main())
