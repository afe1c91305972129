"""chatvlm: batch OCR with vision-language models.

The Python API is imported lazily, so `import chatvlm` stays light (no torch):

    import chatvlm
    model = chatvlm.load_model("auto")
    text = model.ocr("scan.png")
    for page in chatvlm.pages("report.pdf"):
        print(model.markdown(page))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "load_model": "chatvlm.api",
    "pages": "chatvlm.api",
    "Model": "chatvlm.api",
    "ModelLoader": "chatvlm.api",
    "RecognitionError": "chatvlm.api",
    "LayoutBlock": "chatvlm.records",
    "PageResult": "chatvlm.records",
    "ChatVLMError": "chatvlm.errors",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover
    from .api import Model, ModelLoader, RecognitionError, load_model, pages
    from .errors import ChatVLMError
    from .records import LayoutBlock, PageResult


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'chatvlm' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
