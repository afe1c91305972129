"""The machine a bench runs on: GPU memory between models, hardware and versions."""

from __future__ import annotations

import gc
import os
import platform
import sys
from pathlib import Path
from typing import Any, Optional

from .config import BenchConfig


def preimport() -> None:
    """Import torch and transformers up front: library import time is not model load time."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        pass


def cuda_in_use(config: BenchConfig, backend=None) -> bool:
    """Whether the model (or, before one loads, the requested device) is on a CUDA GPU."""
    if "torch" not in sys.modules:
        return False
    import torch
    if not torch.cuda.is_available():
        return False
    device = (backend.describe().get("device") if backend is not None else None) or config.base.backend.device or "cuda"
    return str(device).startswith("cuda")


def reset_peak_memory() -> None:
    import torch
    torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> Optional[float]:
    try:
        import torch
        return round(torch.cuda.max_memory_allocated() / 1e9, 3)
    except Exception:
        return None


def free_memory() -> None:
    """Give a closed model's GPU memory back before the next one loads."""
    gc.collect()
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def hardware_info() -> dict[str, Any]:
    """CPU, GPU, OS and library versions, for bench.json (a figure means little without them)."""
    from importlib import metadata

    def version(package: str) -> Optional[str]:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "machine": platform.machine(),
        "os": platform.platform(), "python": platform.python_version(), "node": platform.node(),
        "gpu": None, "gpu_count": 0, "cuda": None,
        "versions": {p: version(p) for p in ("chatvlm", "torch", "transformers", "tesserocr", "rapidfuzz")},
    }
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            info["gpu_count"] = torch.cuda.device_count()
            info["gpu"] = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            info["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
            info["cuda"] = torch.version.cuda
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
