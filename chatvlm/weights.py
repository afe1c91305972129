"""Where a model's weights are: a local folder, or the Hugging Face cache.

Kept free of torch and transformers so `chatvlm models` and `--model auto` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .registry import ModelSpec


def cached_snapshot(spec: ModelSpec) -> Optional[Path]:
    """The snapshot folder of spec.repo_id@revision in the local HF cache, if complete enough to load."""
    if not spec.repo_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(spec.repo_id, "config.json", revision=spec.revision or "main")
    except Exception:
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    has_weights = any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists()
    return folder if has_weights else None


def folder_size_gb(folder: Path) -> float:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.resolve().stat().st_size
        except OSError:
            continue
    return total / 1e9


def weights_available(spec: ModelSpec) -> bool:
    return spec.repo_id is None or cached_snapshot(spec) is not None
