"""`chatvlm ask`: a question about one page, or an interactive chat about it.

The chat reads its input line by line (so it can be scripted: `printf 'q1\\nq2\\n' | chatvlm
ask page.png`) and keeps the conversation as (question, answer) pairs that every new
question is asked with. Lines starting with "/" are commands: /page N, /model NAME,
/reset, /help, /exit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from rich.console import Console
from rich.markdown import Markdown
from rich.text import Text

from .errors import ChatVLMError, InputError, ModelUnavailableError, UsageError
from .i18n import _
from .registry import ModelSpec, all_specs, get_spec


def chat_models() -> list[ModelSpec]:
    """Chat-capable models, best first."""
    return sorted((s for s in all_specs() if s.can_chat), key=lambda s: (s.auto_rank is None, s.auto_rank or 0, s.name))


def choose_chat_model(name: Optional[str], model_path: Optional[Path] = None) -> ModelSpec:
    """The named model if it can chat; with no name, the best chat model whose weights are here."""
    from .registry import cannot_chat_message

    if name and name != "auto":
        spec = get_spec(name)
        if not spec.can_chat:
            raise UsageError(cannot_chat_message(spec))
        return spec
    if model_path is not None:
        raise UsageError(_("--model-path needs --model NAME (which model is in that folder?)"))
    from .weights import weights_available

    candidates = chat_models()
    for spec in candidates:
        if spec.repo_id and weights_available(spec):
            return spec
    if not candidates:
        raise ModelUnavailableError(_("no chat-capable model is registered"))
    best = candidates[0]
    raise ModelUnavailableError(_(
        "no chat-capable model has its weights here. Download one by naming it, e.g. "
        "`chatvlm ask FILE --model {name}` ({gb} GB from the Hugging Face hub), or use a local "
        "checkpoint: --model NAME --model-path DIR. Chat-capable models: {models}").format(
        name=best.name, gb=best.download_gb, models=", ".join(s.name for s in candidates)))


def load_page(source: Path, number: int, dpi: int = 200):
    """Page `number` (1-based) of an image, PDF or multi-page TIFF, and the page count."""
    from .sources import open_document

    if not source.is_file():
        raise InputError(_("{path}: no such file or folder").format(path=source))
    doc = open_document(source, source.stem)
    if number < 1 or number > doc.page_count:
        raise UsageError(_("{path} has {count} page(s); page {page} does not exist").format(
            path=source, count=doc.page_count, page=number))
    return doc.render(number, dpi), doc.page_count


@dataclass
class ChatSession:
    """One conversation: a page, a model, and the (question, answer) history."""

    source: Path
    page: int
    model_name: Optional[str]
    model_path: Optional[Path] = None
    device: Optional[str] = None
    dpi: int = 200
    engine_options: dict = field(default_factory=dict)   # dtype, attn, max_new_tokens (load_model options)
    console: Console = field(default_factory=lambda: Console(highlight=False))
    errors: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    history: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model = None
        self.image, self.page_count = load_page(self.source, self.page, self.dpi)

    # ----------------------------------------------------------------- model
    def load(self, name: Optional[str], model_path: Optional[Path] = None) -> None:
        from .api import load_model

        spec = choose_chat_model(name, model_path)
        with self.errors.status(_("loading model {name}…").format(name=spec.name)):
            model = load_model(spec.name, model_path=model_path, device=self.device, **self.engine_options)
        if self.model is not None:
            self.model.close()
        self.model = model
        self.model_name = spec.name
        self.model_path = model_path

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None

    # ----------------------------------------------------------------- asking
    def ask(self, question: str) -> str:
        with self.errors.status(_("thinking…")):
            answer = self.model.ask(self.image, question, self.history)
        self.history.append((question, answer))
        return answer

    def show(self, answer: str) -> None:
        self.console.print(Markdown(answer.strip() or "—"))

    # ----------------------------------------------------------------- interactive
    def banner(self) -> None:
        self.errors.print(_("Chatting with {model} about {path}, page {page} of {count}.").format(
            model=self.model_name, path=self.source, page=self.page, count=self.page_count), style="bold")
        self.errors.print(_("Type a question, or a command: /page N, /model NAME [DIR], /reset, /help, /exit."), style="dim")

    def command(self, line: str) -> bool:
        """Run a /command; False means the chat should end."""
        name, _sep, arg = line[1:].partition(" ")
        name, arg = name.strip().lower(), arg.strip()
        if name in ("exit", "quit", "q"):
            return False
        if name == "help":
            self.errors.print(_("Commands: /page N (another page; starts a new conversation), /model NAME [DIR] (another model, "
                                "optionally from a local checkpoint folder; the conversation is kept), /reset (forget the conversation), /exit."))
        elif name == "reset":
            self.history.clear()
            self.errors.print(_("Conversation cleared."))
        elif name == "page":
            try:
                number = int(arg)
            except ValueError:
                raise UsageError(_("/page needs a page number, e.g. /page 2")) from None
            self.image, self.page_count = load_page(self.source, number, self.dpi)
            self.page = number
            self.history.clear()
            self.errors.print(_("Now on page {page} of {count}; new conversation.").format(page=number, count=self.page_count))
        elif name == "model":
            if not arg:
                raise UsageError(_("/model needs a model name; chat-capable models: {models}").format(
                    models=", ".join(s.name for s in chat_models())))
            model_name, _sep, folder = arg.partition(" ")
            self.load(model_name, Path(folder.strip()).expanduser() if folder.strip() else None)
            self.errors.print(_("Now chatting with {model}.").format(model=self.model_name))
        else:
            raise UsageError(_("unknown command '/{name}'; type /help").format(name=name))
        return True

    def interact(self, stream: TextIO) -> None:
        interactive = stream is sys.stdin and stream.isatty()
        self.banner()
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        while True:
            if interactive:
                try:
                    line = input("> ")
                except EOFError:
                    break
            else:
                line = stream.readline()
                if not line:
                    break
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not self.command(line):
                        break
                    continue
                if not interactive:
                    self.console.print(Text.assemble((">", "bold cyan"), " ", line))
                self.show(self.ask(line))
            except ChatVLMError as exc:
                self.errors.print(f"[bold red]{_('error')}:[/] {exc}", highlight=False)


def run_ask(source: str, question: Optional[str] = None, model: Optional[str] = None, page: int = 1,
            model_path: Optional[Path] = None, device: Optional[str] = None, dpi: int = 200,
            stream: Optional[TextIO] = None, dtype: Optional[str] = None, attn: Optional[str] = None,
            max_new_tokens: Optional[int] = None) -> int:
    """The `ask` command. Raises ChatVLMError for problems before the chat starts."""
    spec = choose_chat_model(model, model_path)   # a model that cannot chat fails before any page is rendered
    engine_options = {key: value for key, value in (("dtype", dtype), ("attn", attn), ("max_new_tokens", max_new_tokens))
                      if value is not None}
    session = ChatSession(Path(source).expanduser(), page, spec.name, model_path, device, dpi, engine_options)
    session.load(spec.name, model_path)
    try:
        if question is not None and question.strip():
            session.show(session.ask(question.strip()))
        else:
            session.interact(stream or sys.stdin)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return 0
