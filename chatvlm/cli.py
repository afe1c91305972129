"""The `chatvlm` command line: thin wrappers that build a RunConfig and call the pipeline.

Importing this module sets nothing up: the interface language (and with it Click's and
Typer's own words) is chosen when a command line runs, by `main()` and per invocation by
LocalizedGroup, so a program that imports `app` keeps its own settings.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape
from typer.core import TyperGroup

from . import __version__
from . import click_i18n  # noqa: F401  (Click's and Typer's own words follow set_language)
from .cli_options import (DEFAULT_DPI, DEFAULT_MAX_IMAGE_PIXELS, MIN_IMAGE_PIXELS, Attn, BatchSize, Device, Dpi, Dtype,
                          Force, Formats, GpusPerWorker, Host, Inputs, MaxImagePixels, MaxNewTokens, MaxPixels,
                          ModelName, ModelOptions, ModelPath, OcrLanguages, OutFolder, Overlay, PageRanges, Port, Ray,
                          SkipHeaders, Workers, check_dpi, check_engine_options, hoist_global_options,
                          normalize_ray_flag, parse_batch_size, parse_formats, parse_model_options)
from .config import BackendOptions, GenerationParams, RunConfig, task_for_formats
from .errors import EXIT_USAGE, ChatVLMError, UsageError
from .i18n import HELP_OPTION_TEXT, USAGE_PREFIX, _, language_from_argv, retranslate, set_language

__all__ = ["app", "main", "hoist_global_options", "normalize_ray_flag", "parse_model_options"]


# Typer may ship its own copy of Click, so these derive from the classes Typer really uses.
_BaseContext = TyperGroup.context_class


class _LocalizedFormatter(_BaseContext.formatter_class):
    def write_usage(self, prog: str, args: str = "", prefix: Optional[str] = None) -> None:
        super().write_usage(prog, args, prefix if prefix is not None else _(USAGE_PREFIX) + " ")


class _LocalizedContext(_BaseContext):
    formatter_class = _LocalizedFormatter


def _localize(command: Any) -> Any:
    """Show a command's help texts in the language chosen for this run."""
    command.context_class = _LocalizedContext
    command.help = retranslate(command.help)
    command.short_help = retranslate(command.short_help)
    for param in command.params:
        if getattr(param, "help", None):
            param.help = retranslate(param.help)
    return command


class LocalizedGroup(TyperGroup):
    """The `chatvlm` group: decides the language per invocation (--ui-lang, CHATVLM_LANG, the
    locale) and shows the help texts, declared in English, in it."""

    context_class = _LocalizedContext

    def make_context(self, info_name, args, parent=None, **extra):
        importlib.import_module("typer.rich_utils")   # loaded now, so set_language translates its panel titles

        args = normalize_ray_flag(list(args))
        set_language(language_from_argv(args))
        _localize(self)
        for command in self.commands.values():
            _localize(command)
        return super().make_context(info_name, args, parent=parent, **extra)

    def get_help_option(self, ctx: Any):
        option = super().get_help_option(ctx)
        if option is not None:
            option.help = _(HELP_OPTION_TEXT)
        return option

    def get_command(self, ctx: Any, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            option = command.get_help_option(ctx)
            if option is not None:
                option.help = _(HELP_OPTION_TEXT)
        return command


app = typer.Typer(
    name="chatvlm",
    cls=LocalizedGroup,
    help=_("Batch OCR with vision-language models: folders, globs and PDFs in; text, markdown and layout JSON out."),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chatvlm {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help=_("Show the version and exit.")),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help=_("More output (per-page lines).")),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_("Only errors; no progress bar or report table.")),
    ui_lang: Optional[str] = typer.Option(None, "--ui-lang", help=_("Interface language: en or ru (default: CHATVLM_LANG or the locale).")),
) -> None:
    from .ui import VERBOSITY
    VERBOSITY["level"] = 0 if quiet else 1 + verbose
    if ui_lang:
        if ui_lang.lower() not in ("en", "ru"):
            _fail(UsageError(_("--ui-lang must be en or ru")))
        set_language(ui_lang)


def _say_stopping(signum: int) -> None:
    from .ui import stderr
    stderr.print(f"[bold yellow]{_('stopping…')}[/] " + _("(again to quit at once)"), highlight=False)


