"""ModelSpec: what chatvlm knows about one model, as plain data.

A spec names everything a backend needs that is a fact about the model rather than
about the run: checkpoint and pinned revision, backend class, prompts per task, pixel
budget, generation defaults. The backend class is named by dotted path and imported only
when asked for, so `chatvlm models` and the tesseract engine never import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelSpec:
    name: str
    backend: str                                  # "package.module:ClassName"
    description: str = ""
    repo_id: Optional[str] = None                 # Hugging Face repo (None: no weights, e.g. tesseract)
    revision: Optional[str] = None                # pinned commit of repo_id
    download_gb: Optional[float] = None           # size of the weights, for hints
    tasks: tuple[str, ...] = ("text", "markdown")
    prompts: dict[str, str] = field(default_factory=dict)   # task -> prompt text
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    max_new_tokens: int = 4096
    dtype: str = "bfloat16"                       # dtype on GPU; CPU always runs float32
    can_chat: bool = False                        # supports `chatvlm ask`
    auto_rank: Optional[int] = None               # order for --model auto (lower first); None = never auto
    full_config: Optional[dict[str, Any]] = None  # real-size config for bench --synthetic
    extra: dict[str, Any] = field(default_factory=dict)

    def backend_class(self):
        module_name, _, class_name = self.backend.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, class_name)
