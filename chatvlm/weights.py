"""Where a model's checkpoint folder comes from: one entry point for every origin.

`locate(spec, options)` returns the folder a backend loads from:

- `--model-path DIR` (checked: a folder with config.json and weight files);
- the standard Hugging Face cache at the spec's pinned revision (HF_HOME / HF_HUB_OFFLINE
  honoured), else a download, else one clear error saying how to get the weights;
- for `bench --synthetic`, a temporary folder written by the model's recipe
  (chatvlm.synthetic): the full config and the real preprocessing, no weights, and a marker
  file saying the weights are random. `release(folder)` removes such a folder again.

Backends load every folder the same way: `load_port_model` / `load_transformers_model`
read the weights, or, for a folder marked synthetic, build the architecture from its
config.json with random weights directly on the device. So whether a checkpoint is real or
synthetic is decided here, by the folder, and never inside a model backend.

Nothing here imports torch or transformers at module level: `chatvlm models`, `--model
auto` and the like ask whether weights are present without loading a framework.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from .config import BackendOptions
from .errors import ModelUnavailableError
from .i18n import _
from .registry import ModelSpec
from .synthetic import SYNTHETIC_MARKER

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

# Synthetic folders this process created (and so may delete).
_temporary: set[Path] = set()


# --------------------------------------------------------------------------- the entry point

def locate(spec: ModelSpec, options: BackendOptions) -> Path:
    """The checkpoint folder to load for `spec`: synthetic (options.synthetic), --model-path,
    the HF cache, or a download. Raises ModelUnavailableError with one clear message."""
    if options.synthetic:
        return synthetic_checkpoint(spec, options)
    return resolve_weights(spec, options)


def synthetic_checkpoint(spec: ModelSpec, options: BackendOptions) -> Path:
    """A temporary folder with the full config (options.extra["config"], else the spec's
    full_config) and the real processor, no weights; `release` removes it."""
    from .synthetic import prepare_checkpoint

    folder = Path(tempfile.mkdtemp(prefix=f"chatvlm-synthetic-{spec.name}-"))
    _temporary.add(folder)
    try:
        prepare_checkpoint(spec.name, options.extra.get("config") or spec.full_config or {}, folder)
    except BaseException:
        release(folder)
        raise
    return folder


def is_synthetic(folder: Path) -> bool:
    """True for a checkpoint without weights whose model is built at random from its config."""
    return (Path(folder) / SYNTHETIC_MARKER).is_file()


def checkpoint_facts(folder: Path) -> dict[str, Any]:
    """What the report says about a checkpoint's origin: {"synthetic": True} where its
    weights are random (bench --synthetic), else nothing."""
    return {"synthetic": True} if is_synthetic(folder) else {}


def release(folder: Optional[Path]) -> None:
    """Remove `folder` if it is a temporary synthetic checkpoint made here; anything else
    (a cache snapshot, a --model-path folder) is never touched."""
    if folder is None:
        return
    folder = Path(folder)
    if folder in _temporary:
        _temporary.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)


def read_config(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- loading a folder

def load_port_model(port: Any, folder: Path, **kwargs: Any):
    """A model of one of chatvlm's own ports (a module with `from_pretrained(path, **kw)` and
    `build_from_config(config_dict, **kw)`, e.g. chatvlm.models.dots_ocr) from `folder`:
    its weights, or random weights from config.json for a synthetic folder."""
    if is_synthetic(folder):
        return port.build_from_config(read_config(folder), **kwargs)
    return port.from_pretrained(folder, **kwargs)


def load_transformers_model(cls: Any, folder: Path, device: str, **kwargs: Any):
    """A transformers model class (an Auto class or a concrete one) from `folder` on `device`:
    `from_pretrained`, or for a synthetic folder the architecture from its config with random
    weights created directly on the device (a full-size model never passes through the CPU)."""
    if is_synthetic(folder):
        import torch
        import transformers

        config = transformers.AutoConfig.from_pretrained(str(folder))
        build = cls.from_config if cls.__name__.startswith("Auto") else cls._from_config
        with torch.device(device):
            return build(config, **kwargs)
    if device.startswith("cuda"):
        kwargs["device_map"] = device
    model = cls.from_pretrained(str(folder), **kwargs)
    if not device.startswith("cuda"):
        model = model.to(device)
    return model


def decode_tokenizer(folder: Path):
    """The tokenizer that only decodes generated ids, for a checkpoint that carries no
    tokenizer of the model's own (folder `decode_tokenizer/`: the synthetic DeepSeek-OCR
    recipe writes one, its processor knowing the official prompts' ids); None where the
    folder has none."""
    sub = Path(folder) / "decode_tokenizer"
    if not (sub / "tokenizer.json").is_file():
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(sub))


# --------------------------------------------------------------------------- real weights

def short_reason(exc: BaseException) -> str:
    """One line naming an exception, for a user-facing message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{name}: {text}" if text else name


def _hub_hint(spec: ModelSpec) -> str:
    rev = f" --revision {spec.revision}" if spec.revision and spec.revision != "main" else ""
    size = _(" (~{gb} GB)").format(gb=f"{spec.download_gb:g}") if spec.download_gb else ""
    return _("provide the weights with --model-path DIR (a local checkpoint folder), or download them{size} "
             "with: huggingface-cli download {repo}  (or `hf download`), then run again (HF_HOME={home})").format(
        size=size, repo=f"{spec.repo_id}{rev}", home=_hf_home())