def _run(config: RunConfig) -> None:
    from . import pipeline
    from .interrupt import exit_code_for, stop_on_signals
    from .ui import RichReporter, print_report, stderr

    try:
        with stop_on_signals(_say_stopping):
            outcome = pipeline.run(config, RichReporter())
    except ChatVLMError as exc:
        stderr.print(f"[bold red]{_('error')}:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt as exc:   # Ctrl-C or SIGTERM: exit 130 / 143, as shells expect
        done = getattr(exc, "outcome", None)
        if done is not None:
            print_report(done.report)
        stderr.print(f"[bold red]{_('interrupted')}[/]: " + _("pages already written are kept; rerun the same command to resume"))
        raise typer.Exit(exit_code_for(exc))
    print_report(outcome.report)
    raise typer.Exit(outcome.exit_code)


def _build_config(command: str, *, inputs: List[str], out: Path, model: str, formats: str, pages: Optional[str],
                  dpi: int, force: bool, lang: Optional[str], model_path: Optional[Path], device: Optional[str],
                  dtype: Optional[str], attn: Optional[str], batch_size: Optional[str], max_new_tokens: Optional[int],
                  max_pixels: Optional[int], overlay: bool, skip_headers: bool, max_image_pixels: int,
                  workers: Optional[int], extra: Optional[dict] = None, model_options: tuple[str, ...] = (),
                  ray: Optional[str] = None, gpus_per_worker: float = 1.0) -> RunConfig:
    check_dpi(dpi)
    if ray is not None:
        from .distributed import require_ray
        require_ray()   # not installed: say how to install it, before anything runs
    if not gpus_per_worker > 0:
        raise UsageError(_("--gpus-per-worker must be above 0 (e.g. 0.5 for two workers per GPU)"))
    fmt = parse_formats(formats)
    check_engine_options(device, dtype, attn, max_new_tokens, workers)
    if max_image_pixels < MIN_IMAGE_PIXELS:
        raise UsageError(_("--max-image-pixels must be at least {n}").format(n=MIN_IMAGE_PIXELS))
    backend_extra = dict(extra or {})
    if workers:
        backend_extra["workers"] = workers
    config = RunConfig(
        inputs=list(inputs), out=out, model=model, formats=fmt, pages=pages, dpi=dpi, force=force,
        overlay=overlay, skip_headers=skip_headers, max_image_pixels=max_image_pixels, command=command,
        task=task_for_formats(fmt, command),
        backend=BackendOptions(model_path=model_path, device=device, dtype=dtype, attn=attn, lang=lang, extra=backend_extra),
        generation=GenerationParams(max_new_tokens=max_new_tokens, batch_size=parse_batch_size(batch_size), max_pixels=max_pixels),
        model_options=tuple(model_options),
        ray=ray, gpus_per_worker=gpus_per_worker,
    )
    from .sources import parse_page_ranges
    parse_page_ranges(pages)   # a bad range is a usage error before anything runs
    from .registry import get_spec
    if model != "auto":
        spec = get_spec(model)
        if config.task not in spec.tasks:
            # e.g. layout JSON from a model without boxes: fall back to its markdown.
            config.task = "markdown" if "markdown" in spec.tasks else spec.tasks[0]
    return config


@app.command(help=_("OCR images and PDFs into text, markdown and/or layout JSON, one file per page."))
def ocr(
    inputs: Inputs,
    out: OutFolder = Path("out"),
    model: ModelName = "auto",
    formats: Formats = "text,markdown",
    pages: PageRanges = None,
    dpi: Dpi = DEFAULT_DPI,
    force: Force = False,
    lang: OcrLanguages = None,
    model_path: ModelPath = None,
    device: Device = None,
    dtype: Dtype = None,
    attn: Attn = None,
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = None,
    max_pixels: MaxPixels = None,
    overlay: Overlay = False,
    skip_headers: SkipHeaders = False,
    max_image_pixels: MaxImagePixels = DEFAULT_MAX_IMAGE_PIXELS,
    workers: Workers = None,
    model_option: ModelOptions = None,
    ray: Ray = None,
    gpus_per_worker: GpusPerWorker = 1.0,
) -> None:
    try:
        options = parse_model_options(model_option)
        config = _build_config(
            "ocr", inputs=inputs, out=out, model=model, formats=formats, pages=pages, dpi=dpi, force=force, lang=lang,
            model_path=model_path, device=device, dtype=dtype, attn=attn, batch_size=batch_size,
            max_new_tokens=max_new_tokens, max_pixels=max_pixels, overlay=overlay, skip_headers=skip_headers,
            max_image_pixels=max_image_pixels, workers=workers, extra=options, model_options=tuple(options),
            ray=ray, gpus_per_worker=gpus_per_worker)
    except ChatVLMError as exc:
        _fail(exc)
    _run(config)


@app.command(help=_("Layout analysis: blocks with boxes, categories and text per page (JSON + markdown)."))
def layout(
    inputs: Inputs,
    out: OutFolder = Path("out"),
    model: str = typer.Option("auto", "--model", "-m", help=_("Layout model: dots_ocr, deepseek_ocr, deepseek_ocr2 or tesseract; auto = best available.")),
    mode: str = typer.Option("all", "--mode", help=_("all = boxes and text; layout-only = boxes and categories.")),
    pages: PageRanges = None,
    dpi: Dpi = DEFAULT_DPI,
    force: Force = False,
    overlay: Overlay = False,
    skip_headers: SkipHeaders = False,
    lang: OcrLanguages = None,
    model_path: ModelPath = None,
    device: Device = None,
    dtype: Dtype = None,
    attn: Attn = None,
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = None,
    max_pixels: MaxPixels = None,
    max_image_pixels: MaxImagePixels = DEFAULT_MAX_IMAGE_PIXELS,
    workers: Workers = None,
    model_option: ModelOptions = None,
    ray: Ray = None,
    gpus_per_worker: GpusPerWorker = 1.0,
) -> None:
    if mode not in ("all", "layout-only"):
        _fail(UsageError(_("--mode must be all or layout-only")))
    try:
        options = parse_model_options(model_option)
        config = _build_config(
            "layout", inputs=inputs, out=out, model=model, formats="json,markdown", pages=pages, dpi=dpi, force=force,
            lang=lang, model_path=model_path, device=device, dtype=dtype, attn=attn, batch_size=batch_size,
            max_new_tokens=max_new_tokens, max_pixels=max_pixels, overlay=overlay, skip_headers=skip_headers,
            max_image_pixels=max_image_pixels, workers=workers, extra={**options, "layout_mode": mode},
            model_options=tuple(options), ray=ray, gpus_per_worker=gpus_per_worker)
        from .registry import get_spec
        if "layout" not in get_spec(config.model if model != "auto" else "tesseract").tasks:
            raise UsageError(_("model '{name}' gives no layout boxes; use dots_ocr, deepseek_ocr, deepseek_ocr2 or tesseract").format(name=model))
    except ChatVLMError as exc:
        _fail(exc)
    _run(config)


@app.command(help=_("Run the same pages through several models: speed and accuracy in one table (bench.json, bench.md)."))
def bench(
    inputs: Inputs,
    out: Path = typer.Option(Path("bench-out"), "--out", "-o", help=_("Output folder (bench.json, bench.md, one folder per model).")),
    models: Optional[str] = typer.Option(None, "--models", "-m", help=_("all, or comma-separated names (default: every model with local weights, plus tesseract).")),
    model_path: Optional[List[str]] = typer.Option(None, "--model-path", help=_("NAME=DIR: local checkpoint folder of a model (repeatable).")),
    max_pages: Optional[int] = typer.Option(None, "--max-pages", help=_("Use at most this many pages in all.")),
    repeats: int = typer.Option(1, "--repeats", help=_("Run the pages this many times per model.")),
    layout: Optional[str] = typer.Option(None, "--layout", help=_("Also write outputs for a scorer: olmocr-bench (<name>_pg<N>_repeat<K>.md).")),
    ignore_case: str = typer.Option("auto", "--ignore-case", help=_("Compare with ground truth ignoring case: auto (when it is all capitals), yes or no.")),
    synthetic: bool = typer.Option(False, "--synthetic", help=_("Random weights at full size from each model's full config: measures speed only.")),
    tokens: str = typer.Option("512", "--tokens", help=_("With --synthetic: tokens generated per page, N, or A-B for a count per page drawn uniformly in A..B.")),
    seed: int = typer.Option(0, "--seed", help=_("With --synthetic --tokens A-B: seed of the per-page token counts.")),
    synthetic_config: Optional[List[str]] = typer.Option(None, "--synthetic-config", help=_("NAME=config.json: full config to build a model from (repeatable).")),
    no_warmup: bool = typer.Option(False, "--no-warmup", help=_("Skip the warm-up page (and the roofline counted on it): shorter, but the timed pages then include the cold start.")),
    pages: PageRanges = None,
    dpi: Dpi = DEFAULT_DPI,
    lang: OcrLanguages = None,
    device: Device = None,
    dtype: Dtype = None,
    attn: Attn = None,
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = None,
    max_pixels: MaxPixels = None,
    max_image_pixels: MaxImagePixels = DEFAULT_MAX_IMAGE_PIXELS,
    workers: Workers = None,
    model_option: Optional[List[str]] = typer.Option(None, "--model-option", "-O", help=_("Setting KEY=VALUE for every model of the run, repeatable (e.g. decode=hf).")),
    ray: Ray = None,
    gpus_per_worker: GpusPerWorker = 1.0,
) -> None:
    from . import bench as bench_mod
    from .ui import RichReporter, stderr, stdout

    try:
        if max_pages is not None and max_pages < 1:
            raise UsageError(_("--max-pages must be at least 1"))
        if ignore_case not in ("auto", "yes", "no"):
            raise UsageError(_("--ignore-case must be auto, yes or no"))
        base = _build_config(
            "bench", inputs=inputs, out=out, model="auto", formats="text,markdown", pages=pages, dpi=dpi, force=True,
            lang=lang, model_path=None, device=device, dtype=dtype, attn=attn, batch_size=batch_size,
            max_new_tokens=max_new_tokens, max_pixels=max_pixels, overlay=False, skip_headers=False,
            max_image_pixels=max_image_pixels, workers=workers, extra=parse_model_options(model_option),
            ray=ray, gpus_per_worker=gpus_per_worker)
        base.max_pages = max_pages
        from .synthetic import parse_token_range
        try:
            tokens_low, tokens_high = parse_token_range(tokens)
        except ValueError:
            raise UsageError(_("--tokens takes N or A-B with 1 <= A <= B, got '{value}'").format(value=tokens)) from None
        config = bench_mod.BenchConfig(
            base=base, model_paths=bench_mod.parse_assignments(model_path, "--model-path"), repeats=repeats,
            layout=layout, synthetic=synthetic, tokens=tokens_low,
            tokens_max=tokens_high, seed=seed, ignore_case=ignore_case, warmup=not no_warmup, command_line=list(sys.argv),
            synthetic_configs=bench_mod.parse_assignments(synthetic_config, "--synthetic-config"))
        names = bench_mod.select_models(models, config)
        from .interrupt import stop_on_signals
        with stop_on_signals(_say_stopping):
            outcome = bench_mod.run_bench(config, names, RichReporter())
    except ChatVLMError as exc:
        _fail(exc)
    except KeyboardInterrupt as exc:
        from .interrupt import exit_code_for
        stderr.print(f"[bold red]{_('interrupted')}[/]: " + _("models finished so far are in bench.json"))
        raise typer.Exit(exit_code_for(exc))
    stdout.print(bench_mod.render_table(outcome.report, width=stdout.width))
    stdout.print(_("Written: {json}, {md}").format(json=out / bench_mod.BENCH_JSON, md=out / bench_mod.BENCH_MD), highlight=False)
    raise typer.Exit(outcome.exit_code)


@app.command(help=_("List the known models: backend, checkpoint, tasks and whether they can run here."))
def models() -> None:
    from .model_info import print_models
    print_models()


@app.command(help=_("Ask a question about a page; with no question, chat about it (/page N, /model NAME, /exit)."))
def ask(
    source: str = typer.Argument(..., help=_("An image or a PDF.")),
    question: Optional[str] = typer.Argument(None, help=_("The question; leave it out for an interactive chat.")),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=_("Chat-capable model (default: the best one whose weights are here).")),
    page: int = typer.Option(1, "--page", "-p", help=_("Page of a PDF or multi-page TIFF, from 1.")),
    model_path: ModelPath = None,
    device: Device = None,
    dtype: Dtype = None,
    attn: Attn = None,
    max_new_tokens: MaxNewTokens = None,
    dpi: Dpi = DEFAULT_DPI,
) -> None:
    from .chat import run_ask

    try:
        check_engine_options(device, dtype, attn, max_new_tokens)
        code = run_ask(source, question, model=model, page=page, model_path=model_path, device=device, dpi=dpi,
                       dtype=dtype, attn=attn, max_new_tokens=max_new_tokens)
    except ChatVLMError as exc:
        _fail(exc)
    raise typer.Exit(code)


