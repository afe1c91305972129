"""The HTTP API: FastAPI routes over one loaded model and its batching queue.

    POST /v1/ocr      file, format=text|markdown|json, pages   -> per-page results
    POST /v1/layout   file, pages                              -> per-page layout blocks
    POST /v1/ask      file, question, history, page            -> the answer
    GET  /v1/models   the loaded model and the known ones
    GET  /health      liveness and queue depth (no key needed)
    GET  /docs        OpenAPI documentation

Every error is JSON `{"error": {"code", "message"}}` with a 4xx status that says whose
fault it is; a stack trace never reaches the client (it goes to the server log).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..api import Model
from ..i18n import _
from ..textnorm import markdown_to_text
from ..records import PageResult
from ..registry import all_specs, cannot_chat_message
from .batcher import Batcher, PageOutcome, QueueFull, Work
from .uploads import ApiError, Limits, Upload, read_upload, too_large

logger = logging.getLogger("chatvlm.server")

# Multipart framing and the small form fields around the file.
FORM_OVERHEAD_BYTES = 64 * 1024
OPEN_PATHS = ("/health",)


@dataclass
class ServerSettings:
    limits: Limits = field(default_factory=Limits)
    api_key: Optional[str] = None
    queue_pages: int = 64
    batch_size: Optional[int] = None
    batch_wait_s: float = 0.02


def error_response(status: int, code: str, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# --------------------------------------------------------------------------- guards

class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """API key on every path but /health; request bodies cut off past the upload limit.

    Pure ASGI, so a body without Content-Length (chunked) is counted as it streams in
    and never fills the disk."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.settings.api_key and scope.get("path") not in OPEN_PATHS and not self._authorised(headers):
            response = error_response(401, "unauthorized", _("missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"),
                                      {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        limit = self.settings.limits.max_upload_bytes + FORM_OVERHEAD_BYTES
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(scope, receive, send)
        received = 0
        started = exceeded = False

        async def limited_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            # The form parser turns any failure into its own 400; past the limit the
            # client must learn the real reason, so that response becomes our 413.
            nonlocal started
            if message["type"] == "http.response.start":
                if started:
                    return
                started = True
                if exceeded:
                    return await self._refuse(scope, receive, send)
            elif exceeded:
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    def _authorised(self, headers: dict[str, str]) -> bool:
        expected = self.settings.api_key or ""
        offered = headers.get("x-api-key")
        if offered is None:
            scheme, _sep, token = headers.get("authorization", "").partition(" ")
            offered = token.strip() if scheme.lower() == "bearer" else None
        return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())

    async def _refuse(self, scope, receive, send):
        error = too_large(self.settings.limits.max_upload_bytes)
        await error_response(error.status, error.code, error.message, {"Connection": "close"})(scope, receive, send)


# --------------------------------------------------------------------------- results

def page_json(number: int, outcome: PageOutcome, fmt: str, render_s: float = 0.0) -> dict[str, Any]:
    """One page in the schema of the CLI's files and manifest: page, text / markdown /
    blocks, finish_reason, tokens, timings."""
    if outcome.error is not None or outcome.result is None:
        return {"page": number, "status": "error", "error": outcome.error}
    result: PageResult = outcome.result
    out: dict[str, Any] = {"page": number, "status": "ok", "width": result.width, "height": result.height}
    markdown = result.markdown if result.markdown is not None else (result.text or "")
    if fmt == "text":
        out["text"] = result.text if result.text is not None else markdown_to_text(markdown)
    elif fmt == "markdown":
        out["markdown"] = markdown
    else:
        out["blocks"] = [b.to_dict() for b in (result.layout or [])]
        out["markdown"] = markdown
        out["repaired"] = result.repaired
        out["dropped_blocks"] = result.dropped_blocks
    out["finish_reason"] = result.finish_reason
    out["tokens"] = {"input": result.input_tokens, "output": result.output_tokens}
    # Seconds: rendering the upload, waiting for the device, the batch the page ran in.
    timings = {"render": render_s, **result.timings, "queue": outcome.queue_s, "recognise": outcome.recognise_s}
    out["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return out


# --------------------------------------------------------------------------- the app

def create_app(model: Model, settings: Optional[ServerSettings] = None) -> FastAPI:
    """The API over an already loaded `model`; its batching worker runs while the app does."""
    settings = settings or ServerSettings()
    batcher = Batcher(model, settings.queue_pages, settings.batch_size, settings.batch_wait_s)

    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="chatvlm", version=__version__, lifespan=lifespan,
                  description=_("Batch OCR with vision-language models over HTTP."))
    app.state.model = model
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_middleware(GuardMiddleware, settings=settings)
    _add_error_handlers(app)

    async def pages_of(file: UploadFile, pages: Optional[str] = None, single_page: Optional[int] = None) -> Upload:
        name = file.filename or "upload"
        return await run_in_threadpool(read_upload, file.file, name, settings.limits, pages, single_page)

    async def run(work: Work) -> Any:
        try:
            future = batcher.submit(work)
        except QueueFull as full:
            raise ApiError(503, "busy", _("the server is busy: the queue is full; retry in {s} s").format(s=full.retry_after),
                           {"Retry-After": str(full.retry_after)}) from None
        return await asyncio.wrap_future(future)

    async def recognise(file: UploadFile, fmt: str, pages: Optional[str]) -> dict[str, Any]:
        task = {"text": "text", "markdown": "markdown", "json": "layout"}[fmt]
        if task == "layout" and "layout" not in model.spec.tasks:
            task = "markdown"   # like the CLI: JSON from a model without boxes carries its markdown
        upload = await pages_of(file, pages)
        readable = [p for p in upload.pages if p.image is not None]
        outcomes = iter(await run(Work(task=task, images=[p.image for p in readable])))
        for page in readable:
            page.image = None
        results = [page_json(p.number, next(outcomes) if p.error is None else PageOutcome(error=p.error), fmt, p.render_s)
                   for p in upload.pages]
        return {"model": model.name, "file": upload.filename, "page_count": upload.page_count,
                "format": fmt, "pages": results,
                "failed": sum(1 for r in results if r["status"] != "ok")}

    @app.get("/health", summary=_("Liveness and queue depth (no API key needed)."))
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.name, "queue_pages": batcher.waiting_pages,
                "queue_limit": batcher.queue_pages, "batch_size": batcher.batch_size}

    @app.get("/v1/models", summary=_("The loaded model and every known model."))
    async def models() -> dict[str, Any]:
        known = [{"name": s.name, "description": s.description, "tasks": list(s.tasks), "can_chat": bool(s.can_chat),
                  "loaded": s.name == model.name} for s in all_specs()]
        return {"model": model.name, "tasks": list(model.spec.tasks), "can_chat": model.can_chat, "models": known}

    @app.post("/v1/ocr", summary=_("Recognise an image or the pages of a PDF: text, markdown or layout JSON per page."))
    async def ocr(file: UploadFile = File(..., description=_("An image (PNG, JPEG, TIFF, WebP, GIF, BMP) or a PDF.")),
                  format: str = Form("text", description=_("text, markdown or json.")),
                  pages: Optional[str] = Form(None, description=_("Pages of the document, e.g. 1-3,7 (default: all)."))) -> dict[str, Any]:
        fmt = {"txt": "text", "md": "markdown", "layout": "json"}.get(format.strip().lower(), format.strip().lower())
        if fmt not in ("text", "markdown", "json"):
            raise ApiError(400, "bad_format", _("unknown format '{fmt}'; choose from {known}").format(fmt=format, known="text, markdown, json"))
        return await recognise(file, fmt, pages)

    @app.post("/v1/layout", summary=_("Layout blocks (box, category, text, order) and markdown per page."))
    async def layout(file: UploadFile = File(..., description=_("An image (PNG, JPEG, TIFF, WebP, GIF, BMP) or a PDF.")),
                     pages: Optional[str] = Form(None, description=_("Pages of the document, e.g. 1-3,7 (default: all)."))) -> dict[str, Any]:
        if "layout" not in model.spec.tasks:
            raise ApiError(400, "no_layout", _("model '{name}' gives no layout boxes; use dots_ocr, deepseek_ocr, deepseek_ocr2 or tesseract").format(
                name=model.name))
        return await recognise(file, "json", pages)

    @app.post("/v1/ask", summary=_("Answer a question about one page."))
    async def ask(file: UploadFile = File(..., description=_("An image (PNG, JPEG, TIFF, WebP, GIF, BMP) or a PDF.")),
                  question: str = Form(..., description=_("The question.")),
                  history: Optional[str] = Form(None, description=_("The conversation so far: JSON [[question, answer], ...].")),
                  page: int = Form(1, description=_("Page of a PDF or multi-page TIFF, from 1."))) -> dict[str, Any]:
        if not model.can_chat:
            raise ApiError(400, "cannot_chat", cannot_chat_message(model.spec))
        if not question.strip():
            raise ApiError(400, "bad_question", _("the question is empty"))
        pairs = _parse_history(history)
        upload = await pages_of(file, single_page=page)
        outcome: PageOutcome = await run(Work(task="ask", images=[upload.pages[0].image], question=question, history=pairs))
        if outcome.error is not None:
            return {"model": model.name, "file": upload.filename, "page": page, "status": "error", "error": outcome.error}
        return {"model": model.name, "file": upload.filename, "page": page, "status": "ok", "question": question,
                "answer": outcome.result,
                "timings": {"render": round(upload.pages[0].render_s, 4), "queue": round(outcome.queue_s, 4),
                            "recognise": round(outcome.recognise_s, 4)}}

    return app


def _parse_history(text: Optional[str]) -> list[tuple[str, str]]:
    if text is None or not text.strip():
        return []
    try:
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                                 and all(isinstance(s, str) for s in p) for p in data):
            raise ValueError
    except ValueError:
        raise ApiError(400, "bad_history", _("history must be JSON: a list of [question, answer] pairs")) from None
    return [(q, a) for q, a in data]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "body"
            if error.get("type") == "missing":
                problems.append(_("'{field}' is missing").format(field=where))
            else:
                problems.append(_("'{field}' is not valid").format(field=where))
        return error_response(400, "bad_request", "; ".join(problems) or _("bad request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        messages = {400: _("the request body could not be read; send multipart/form-data with a 'file' field"),
                    404: _("no such endpoint: {path}").format(path=request.url.path),
                    405: _("method {method} is not allowed here").format(method=request.method)}
        message = messages.get(exc.status_code) or str(exc.detail)
        return error_response(exc.status_code, "http_error", message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal", _("internal error ({name}); the server log has the details").format(
            name=exc.__class__.__name__))