def _hf_home() -> str:
    try:
        from huggingface_hub import constants
        return str(constants.HF_HOME)
    except Exception:  # pragma: no cover - hub always installed with transformers
        return os.environ.get("HF_HOME", "~/.cache/huggingface")


def hub_offline() -> bool:
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _check_folder(spec: ModelSpec, folder: Path) -> Path:
    if not folder.exists():
        raise ModelUnavailableError(_("model '{name}': --model-path {folder} does not exist").format(name=spec.name, folder=folder))
    if not folder.is_dir():
        raise ModelUnavailableError(_("model '{name}': --model-path {folder} is not a folder").format(name=spec.name, folder=folder))
    if not (folder / "config.json").exists():
        raise ModelUnavailableError(_(
            "model '{name}': {folder} is not a transformers checkpoint folder (no config.json); "
            "expected a copy of {repo}").format(name=spec.name, folder=folder, repo=spec.repo_id))
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir()):
        raise ModelUnavailableError(_("model '{name}': {folder} has a config.json but no weight files").format(
            name=spec.name, folder=folder))
    return folder


def cached_snapshot(spec: ModelSpec) -> Optional[Path]:
    """The local HF-cache folder of spec.repo_id@revision if it is complete, else None. No network."""
    if not spec.repo_id:
        return None
    try:
        from huggingface_hub import snapshot_download
        path = Path(snapshot_download(repo_id=spec.repo_id, revision=spec.revision, local_files_only=True))
    except Exception:
        return None
    return path if _snapshot_complete(path) else None


def snapshot_commit(folder: Optional[Path]) -> Optional[str]:
    """The commit a Hugging Face cache snapshot holds (its folder, models--ORG--NAME/snapshots/<commit>,
    is named by it), or None for a folder that is not such a snapshot."""
    if folder is None:
        return None
    folder = Path(folder)
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return folder.name
    return None


def revision_used(spec: ModelSpec, folder: Optional[Path]) -> Optional[str]:
    """What a run records as the checkpoint's revision: the commit of the cache snapshot it
    loaded where that is known (a spec that follows a branch, "main", then names the commit
    the branch pointed at), else the spec's pin."""
    return snapshot_commit(folder) or spec.revision


def _snapshot_complete(path: Path) -> bool:
    if not (path / "config.json").exists():
        return False
    index = next(iter(sorted(path.glob("*.index.json"))), None)
    if index is not None:
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError):
            return False
        return bool(shards) and all((path / s).exists() for s in shards)
    return any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir())


def folder_size(path: Path) -> int:
    total = 0
    for p in Path(path).rglob("*"):
        try:
            if p.is_file():
                total += p.resolve().stat().st_size
        except OSError:
            continue
    return total


def weights_available(spec: ModelSpec, model_path: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """Where this model's weights are, without network: {"path", "bytes", "source"} or None.

    Used by `chatvlm models` (cached? size) and `--model auto` (best model available locally).
    """
    if model_path is not None:
        try:
            folder = _check_folder(spec, Path(model_path))
        except ModelUnavailableError:
            return None
        return {"path": str(folder), "bytes": folder_size(folder), "source": "model-path"}
    path = cached_snapshot(spec)
    if path is None:
        return None
    return {"path": str(path), "bytes": folder_size(path), "source": "hf-cache"}


def resolve_weights(spec: ModelSpec, options: BackendOptions) -> Path:
    """The real checkpoint folder: --model-path, else the HF cache, else a download.

    Raises ModelUnavailableError with one message (model, repo, revision, how to get
    the weights) when none works: never a stack trace.
    """
    if options.model_path is not None:
        return _check_folder(spec, Path(options.model_path).expanduser())
    if not spec.repo_id:
        raise ModelUnavailableError(_("model '{name}' has no checkpoint repository; use --model-path DIR").format(name=spec.name))
    local = cached_snapshot(spec)
    if local is not None:
        return local
    what = _("model '{name}' ({repo})").format(name=spec.name, repo=f"{spec.repo_id} @ {spec.revision or 'main'}")
    if hub_offline():
        raise ModelUnavailableError(
            _("{what}: weights are not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {hint}").format(
                what=what, hint=_hub_hint(spec)))
    try:
        from huggingface_hub import snapshot_download
        print(_("downloading {repo}{size} ...").format(
            repo=f"{spec.repo_id} @ {spec.revision or 'main'}",
            size=_(" (~{gb} GB)").format(gb=f"{spec.download_gb:g}") if spec.download_gb else ""), file=sys.stderr)
        path = Path(snapshot_download(repo_id=spec.repo_id, revision=spec.revision,
                                      ignore_patterns=["*.pt", "*.pth", "*.msgpack", "*.h5", "original/*"]))
    except Exception as exc:  # network errors, 404, gated repos, disk full: all one message
        reason = short_reason(exc)
        raise ModelUnavailableError(
            _("{what}: weights are not in the local Hugging Face cache and could not be downloaded ({reason}); {hint}").format(
                what=what, reason=reason, hint=_hub_hint(spec))) from None
    if not _snapshot_complete(path):
        raise ModelUnavailableError(_("{what}: the downloaded snapshot at {path} is incomplete; {hint}").format(
            what=what, path=path, hint=_hub_hint(spec)))
    return path