@app.command(help=_("Serve a model over HTTP: POST /v1/ocr, /v1/layout, /v1/ask; API docs at /docs."))
def serve(
    model: ModelName = "auto",
    model_path: ModelPath = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="CHATVLM_API_KEY", show_default=False,
                                          help=_("Require this key (Authorization: Bearer KEY or X-API-Key: KEY) on every endpoint but /health.")),
    device: Device = None,
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = None,
    queue_size: int = typer.Option(64, "--queue-size", help=_("Pages that may wait for the model; above it requests get 503 with Retry-After.")),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help=_("Largest upload accepted, in MB (413 above it).")),
    max_image_pixels: int = typer.Option(50_000_000, "--max-image-pixels", help=_("Largest image accepted, in pixels (413 above it); PDF pages are rendered within it.")),
    max_pages: int = typer.Option(50, "--max-pages", help=_("Most pages one request may ask for (413 above it).")),
    dpi: Dpi = DEFAULT_DPI,
    lang: OcrLanguages = None,
) -> None:
    try:
        from .server import SERVE_MODULES, require_extra, run_server
        require_extra(SERVE_MODULES, "serve")
        from .server.app import ServerSettings
        from .server.uploads import Limits

        if not 0 < port < 65536:
            raise UsageError(_("--port must be between 1 and 65535"))
        if queue_size < 1 or max_pages < 1 or max_upload_mb <= 0 or max_image_pixels < 1:
            raise UsageError(_("--queue-size, --max-pages, --max-upload-mb and --max-image-pixels must be positive"))
        check_dpi(dpi)
        size = parse_batch_size(batch_size)
        limits = Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_image_pixels,
                        max_pages=max_pages, dpi=dpi)
        settings = ServerSettings(limits=limits, queue_pages=queue_size, batch_size=size)
        options: dict = {k: v for k, v in (("batch_size", size), ("max_new_tokens", max_new_tokens), ("lang", lang)) if v is not None}
        run_server(model, model_path=model_path, host=host, port=port, api_key=api_key, device=device,
                   settings=settings, **options)
    except ChatVLMError as exc:
        _fail(exc)


