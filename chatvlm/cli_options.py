"""Options the `chatvlm` commands share, declared once, and the checks of their values.

Each alias below is a type a command parameter takes (`dpi: Dpi = 200`), so an option
reads and behaves the same on every command that has it. Help texts are English here;
the group retranslates them per run (cli.LocalizedGroup).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .config import OUTPUT_FORMATS
from .errors import UsageError
from .i18n import _

# --------------------------------------------------------------------------- shared options

Inputs = Annotated[List[str], typer.Argument(help=_("Files, folders, globs (** allowed) or @list.txt files."))]
OutFolder = Annotated[Path, typer.Option("--out", "-o", help=_("Output folder."))]
ModelName = Annotated[str, typer.Option("--model", "-m", help=_("Model name (see `chatvlm models`); auto = best available."))]
ModelPath = Annotated[Optional[Path], typer.Option("--model-path", help=_("Local checkpoint folder for --model."))]
Formats = Annotated[str, typer.Option("--format", "-f", help=_("Comma-separated: text, markdown, json."))]
PageRanges = Annotated[Optional[str], typer.Option("--pages", help=_("Pages of every document, e.g. 1-3,7."))]
Dpi = Annotated[int, typer.Option("--dpi", help=_("Resolution for rendering PDF pages."))]
Force = Annotated[bool, typer.Option("--force", help=_("Redo pages the manifest says are done."))]
OcrLanguages = Annotated[Optional[str], typer.Option("--lang", help=_("Tesseract languages, e.g. eng+rus."))]
Device = Annotated[Optional[str], typer.Option("--device", help=_("cuda, cuda:N or cpu (default: best available)."))]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help=_("bfloat16, float16 or float32."))]
Attn = Annotated[Optional[str], typer.Option("--attn", help=_("Attention kernel: flash_attention_2, sdpa or eager."))]
BatchSize = Annotated[Optional[str], typer.Option("--batch-size", "-b", help=_("Pages per batch, or auto."))]
MaxNewTokens = Annotated[Optional[int], typer.Option("--max-new-tokens", help=_("Generation limit per page."))]
MaxPixels = Annotated[Optional[int], typer.Option(
    "--max-pixels", help=_("Model pixel budget per page (overrides the model's)."))]
Overlay = Annotated[bool, typer.Option(
    "--overlay", help=_("Also draw layout boxes on each page (page-NNNN.layout.png)."))]
SkipHeaders = Annotated[bool, typer.Option("--skip-headers", help=_("Leave page headers and footers out of markdown."))]
MaxImagePixels = Annotated[int, typer.Option(
    "--max-image-pixels", help=_("Pages above this are downscaled; far above it, refused."))]
Workers = Annotated[Optional[int], typer.Option("--workers", help=_(
    "CPU engine worker processes (default: one per core); with --ray, model workers (default: one per GPU, or per CPU)."))]
ModelOptions = Annotated[Optional[List[str]], typer.Option("--model-option", "-O", help=_(
    "Model-specific setting KEY=VALUE, repeatable (e.g. mode=gundam for deepseek_ocr, num_crops=4 for phi3_vision)."))]
# `--ray` alone starts a local cluster for the run; `--ray ADDRESS` joins one (see normalize_ray_flag).
Ray = Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help=_(
    "Run on a Ray cluster: alone, a local cluster for this run; or auto, ray://HOST:10001, HOST:PORT."))]
GpusPerWorker = Annotated[float, typer.Option(
    "--gpus-per-worker", help=_("With --ray: GPUs per model worker (0.5 = two workers share a GPU)."))]
Host = Annotated[str, typer.Option("--host", help=_("Address to listen on (0.0.0.0 opens it to the network)."))]
Port = Annotated[int, typer.Option("--port", help=_("Port to listen on."))]

DEFAULT_DPI = 200
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

# --------------------------------------------------------------------------- value checks

DTYPE_NAMES = ("bfloat16", "bf16", "float16", "fp16", "half", "float32", "fp32", "float")
ATTENTION_KERNELS = ("flash_attention_2", "sdpa", "eager")
# Below this, pages would be shrunk to thumbnails (and at 0 every file is refused).
MIN_IMAGE_PIXELS = 1_000_000


def parse_formats(value: str) -> tuple[str, ...]:
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


def parse_batch_size(value: Optional[str]) -> Optional[int]:
    if value is None or value == "auto":
        return None
    try:
        size = int(value)
    except ValueError:
        raise UsageError(_("--batch-size takes a number or 'auto'")) from None
    if size < 1:
        raise UsageError(_("--batch-size must be at least 1"))
    return size


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


def check_dpi(dpi: int) -> None:
    if dpi < 30 or dpi > 1200:
        raise UsageError(_("--dpi must be between 30 and 1200"))


# --------------------------------------------------------------------------- the raw command line

RAY_LOCAL = "local"


def _looks_like_ray_address(value: str) -> bool:
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
