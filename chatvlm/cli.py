"""The `chatvlm` command line: thin wrappers that build a RunConfig and call the pipeline."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape
import typer.rich_utils  # noqa: F401  (its panel titles are translated by click_i18n)
from typer.core import TyperGroup

from . import __version__
from . import click_i18n  # noqa: F401  (Click's and Typer's own words follow set_language)
from .config import OUTPUT_FORMATS, BackendOptions, GenerationParams, RunConfig, task_for_formats
from .errors import EXIT_USAGE, ChatVLMError, UsageError
from .i18n import HELP_OPTION_TEXT, USAGE_PREFIX, _, language_from_argv, retranslate, set_language

# Typer evaluates help texts when the commands below are defined, so the language is
# decided first: --ui-lang anywhere on the command line, else CHATVLM_LANG, else the locale.
set_language(language_from_argv(sys.argv[1:]))


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
    """The `chatvlm` group: re-decides the language per invocation (--ui-lang, CHATVLM_LANG)
    and translates help texts that were built at import time in another language."""

    context_class = _LocalizedContext

    def make_context(self, info_name, args, parent=None, **extra):
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


def _parse_formats(value: str) -> tuple[str, ...]:
    aliases = {"txt": "text", "md": "markdown", "layout": "json"}
    formats = []
    for item in value.split(","):
        item = aliases.get(item.strip().lower(), item.strip().lower())
        if not item:
            continue
        if item not in OUTPUT_FORMATS:
            raise UsageError(_("unknown format '{fmt}'; choose from {known}").format(fmt=item, known=", ".join(OUTPUT_FORMATS)))
        if item not in formats:
            formats.append(item)
    if not formats:
        raise UsageError(_("--format needs at least one of {known}").format(known=", ".join(OUTPUT_FORMATS)))
    return tuple(formats)


def _parse_batch_size(value: Optional[str]) -> Optional[int]:
    if value is None or value == "auto":
        return None
    try:
        size = int(value)
    except ValueError:
        raise UsageError(_("--batch-size takes a number or 'auto'")) from None
    if size < 1:
        raise UsageError(_("--batch-size must be at least 1"))
    return size


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


def parse_model_options(items: Optional[List[str]]) -> dict:
    """-O KEY=VALUE pairs into BackendOptions.extra; numbers become numbers."""
    options: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(_("--model-option takes KEY=VALUE, got '{item}'").format(item=item))
        value = value.strip()
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                continue
        options[key.strip()] = value
    return options


DTYPE_NAMES = ("bfloat16", "bf16", "float16", "fp16", "half", "float32", "fp32", "float")
ATTENTION_KERNELS = ("flash_attention_2", "sdpa", "eager")
# Below this, pages would be shrunk to thumbnails (and at 0 every file is refused).
MIN_IMAGE_PIXELS = 1_000_000


def check_engine_options(device: Optional[str], dtype: Optional[str], attn: Optional[str],
                         max_new_tokens: Optional[int], workers: Optional[int] = None) -> None:
    """Options every command that runs a model shares: nonsense is a usage error before anything loads."""
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UsageError(_("--device must be cpu, cuda or cuda:N, got '{value}'").format(value=device))
    if dtype is not None and dtype.lower() not in DTYPE_NAMES:
        raise UsageError(_("--dtype must be bfloat16, float16 or float32, got '{value}'").format(value=dtype))
    if attn and attn not in ATTENTION_KERNELS:
        raise UsageError(_("--attn must be flash_attention_2, sdpa or eager"))
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UsageError(_("--max-new-tokens must be at least 1"))
    if workers is not None and workers < 1:
        raise UsageError(_("--workers must be at least 1"))


def _build_config(command: str, inputs: List[str], out: Path, model: str, formats: str, pages: Optional[str], dpi: int,
                  force: bool, lang: Optional[str], model_path: Optional[Path], device: Optional[str],
                  dtype: Optional[str], attn: Optional[str], batch_size: Optional[str], max_new_tokens: Optional[int],
                  max_pixels: Optional[int], overlay: bool, skip_headers: bool, max_image_pixels: int,
                  workers: Optional[int], extra: Optional[dict] = None, model_options: tuple[str, ...] = (),
                  ray: Optional[str] = None, gpus_per_worker: float = 1.0) -> RunConfig:
    if dpi < 30 or dpi > 1200:
        raise UsageError(_("--dpi must be between 30 and 1200"))
    if ray is not None:
        from .distributed import require_ray
        require_ray()   # not installed: say how to install it, before anything runs
    if not gpus_per_worker > 0:
        raise UsageError(_("--gpus-per-worker must be above 0 (e.g. 0.5 for two workers per GPU)"))
    fmt = _parse_formats(formats)
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
        generation=GenerationParams(max_new_tokens=max_new_tokens, batch_size=_parse_batch_size(batch_size), max_pixels=max_pixels),
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


# `--ray` alone starts a local cluster for the run; `--ray ADDRESS` joins one.
RAY_LOCAL = "local"


def _ray_option():
    return typer.Option(None, "--ray", metavar="[ADDRESS]",
                        help=_("Run on a Ray cluster: alone, a local cluster for this run; or auto, ray://HOST:10001, HOST:PORT."))


def _gpus_per_worker_option():
    return typer.Option(1.0, "--gpus-per-worker", help=_("With --ray: GPUs per model worker (0.5 = two workers share a GPU)."))


def _looks_like_ray_address(value: str) -> bool:
    import re
    return value in (RAY_LOCAL, "auto") or value.startswith("ray://") or re.fullmatch(r"[\w.\-]+:\d+", value) is not None


def normalize_ray_flag(argv: list[str]) -> list[str]:
    """`--ray` without an address after it (last, before an option, or before an input)
    means a local cluster: click options take a value or none, never either."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or not _looks_like_ray_address(argv[i + 1])):
            out.append(RAY_LOCAL)
    return out


