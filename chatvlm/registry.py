"""The table of known models: name -> ModelSpec (chatvlm.model_spec).

The built-in models (chatvlm.model_table) are registered on first use; tests and plugins
add their own with `register`.
"""

from __future__ import annotations

from .errors import UnknownModelError
from .i18n import _
from .model_spec import ModelSpec

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_spec(name: str) -> ModelSpec:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(name, known_names()) from None


def known_names() -> list[str]:
    _ensure_builtin()
    return list(_REGISTRY)


def all_specs() -> list[ModelSpec]:
    _ensure_builtin()
    return list(_REGISTRY.values())


def cannot_chat_message(spec: ModelSpec) -> str:
    """Why `spec` cannot answer a question, naming the models that can (`chatvlm ask`,
    the Python API's `ask`, the HTTP API)."""
    chat = ", ".join(s.name for s in all_specs() if s.can_chat)
    return _("model '{name}' cannot answer questions: it only transcribes pages. Chat-capable models: {models}").format(
        name=spec.name, models=chat)


_loaded = False


def _ensure_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from .model_table import BUILTIN_SPECS

        for spec in BUILTIN_SPECS:
            register(spec)
