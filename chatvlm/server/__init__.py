"""`chatvlm serve`: the Python API over HTTP (FastAPI + uvicorn).

The model is loaded once, before the server listens; requests share it through one
batching queue (`batcher.py`); uploads are checked against the limits (`uploads.py`);
the routes live in `app.py`. FastAPI and uvicorn come with the `serve` extra.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError
from ..i18n import _

SERVE_MODULES = ("fastapi", "uvicorn", "multipart")


def require_extra(modules: tuple[str, ...], command: str) -> None:
    """UsageError naming the extra to install when one of `modules` is not importable."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(_("`chatvlm {command}` needs the 'serve' extra ({missing} not installed): pip install 'chatvlm[serve]'").format(
            command=command, missing=", ".join(missing)))


def run_server(model_name: str = "auto", model_path: Optional[Path] = None, host: str = "127.0.0.1", port: int = 8000,
               api_key: Optional[str] = None, device: Optional[str] = None, settings: Any = None,
               **model_options: Any) -> None:
    """Load the model, then serve until interrupted (Ctrl-C); the model is freed at the end."""
    require_extra(SERVE_MODULES, "serve")
    import uvicorn

    from ..api import load_model
    from .app import ServerSettings, create_app

    settings = settings or ServerSettings()
    settings.api_key = api_key or None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    model = load_model(model_name, model_path=model_path, device=device, **model_options)
    try:
        app = create_app(model, settings)
        logging.getLogger("chatvlm.server").info(
            _("serving {model} on http://{host}:{port} (docs: /docs)").format(model=model.name, host=host, port=port))
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        model.close()