@app.command(help=_("OCR images and PDFs into text, markdown and/or layout JSON, one file per page."))
def ocr(
    inputs: List[str] = typer.Argument(..., help=_("Files, folders, globs (** allowed) or @list.txt files.")),
    out: Path = typer.Option(Path("out"), "--out", "-o", help=_("Output folder.")),
    model: str = typer.Option("auto", "--model", "-m", help=_("Model name (see `chatvlm models`); auto = best available.")),
    formats: str = typer.Option("text,markdown", "--format", "-f", help=_("Comma-separated: text, markdown, json.")),
    pages: Optional[str] = typer.Option(None, "--pages", help=_("Pages of every document, e.g. 1-3,7.")),
    dpi: int = typer.Option(200, "--dpi", help=_("Resolution for rendering PDF pages.")),
    force: bool = typer.Option(False, "--force", help=_("Redo pages the manifest says are done.")),
    lang: Optional[str] = typer.Option(None, "--lang", help=_("Tesseract languages, e.g. eng+rus.")),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help=_("Local checkpoint folder for --model.")),
    device: Optional[str] = typer.Option(None, "--device", help=_("cuda, cuda:N or cpu (default: best available).")),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=_("bfloat16, float16 or float32.")),
    attn: Optional[str] = typer.Option(None, "--attn", help=_("Attention kernel: flash_attention_2, sdpa or eager.")),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", help=_("Pages per batch, or auto.")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=_("Generation limit per page.")),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help=_("Model pixel budget per page (overrides the model's).")),
    overlay: bool = typer.Option(False, "--overlay", help=_("Also draw layout boxes on each page (page-NNNN.layout.png).")),
    skip_headers: bool = typer.Option(False, "--skip-headers", help=_("Leave page headers and footers out of markdown.")),
    max_image_pixels: int = typer.Option(50_000_000, "--max-image-pixels", help=_("Pages above this are downscaled; far above it, refused.")),
    workers: Optional[int] = typer.Option(None, "--workers", help=_("CPU engine worker processes (default: one per core); with --ray, model workers (default: one per GPU, or per CPU).")),
    model_option: Optional[List[str]] = typer.Option(None, "--model-option", "-O", help=_("Model-specific setting KEY=VALUE, repeatable (e.g. mode=gundam for deepseek_ocr, num_crops=4 for phi3_vision).")),
    ray: Optional[str] = _ray_option(),
    gpus_per_worker: float = _gpus_per_worker_option(),
) -> None:
    try:
        options = parse_model_options(model_option)
        config = _build_config("ocr", inputs, out, model, formats, pages, dpi, force, lang, model_path, device, dtype,
                               attn, batch_size, max_new_tokens, max_pixels, overlay, skip_headers, max_image_pixels, workers,
                               extra=options, model_options=tuple(options), ray=ray, gpus_per_worker=gpus_per_worker)
    except ChatVLMError as exc:
        _fail(exc)
    _run(config)