@app.command(help=_("Open a web page to try models on your own pages (Streamlit): upload, recognise, download."))
def ui(
    model: str = typer.Option("auto", "--model", "-m", help=_("Model selected when the page opens (the page can switch).")),
    model_path: ModelPath = None,
    host: Host = "127.0.0.1",
    port: Port = 8501,
    device: Device = None,
) -> None:
    try:
        from .server import require_extra
        require_extra(("streamlit",), "ui")
        if not 0 < port < 65536:
            raise UsageError(_("--port must be between 1 and 65535"))
        from .web import run_ui
        code = run_ui(model, model_path=model_path, host=host, port=port, device=device)
    except ChatVLMError as exc:
        _fail(exc)
    raise typer.Exit(code)


def _fail(exc: ChatVLMError) -> None:
    from .ui import stderr

    # Messages are plain text: brackets in them (chatvlm[serve], [1, 2]) are not markup.
    stderr.print(f"[bold red]{_('error')}:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(exc.exit_code if exc.exit_code else EXIT_USAGE)


def main() -> None:
    """The `chatvlm` console script: the interface language first (--ui-lang anywhere,
    CHATVLM_LANG, the locale), then the command."""
    argv = hoist_global_options(sys.argv[1:])
    set_language(language_from_argv(argv))
    app(args=argv, prog_name="chatvlm")


if __name__ == "__main__":
    main()
