"""What the web page does, without Streamlit: uploads -> pages -> results -> downloads."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..api import Model, RecognitionError
from ..errors import ChatVLMError
from ..i18n import _
from ..registry import ModelSpec, all_specs, get_spec
from ..server.uploads import ApiError, Limits, read_upload

TASKS = ("text", "markdown", "layout", "ask")


@dataclass
class PageItem:
    file: str
    page: int
    image: Any                       # PIL image


@dataclass
class PageAnswer:
    """One page's result on the page: what the task produced, or why it failed."""

    file: str
    page: int
    task: str
    text: str = ""                   # text, markdown or the answer
    blocks: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    image: Any = None                # the page, with layout boxes drawn for the layout task


def tasks_for(spec: ModelSpec) -> list[str]:
    """Tasks the page offers for a model: text and markdown always (the API maps them to
    what the model does), layout for models with boxes, ask for chat-capable ones."""
    tasks = ["text", "markdown"]
    if "layout" in spec.tasks:
        tasks.append("layout")
    if spec.can_chat:
        tasks.append("ask")
    return tasks


def model_choices(start: str) -> list[str]:
    """Models that can run here (weights present, or tesseract), the starting one first."""
    from ..model_info import model_status

    names = [start]
    for spec in all_specs():
        if spec.name not in names and model_status(spec)[0]:
            names.append(spec.name)
    return names


def resolve_start_model(name: str) -> str:
    """'auto' -> the model `chatvlm ocr --model auto` would use here."""
    if name != "auto":
        return get_spec(name).name
    from ..api import LogReporter
    from ..pipeline import resolve_model
    return resolve_model(name, LogReporter()).name


def read_pages(files: list[tuple[str, bytes]], pages: Optional[str], limits: Optional[Limits] = None
               ) -> tuple[list[PageItem], list[str]]:
    """Every selected page of every uploaded file, and a message per file or page that
    could not be read (the others still go on)."""
    limits = limits or Limits()
    items: list[PageItem] = []
    problems: list[str] = []
    for name, data in files:
        try:
            upload = read_upload(io.BytesIO(data), name, limits, pages or None)
        except ApiError as exc:
            problems.append(exc.message)
            continue
        for page in upload.pages:
            if page.image is None:
                problems.append(_("{path} page {page}").format(path=name, page=page.number) + f": {page.error}")
            else:
                items.append(PageItem(name, page.number, page.image))
    return items, problems


def run_task(model: Model, items: list[PageItem], task: str, question: str = "",
             progress: Optional[Callable[[int, int], None]] = None) -> list[PageAnswer]:
    """Recognise (in the model's batches) or ask about every page, reporting progress."""
    from ..layout import draw_overlay

    answers: list[PageAnswer] = []
    total = len(items)
    if task == "ask":
        for done, item in enumerate(items, 1):
            try:
                answers.append(PageAnswer(item.file, item.page, task, text=model.ask(item.image, question), image=item.image))
            except ChatVLMError as exc:
                answers.append(PageAnswer(item.file, item.page, task, error=str(exc), image=item.image))
            if progress:
                progress(done, total)
        return answers
    size = max(1, model.backend.default_batch_size(model.params))
    for start in range(0, total, size):
        chunk = items[start:start + size]
        errors: dict[int, str] = {}
        try:
            results = model.recognize([item.image for item in chunk], task=task)
        except RecognitionError as exc:
            results, errors = exc.results, exc.errors
        except ChatVLMError as exc:
            results, errors = [None] * len(chunk), {i: str(exc) for i in range(len(chunk))}
        for i, (item, result) in enumerate(zip(chunk, results)):
            if result is None:
                answers.append(PageAnswer(item.file, item.page, task, error=errors.get(i, _("no result")), image=item.image))
                continue
            answer = PageAnswer(item.file, item.page, task, finish_reason=result.finish_reason, image=item.image)
            if task == "text":
                answer.text = model._text(result)
            else:
                answer.text = model._markdown(result)
            if task == "layout":
                answer.blocks = [b.to_dict() for b in (result.layout or [])]
                answer.image = draw_overlay(item.image, result.layout or [])
            answers.append(answer)
        if progress:
            progress(min(start + size, total), total)
    return answers


def downloads(answers: list[PageAnswer], task: str, question: str = "") -> list[tuple[str, str, bytes, str]]:
    """(label, file name, content, MIME type) for the download buttons: the results as one
    text / markdown file, and everything as JSON."""
    def heading(a: PageAnswer) -> str:
        return _("{path} page {page}").format(path=a.file, page=a.page)

    ok = [a for a in answers if a.error is None]
    if task in ("markdown", "layout"):
        body = "\n\n".join(f"<!-- {heading(a)} -->\n\n{a.text}" for a in ok)
        main = (_("Download markdown"), "chatvlm.md", body.encode("utf-8"), "text/markdown")
    else:
        body = "\n\n".join(f"== {heading(a)} ==\n{a.text}" for a in ok)
        main = (_("Download text"), "chatvlm.txt", body.encode("utf-8"), "text/plain")
    records = []
    for a in answers:
        record: dict[str, Any] = {"file": a.file, "page": a.page, "status": "error" if a.error else "ok"}
        if a.error:
            record["error"] = a.error
        elif task == "ask":
            record.update(question=question, answer=a.text)
        elif task == "text":
            record["text"] = a.text
        else:
            record["markdown"] = a.text
            if task == "layout":
                record["blocks"] = a.blocks
        if a.finish_reason:
            record["finish_reason"] = a.finish_reason
        records.append(record)
    data = json.dumps({"task": task, "pages": records}, ensure_ascii=False, indent=1).encode("utf-8")
    return [main, (_("Download JSON"), "chatvlm.json", data, "application/json")]


def load(name: str, model_path: Optional[str] = None, device: Optional[str] = None) -> Model:
    from ..api import load_model
    return load_model(name, model_path=Path(model_path) if model_path else None, device=device)