@app.command(help=_("Layout analysis: blocks with boxes, categories and text per page (JSON + markdown)."))
def layout(
    inputs: List[str] = typer.Argument(..., help=_("Files, folders, globs (** allowed) or @list.txt files.")),
    out: Path = typer.Option(Path("out"), "--out", "-o", help=_("Output folder.")),
    model: str = typer.Option("auto", "--model", "-m", help=_("Layout model: dots_ocr, deepseek_ocr, deepseek_ocr2 or tesseract; auto = best available.")),
    mode: str = typer.Option("all", "--mode", help=_("all = boxes and text; layout-only = boxes and categories.")),
    pages: Optional[str] = typer.Option(None, "--pages", help=_("Pages of every document, e.g. 1-3,7.")),
    dpi: int = typer.Option(200, "--dpi", help=_("Resolution for rendering PDF pages.")),
    force: bool = typer.Option(False, "--force", help=_("Redo pages the manifest says are done.")),
    overlay: bool = typer.Option(False, "--overlay", help=_("Also draw layout boxes on each page (page-NNNN.layout.png).")),
    skip_headers: bool = typer.Option(False, "--skip-headers", help=_("Leave page headers and footers out of markdown.")),
    lang: Optional[str] = typer.Option(None, "--lang", help=_("Tesseract languages, e.g. eng+rus.")),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help=_("Local checkpoint folder for --model.")),
    device: Optional[str] = typer.Option(None, "--device", help=_("cuda, cuda:N or cpu (default: best available).")),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=_("bfloat16, float16 or float32.")),
    attn: Optional[str] = typer.Option(None, "--attn", help=_("Attention kernel: flash_attention_2, sdpa or eager.")),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", help=_("Pages per batch, or auto.")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=_("Generation limit per page.")),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help=_("Model pixel budget per page (overrides the model's).")),
    max_image_pixels: int = typer.Option(50_000_000, "--max-image-pixels", help=_("Pages above this are downscaled; far above it, refused.")),
    workers: Optional[int] = typer.Option(None, "--workers", help=_("CPU engine worker processes (default: one per core); with --ray, model workers (default: one per GPU, or per CPU).")),
    model_option: Optional[List[str]] = typer.Option(None, "--model-option", "-O", help=_("Model-specific setting KEY=VALUE, repeatable (e.g. mode=gundam for deepseek_ocr, num_crops=4 for phi3_vision).")),
    ray: Optional[str] = _ray_option(),
    gpus_per_worker: float = _gpus_per_worker_option(),
) -> None:
    if mode not in ("all", "layout-only"):
        _fail(UsageError(_("--mode must be all or layout-only")))
    try:
        options = parse_model_options(model_option)
        config = _build_config("layout", inputs, out, model, "json,markdown", pages, dpi, force, lang, model_path, device,
                               dtype, attn, batch_size, max_new_tokens, max_pixels, overlay, skip_headers,
                               max_image_pixels, workers, extra={**options, "layout_mode": mode}, model_options=tuple(options),
                               ray=ray, gpus_per_worker=gpus_per_worker)
        from .registry import get_spec
        if "layout" not in get_spec(config.model if model != "auto" else "tesseract").tasks:
            raise UsageError(_("model '{name}' gives no layout boxes; use dots_ocr, deepseek_ocr, deepseek_ocr2 or tesseract").format(name=model))
    except ChatVLMError as exc:
        _fail(exc)
    _run(config)


