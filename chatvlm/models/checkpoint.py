"""Loading an official safetensors checkpoint into a port, by its official tensor names.

One loader for the three ports. It compares names and shapes from the file headers before
reading any tensor, and refuses a checkpoint that does not match the model exactly: a
missing tensor would otherwise stay random and an unexpected one would be dropped, both
silently. Tensors are read one file (shard) at a time and take the dtype of the model's
own parameter. A model built on the meta device gets the tensors assigned (no memory is
allocated twice); a materialised one has them copied in place (ties between parameters stay).

transformers' own `from_pretrained` is not used for the ports: it reports missing and
unexpected weights as a log warning and fills missing ones at random, which is the silent
failure this module exists to refuse; and the ports' checkpoints need rules it lacks (phi3's
embedding stored under a second name, a buffer DeepSeek-OCR saves that the port rebuilds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import safe_open
from torch import nn

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensor names or shapes do not match the model it is loaded into."""


def weight_files(folder: str | Path) -> list[Path]:
    """`model.safetensors`, or the shards listed in `model.safetensors.index.json`."""
    folder = Path(folder)
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}")


def tensor_files(files: Iterable[Path]) -> dict[str, Path]:
    """Tensor name -> the file holding it, from the safetensors headers only."""
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                if name in where:
                    raise CheckpointMismatchError(f"tensor {name} is stored twice: in {where[name]} and in {file}")
                where[name] = file
    return where


def read_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder as stored (name -> tensor on `device`)."""
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in tensor_files(weight_files(folder)).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt", device=str(device)) as fh:
            state.update({name: fh.get_tensor(name) for name in names})
    return state


def _first(names: list[str], count: int = 10) -> str:
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return f"{names[:count]}{more}"


def check_keys(model: nn.Module, names: Iterable[str], source: str | Path = "the checkpoint") -> None:
    """Raise CheckpointMismatchError unless `names` equal the model's state_dict keys exactly."""
    expected, names = set(model.state_dict()), set(names)
    _raise_on({"missing": sorted(expected - names), "unexpected": sorted(names - expected), "mismatched": []},
              source)


def _raise_on(report: dict[str, list[str]], source: str | Path, files: Mapping[str, Path] | None = None) -> None:
    """The error for a key report with anything in it; `files` names where stored tensors are."""
    files = files or {}

    def shown(kind: str) -> list[str]:
        return [f"{name} (in {files[name].name})" if kind == "unexpected" and name in files else name
                for name in report[kind]]

    parts = [f"{len(report[kind])} {kind} {_first(shown(kind))}" for kind in ("missing", "unexpected", "mismatched")
             if report[kind]]
    if parts:
        raise CheckpointMismatchError(f"{source} does not match the model: " + "; ".join(parts))


def load_checkpoint(model: nn.Module, folder: str | Path, device: str | torch.device = "cpu", *,
                    aliases: Mapping[str, str] | None = None, ignore: Iterable[str] = (),
                    strict: bool = True) -> dict[str, list[str]]:
    """Fill `model` from the safetensors checkpoint in `folder`; returns the key report
    ``{"missing": [...], "unexpected": [...], "mismatched": [...]}`` (all empty when it loads).

    `aliases` maps a stored name to the model's name for the same tensor (stored under
    either name, or both when they hold the same values); names in `ignore` are skipped
    (e.g. buffers the official code saves but rebuilds itself). Any missing, unexpected or
    shape-mismatched tensor raises CheckpointMismatchError naming the folder, the keys and,
    for stored tensors, their file; with ``strict=False`` the matching tensors are loaded
    and the report says what was not (the caller decides what the holes get).
    """
    folder = Path(folder)
    device = torch.device(device)
    read_device = "cpu" if device.type == "meta" else str(device)
    aliases = dict(aliases or {})
    stored = tensor_files(weight_files(folder))
    for name in ignore:
        stored.pop(name, None)
    # model name -> (file, stored name); an alias stored next to its target is checked below.
    source = {name: (file, name) for name, file in stored.items() if name not in aliases}
    twins: dict[str, tuple[Path, str]] = {}
    for alias, target in aliases.items():
        if alias in stored:
            if target in source:
                twins[target] = (stored[alias], alias)
            else:
                source[target] = (stored[alias], alias)

    targets = model.state_dict(keep_vars=True)
    report: dict[str, list[str]] = {"missing": sorted(set(targets) - set(source)),
                                    "unexpected": sorted(set(source) - set(targets)), "mismatched": []}
    by_file: dict[Path, list[str]] = {}
    for name in sorted(set(source) & set(targets)):
        by_file.setdefault(source[name][0], []).append(name)
    loadable: dict[Path, list[str]] = {}
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt") as fh:
            for name in names:
                shape, wanted = tuple(fh.get_slice(source[name][1]).get_shape()), tuple(targets[name].shape)
                if shape == wanted:
                    loadable.setdefault(file, []).append(name)
                else:
                    report["mismatched"].append(f"{name}: {shape} in {file.name}, {wanted} in the model")
    if strict:
        _raise_on(report, folder, {name: file for name, (file, _) in source.items()})

    assign = any(t.is_meta for t in targets.values())
    for file, names in loadable.items():
        with safe_open(str(file), framework="pt", device=read_device) as fh:
            part = {name: fh.get_tensor(source[name][1]).to(targets[name].dtype) for name in names}
        model.load_state_dict(part, strict=False, assign=assign)
        del part
    loaded = model.state_dict()
    for target, (file, alias) in twins.items():
        with safe_open(str(file), framework="pt", device=read_device) as fh:
            twin = fh.get_tensor(alias).to(loaded[target].dtype)
        if not torch.equal(twin.to(loaded[target].device), loaded[target]):
            raise CheckpointMismatchError(f"{folder}: {alias} (in {file.name}) differs from {target}; "
                                          "they must be one tensor")
    return report
