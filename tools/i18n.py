#!/usr/bin/env python3
"""Keep chatvlm's message catalogues in step with the code.

    python tools/i18n.py check      # exit 1 if a message is missing, untranslated, stale, or the .mo is old
    python tools/i18n.py update     # add new messages to every .po (empty msgstr), drop obsolete ones
    python tools/i18n.py compile    # write the .mo files from the .po files

Messages are found with `ast`: every `_("...")` and `N_("...")` call in the chatvlm package
whose argument is a string literal. The .mo writer follows CPython's Tools/i18n/msgfmt.py
(GNU gettext binary format, little endian, keys sorted), so no external tool is needed.
"""

from __future__ import annotations

import argparse
import ast
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "chatvlm"
LOCALE = PACKAGE / "locale"
DOMAIN = "chatvlm"
LANGUAGES = ("ru",)
MARKERS = ("_", "N_")

HEADER = {
    "ru": (
        "Project-Id-Version: chatvlm\n"
        "Language: ru\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=UTF-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "Plural-Forms: nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);\n"
    ),
}

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


# --------------------------------------------------------------------------- .po files

@dataclass
class Entry:
    msgid: str
    msgstr: str = ""
    comments: list[str] = field(default_factory=list)   # translator comments ("# ...")
    flags: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)

    @property
    def fuzzy(self) -> bool:
        return "fuzzy" in self.flags


def _unquote(text: str) -> str:
    text = text.strip()
    if not (text.startswith('"') and text.endswith('"')):
        raise ValueError(f"not a quoted string: {text!r}")
    body = text[1:-1]
    out = []
    i = 0
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], "\\" + body[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t").replace("\n", "\\n") + '"'


def read_po(path: Path) -> dict[str, Entry]:
    """msgid -> Entry; the header is the entry with msgid ''."""
    entries: dict[str, Entry] = {}
    current: Optional[Entry] = None
    section: Optional[str] = None
    pending = Entry("")

    def flush() -> None:
        nonlocal current
        if current is not None:
            entries[current.msgid] = current
        current = None

    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            flush()
            section = None
            continue
        if line.startswith("#~"):
            continue   # obsolete entries are not read back
        if line.startswith("#"):
            if current is not None and section == "msgstr":
                flush()
                section = None
            if line.startswith("#:"):
                pending.refs.extend(line[2:].split())
            elif line.startswith("#,"):
                pending.flags.extend(f.strip() for f in line[2:].split(","))
            elif line.startswith("# ") or line == "#":
                pending.comments.append(line[2:])
            continue
        if line.startswith("msgid "):
            flush()
            current = Entry(_unquote(line[6:]), comments=pending.comments, flags=pending.flags, refs=pending.refs)
            pending = Entry("")
            section = "msgid"
        elif line.startswith("msgstr "):
            if current is None:
                raise ValueError(f"{path}:{lineno}: msgstr without msgid")
            current.msgstr = _unquote(line[7:])
            section = "msgstr"
        elif line.startswith('"'):
            if current is None or section is None:
                raise ValueError(f"{path}:{lineno}: stray string")
            if section == "msgid":
                current.msgid += _unquote(line)
            else:
                current.msgstr += _unquote(line)
        else:
            raise ValueError(f"{path}:{lineno}: cannot parse {raw!r}")
    flush()
    return entries


def _po_string(keyword: str, text: str) -> list[str]:
    if "\n" in text[:-1] or len(text) > 70:
        parts = re.findall(r".*?\n|.+$", text) if "\n" in text else [text]
        lines = [f'{keyword} ""']
        for part in parts:
            while len(part) > 76:
                cut = part.rfind(" ", 0, 76)
                cut = cut + 1 if cut > 0 else 76
                lines.append(_quote(part[:cut]))
                part = part[cut:]
            if part:
                lines.append(_quote(part))
        return lines
    return [f"{keyword} {_quote(text)}"]


def write_po(path: Path, entries: Iterable[Entry]) -> None:
    lines: list[str] = []
    for entry in entries:
        for comment in entry.comments:
            lines.append(f"# {comment}".rstrip())
        if entry.refs:
            lines.append("#: " + " ".join(entry.refs))
        if entry.flags:
            lines.append("#, " + ", ".join(entry.flags))
        lines.extend(_po_string("msgid", entry.msgid))
        lines.extend(_po_string("msgstr", entry.msgstr))
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def po_path(lang: str) -> Path:
    return LOCALE / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(lang: str) -> Path:
    return LOCALE / lang / "LC_MESSAGES" / f"{DOMAIN}.mo"


# --------------------------------------------------------------------------- .mo files

def compile_mo(entries: dict[str, Entry]) -> bytes:
    """GNU .mo bytes, as CPython's msgfmt.py writes them (fuzzy and empty entries left out)."""
    catalog = {e.msgid: e.msgstr for e in entries.values() if e.msgstr and (not e.fuzzy or e.msgid == "")}
    keys = sorted(catalog)
    ids = strs = b""
    offsets = []
    for key in keys:
        kid, kstr = key.encode("utf-8"), catalog[key].encode("utf-8")
        offsets.append((len(ids), len(kid), len(strs), len(kstr)))
        ids += kid + b"\0"
        strs += kstr + b"\0"
    keystart = 7 * 4 + 16 * len(keys)
    valuestart = keystart + len(ids)
    koffsets: list[int] = []
    voffsets: list[int] = []
    for o1, l1, o2, l2 in offsets:
        koffsets += [l1, o1 + keystart]
        voffsets += [l2, o2 + valuestart]
    output = struct.pack("Iiiiiii", 0x950412DE, 0, len(keys), 7 * 4, 7 * 4 + len(keys) * 8, 0, 0)
    output += struct.pack(f"{len(koffsets)}i", *koffsets) if koffsets else b""
    output += struct.pack(f"{len(voffsets)}i", *voffsets) if voffsets else b""
    return output + ids + strs


# --------------------------------------------------------------------------- operations

def update(lang: str) -> tuple[int, int]:
    """Bring a .po in line with the code: (added, dropped)."""
    messages, _problems = extract()
    path = po_path(lang)
    old = read_po(path) if path.exists() else {}
    header = old.get("") or Entry("", HEADER.get(lang, ""))
    entries = [header]
    added = 0
    for msgid, message in messages.items():
        entry = old.get(msgid)
        if entry is None:
            entry = Entry(msgid)
            added += 1
        # File names only: line numbers would change the catalogue on every edit.
        entry.refs = list(dict.fromkeys(ref.rsplit(":", 1)[0] for ref in message.refs))
        flags = [f for f in entry.flags if f != "python-brace-format"]
        if PLACEHOLDER.search(msgid):
            flags.append("python-brace-format")
        entry.flags = flags
        entries.append(entry)
    dropped = len([k for k in old if k and k not in messages])
    write_po(path, entries)
    return added, dropped


def check(lang: str) -> list[Problem]:
    """Everything that is wrong with a language's catalogue."""
    messages, problems = extract()
    path = po_path(lang)
    if not path.exists():
        return problems + [Problem(str(path), "catalogue missing")]
    entries = read_po(path)
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
    mo = mo_path(lang)
    if not mo.exists() or mo.read_bytes() != compile_mo(entries):
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