@app.command(help=_("Run the same pages through several models: speed and accuracy in one table (bench.json, bench.md)."))
def bench(
    inputs: List[str] = typer.Argument(..., help=_("Files, folders, globs (** allowed) or @list.txt files.")),
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
    pages: Optional[str] = typer.Option(None, "--pages", help=_("Pages of every document, e.g. 1-3,7.")),
    dpi: int = typer.Option(200, "--dpi", help=_("Resolution for rendering PDF pages.")),
    lang: Optional[str] = typer.Option(None, "--lang", help=_("Tesseract languages, e.g. eng+rus.")),
    device: Optional[str] = typer.Option(None, "--device", help=_("cuda, cuda:N or cpu (default: best available).")),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=_("bfloat16, float16 or float32.")),
    attn: Optional[str] = typer.Option(None, "--attn", help=_("Attention kernel: flash_attention_2, sdpa or eager.")),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", help=_("Pages per batch, or auto.")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=_("Generation limit per page.")),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help=_("Model pixel budget per page (overrides the model's).")),
    max_image_pixels: int = typer.Option(50_000_000, "--max-image-pixels", help=_("Pages above this are downscaled; far above it, refused.")),
    workers: Optional[int] = typer.Option(None, "--workers", help=_("CPU engine worker processes (default: one per core); with --ray, model workers (default: one per GPU, or per CPU).")),
    model_option: Optional[List[str]] = typer.Option(None, "--model-option", "-O", help=_("Setting KEY=VALUE for every model of the run, repeatable (e.g. decode=hf).")),
    ray: Optional[str] = _ray_option(),
    gpus_per_worker: float = _gpus_per_worker_option(),
) -> None:
    from . import bench as bench_mod
    from .ui import RichReporter, stderr, stdout

    try:
        if max_pages is not None and max_pages < 1:
            raise UsageError(_("--max-pages must be at least 1"))
        if ignore_case not in ("auto", "yes", "no"):
            raise UsageError(_("--ignore-case must be auto, yes or no"))
        base = _build_config("bench", inputs, out, "auto", "text,markdown", pages, dpi, True, lang, None, device, dtype,
                             attn, batch_size, max_new_tokens, max_pixels, False, False, max_image_pixels, workers,
                             extra=parse_model_options(model_option), ray=ray, gpus_per_worker=gpus_per_worker)
        base.max_pages = max_pages
        from .synthetic import parse_token_range
        try:
            tokens_low, tokens_high = parse_token_range(tokens)
        except ValueError:
            raise UsageError(_("--tokens takes N or A-B with 1 <= A <= B, got '{value}'").format(value=tokens)) from None
        config = bench_mod.BenchConfig(
            base=base, model_paths=bench_mod.parse_assignments(model_path, "--model-path"), repeats=repeats,
            layout=layout, synthetic=synthetic, tokens=tokens_low,
            tokens_max=tokens_high, seed=seed, ignore_case=ignore_case, command_line=list(sys.argv),
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
    model_path: Optional[Path] = typer.Option(None, "--model-path", help=_("Local checkpoint folder for --model.")),
    device: Optional[str] = typer.Option(None, "--device", help=_("cuda, cuda:N or cpu (default: best available).")),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=_("bfloat16, float16 or float32.")),
    attn: Optional[str] = typer.Option(None, "--attn", help=_("Attention kernel: flash_attention_2, sdpa or eager.")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=_("Generation limit per page.")),
    dpi: int = typer.Option(200, "--dpi", help=_("Resolution for rendering PDF pages.")),
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
    model: str = typer.Option("auto", "--model", "-m", help=_("Model name (see `chatvlm models`); auto = best available.")),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help=_("Local checkpoint folder for --model.")),
    host: str = typer.Option("127.0.0.1", "--host", help=_("Address to listen on (0.0.0.0 opens it to the network).")),
    port: int = typer.Option(8000, "--port", help=_("Port to listen on.")),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="CHATVLM_API_KEY", show_default=False,
                                          help=_("Require this key (Authorization: Bearer KEY or X-API-Key: KEY) on every endpoint but /health.")),
    device: Optional[str] = typer.Option(None, "--device", help=_("cuda, cuda:N or cpu (default: best available).")),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", help=_("Pages per batch, or auto.")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=_("Generation limit per page.")),
    queue_size: int = typer.Option(64, "--queue-size", help=_("Pages that may wait for the model; above it requests get 503 with Retry-After.")),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help=_("Largest upload accepted, in MB (413 above it).")),
    max_image_pixels: int = typer.Option(50_000_000, "--max-image-pixels", help=_("Largest image accepted, in pixels (413 above it); PDF pages are rendered within it.")),
    max_pages: int = typer.Option(50, "--max-pages", help=_("Most pages one request may ask for (413 above it).")),
    dpi: int = typer.Option(200, "--dpi", help=_("Resolution for rendering PDF pages.")),
    lang: Optional[str] = typer.Option(None, "--lang", help=_("Tesseract languages, e.g. eng+rus.")),
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
        if dpi < 30 or dpi > 1200:
            raise UsageError(_("--dpi must be between 30 and 1200"))
        size = _parse_batch_size(batch_size)
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
    model_path: Optional[Path] = typer.Option(None, "--model-path", help=_("Local checkpoint folder for --model.")),
    host: str = typer.Option("127.0.0.1", "--host", help=_("Address to listen on (0.0.0.0 opens it to the network).")),
    port: int = typer.Option(8501, "--port", help=_("Port to listen on.")),
    device: Optional[str] = typer.Option(None, "--device", help=_("cuda, cuda:N or cpu (default: best available).")),
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
    from rich.markup import escape

    from .ui import stderr
    # Messages are plain text: brackets in them (chatvlm[serve], [1, 2]) are not markup.
    stderr.print(f"[bold red]{_('error')}:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(exc.exit_code if exc.exit_code else EXIT_USAGE)


GLOBAL_FLAGS = ("-q", "--quiet", "-v", "-vv", "-vvv", "--verbose")


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let -q/-v/--ui-lang stand anywhere (`chatvlm ocr x -q`), as users type them.

    Typer only accepts app-level options before the subcommand, so they are moved there.
    """
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in GLOBAL_FLAGS:
            hoisted.append(arg)
        elif arg == "--ui-lang" and i + 1 < len(argv):
            hoisted.extend(argv[i:i + 2])
            i += 1
        elif arg.startswith("--ui-lang="):
            hoisted.append(arg)
        else:
            rest.append(arg)
        i += 1
    return hoisted + rest


def main() -> None:
    app(args=hoist_global_options(sys.argv[1:]), prog_name="chatvlm")


if __name__ == "__main__":
    main()
