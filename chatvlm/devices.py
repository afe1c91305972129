"""Device, dtype and attention-kernel choice for a model run through PyTorch.

flash_attention_2 when the package imports and the GPU supports it, else sdpa, else eager;
bf16 on a GPU (fp16 where it lacks bf16), fp32 on a CPU; --device / --dtype / --attn win.
Nothing here imports torch at module level: `chatvlm models` asks which kernel a model
would use without loading a framework (nvidia-smi answers for the GPU then).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from typing import Any, Iterable, Optional

from .config import BackendOptions
from .errors import ChatVLMError
from .i18n import _
from .registry import ModelSpec

ATTN_ORDER = ("flash_attention_2", "sdpa", "eager")

def gpu_info() -> Optional[dict[str, Any]]:
    """{"name", "capability"} of GPU 0, or None. Uses torch if already imported, else nvidia-smi."""
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "capability": major + minor / 10}
        return None
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, _, cap = out[0].rpartition(",")
    try:
        return {"name": name.strip(), "capability": float(cap)}
    except ValueError:
        return {"name": out[0].strip(), "capability": 0.0}


def flash_attn_importable() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_device(options: BackendOptions) -> str:
    if options.device:
        return options.device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_dtype(spec: ModelSpec, options: BackendOptions, device: str):
    """CUDA: the spec's dtype (bf16; fp16 where the GPU lacks bf16). CPU: fp32. --dtype overrides."""
    import torch

    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if options.dtype:
        try:
            return names[options.dtype.lower()]
        except KeyError:
            raise ChatVLMError(_("unknown dtype {dtype}; use bfloat16, float16 or float32").format(dtype=repr(options.dtype))) from None
    if not device.startswith("cuda"):
        return torch.float32
    dtype = names.get((spec.dtype or "bfloat16").lower(), torch.bfloat16)
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float16
    return dtype


def choose_attention(supported: Iterable[str], device: str, dtype_name: str = "bfloat16",
                     requested: Optional[str] = None, gpu: Optional[dict] = None) -> str:
    """flash_attention_2 if it imports and the GPU supports it, else sdpa, else eager.

    `requested` (--attn) wins when the model supports it; otherwise a clear error.
    """
    supported = tuple(supported)
    if requested:
        if requested not in supported:
            raise ChatVLMError(_("attention '{kind}' is not supported by this model; choose from: {known}").format(
                kind=requested, known=", ".join(supported)))
        if requested == "flash_attention_2" and not flash_attn_importable():
            raise ChatVLMError(_("--attn flash_attention_2 needs the flash-attn package, which is not installed"))
        return requested
    for kind in ATTN_ORDER:
        if kind not in supported:
            continue
        if kind == "flash_attention_2":
            on_gpu = device.startswith("cuda")
            info = gpu if gpu is not None else (gpu_info() if on_gpu else None)
            if not (on_gpu and flash_attn_importable() and info and info.get("capability", 0) >= 8.0
                    and dtype_name in ("bfloat16", "float16")):
                continue
        return kind
    return "eager"


def planned_attention(spec: ModelSpec) -> str:
    """The kernel this model would use on this machine (for `chatvlm models`); no torch import."""
    try:
        cls = spec.backend_class()
    except Exception:
        return "n/a"
    supported = getattr(cls, "attn_support", None)
    if not supported:
        return "n/a"
    gpu = gpu_info()
    return choose_attention(supported, "cuda" if gpu else "cpu", spec.dtype if gpu else "float32", gpu=gpu)
