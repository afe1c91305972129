"""Which models a bench runs, and why one of them cannot run here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError
from ..i18n import _
from ..registry import ModelSpec, all_specs, get_spec
from .config import BenchConfig


def parse_assignments(values: Optional[list[str]], option: str) -> dict[str, Path]:
    """['qwen_vl_2b=/ckpt', ...] -> {'qwen_vl_2b': Path('/ckpt')}; names are checked."""
    out: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(_("{option} takes NAME=PATH, got '{value}'").format(option=option, value=value))
        get_spec(name.strip())
        out[name.strip()] = Path(path.strip()).expanduser()
    return out


def select_models(value: Optional[str], config: BenchConfig) -> list[str]:
    """--models all | a,b,... | default (every model with local weights or --model-path, plus tesseract;
    with --synthetic every VLM)."""
    if value is not None and value.strip() and value.strip() != "default":
        if value.strip() == "all":
            return [s.name for s in all_specs() if not (config.synthetic and s.repo_id is None)]
        names = []
        for name in (v.strip() for v in value.split(",")):
            if name and name not in names:
                get_spec(name)   # unknown names are a usage error before anything runs
                names.append(name)
        if not names:
            raise UsageError(_("--models needs at least one model name"))
        return names
    if config.synthetic:
        return [s.name for s in all_specs() if s.repo_id is not None]
    from ..weights import weights_available
    names = [s.name for s in all_specs()
             if s.repo_id is not None and (s.name in config.model_paths or weights_available(s))]
    return names + ["tesseract"]


def unavailable_reason(config: BenchConfig, spec: ModelSpec) -> Optional[str]:
    """Why `spec` cannot run in this bench (no weights here, no full config for --synthetic), or None."""
    if config.synthetic:
        if spec.repo_id is None:
            return _("not a neural model: synthetic mode does not apply")
        if spec.name not in config.synthetic_configs and not spec.full_config:
            return _("not available yet: no full config in the registry (pass --synthetic-config {name}=config.json)").format(name=spec.name)
        return None
    if spec.repo_id is None or spec.name in config.model_paths:
        return None
    from ..weights import weights_available
    if not weights_available(spec):
        # bench never downloads: a multi-GB download inside a timing run helps nobody.
        return _("weights not found locally ({gb} GB); download them with `chatvlm ocr --model {name}` or pass --model-path {name}=DIR").format(
            gb=spec.download_gb, name=spec.name)
    return None


def synthetic_config(config: BenchConfig, spec: ModelSpec) -> dict[str, Any]:
    """The config a --synthetic model is built from: --synthetic-config NAME=PATH, else the registry's."""
    path = config.synthetic_configs.get(spec.name)
    if path is None:
        return dict(spec.full_config or {})
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(_("cannot read --synthetic-config for {name}: {reason}").format(name=spec.name, reason=exc)) from None
