"""The GPU check: every VLM through `chatvlm bench --synthetic`, one process per run.

    python3 -m chatvlm.gpucheck --out DIR          (scripts/gpu_check.sh wraps this)

It writes its own A4 pages (200 DPI, 1654 x 2339 PNG, Pillow only: no poppler, no network),
then runs `chatvlm bench --synthetic` once per model (batch size auto) plus two baselines
of qwen_vl_2b: transformers `generate` (`-O decode=hf`) and batch 1. Each run is its own
process under its own time cap, so a crash or a hang costs one row and never hides the
others; the caps come out of one overall budget, keeping a minimum for every run still to
come. Progress goes to stderr as it runs. DIR gets gpu_check.json (hardware, versions,
settings, one row per run) and gpu_check.md (the same as a table), rewritten after every
run, and runs/<run>/ with each run's bench.json, per-page outputs and log.

This module imports no torch: the runs do, in their own processes. gpucheck_report turns
a run's bench.json into its row and the rows into gpu_check.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .gpucheck_report import (BASELINE_MODEL, GPU_CHECK_JSON, GPU_CHECK_MD, progress_line, row_for, summarise,
                              write_outputs)
from .i18n import _

A4_200DPI = (1654, 2339)
VLMS = ("qwen_vl_2b", "qwen3_vl_2b", "got_ocr_hf", "dots_ocr", "phi3_vision", "deepseek_ocr2", "deepseek_ocr")
# Pages that cost several times more (Phi-3.5-vision's 16 crops, DeepSeek-OCR's MoE
# language model): fewer of them keep the check in its budget.
HEAVY_MODELS = ("phi3_vision", "deepseek_ocr2", "deepseek_ocr")


@dataclass
class Run:
    """One `chatvlm bench --synthetic` process: a model and how it is asked to run."""

    id: str                                   # folder name under runs/
    model: str
    decode: str = "auto"                      # -O decode=...
    batch: str = "auto"                       # -b
    max_pages: Optional[int] = None           # fewer pages than the rest (batch 1 is slow and flat)
    note: str = ""


@dataclass
class Settings:
    out: Path
    pages: int = 64
    heavy_pages: int = 32                  # for HEAVY_MODELS
    batch1_pages: int = 4
    tokens: Any = 512                         # N, or "A-B": each page its own count (bench --tokens)
    device: Optional[str] = None
    models: Sequence[str] = VLMS
    baselines: bool = True
    budget_s: float = 420.0                   # all runs together; page making and start-up come on top
    max_run_s: float = 150.0
    min_run_s: float = 30.0
    page_size: tuple[int, int] = A4_200DPI
    max_pixels: Optional[int] = None
    synthetic_configs: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable


# --------------------------------------------------------------------------- pages

def make_pages(folder: Path, count: int, size: tuple[int, int] = A4_200DPI, distinct: int = 8) -> list[Path]:
    """`count` PNG pages of `size` pixels with lines of text; `distinct` of them are drawn,
    the rest are copies (the weights are random: content changes nothing but the drawing time)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    scale = max(1, width // 400)
    drawn: list[Path] = []
    paths: list[Path] = []
    for index in range(count):
        path = folder / f"page-{index + 1:03d}.png"
        if index < distinct:
            image = Image.new("RGB", (width, height), "white")
            draw = ImageDraw.Draw(image)
            margin, line = width // 12, 12 * scale
            draw.text((margin, margin // 2), f"Synthetic page {index + 1}", fill="black")
            y, n = margin, 0
            while y < height - margin:
                words = " ".join(f"word{(index * 31 + n * 7 + k) % 997}" for k in range(8))
                draw.text((margin, y), words, fill="black")
                y += line
                n += 1
            image.save(path, compress_level=1)
            drawn.append(path)
        else:
            shutil.copyfile(drawn[index % len(drawn)], path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- the plan

def plan_runs(settings: Settings) -> list[Run]:
    """One run per model, then the two baselines (when the baseline model is in the check)."""
    runs = [Run(id=name, model=name,
                max_pages=min(settings.pages, settings.heavy_pages) if name in HEAVY_MODELS else None)
            for name in settings.models]
    if settings.baselines and BASELINE_MODEL in settings.models:
        runs.insert(1, Run(id=f"{BASELINE_MODEL}-generate", model=BASELINE_MODEL, decode="hf",
                           note=_("baseline: transformers generate")))
        runs.insert(2, Run(id=f"{BASELINE_MODEL}-batch1", model=BASELINE_MODEL, batch="1",
                           max_pages=min(settings.pages, settings.batch1_pages), note=_("baseline: batch 1")))
    return runs


def bench_command(settings: Settings, run: Run, pages_dir: Path, out: Path) -> list[str]:
    cmd = [settings.python, "-m", "chatvlm", "bench", str(pages_dir), "--synthetic", "--models", run.model,
           "--tokens", str(settings.tokens), "--out", str(out), "--batch-size", run.batch,
           "--max-pages", str(run.max_pages or settings.pages)]
    if run.decode != "auto":
        cmd += ["-O", f"decode={run.decode}"]
    if settings.device:
        cmd += ["--device", settings.device]
    if settings.max_pixels:
        cmd += ["--max-pixels", str(settings.max_pixels)]
    if run.model in settings.synthetic_configs:
        cmd += ["--synthetic-config", f"{run.model}={settings.synthetic_configs[run.model]}"]
    return cmd


def run_cap(remaining_s: float, runs_left: int, max_run_s: float, min_run_s: float) -> float:
    """This run's time cap: at most max_run_s, and leaving min_run_s for each run after it."""
    return max(0.0, min(max_run_s, remaining_s - min_run_s * max(0, runs_left - 1)))


# --------------------------------------------------------------------------- one run

@dataclass
class ProcessResult:
    returncode: Optional[int]                 # None: killed at its time cap
    wall_s: float
    timed_out: bool


def run_process(cmd: Sequence[str], log: Path, cap_s: float, env: Optional[dict] = None) -> ProcessResult:
    """Run `cmd` in its own process group, output to `log`; past `cap_s` the whole group is
    stopped (TERM, then KILL), so a hung run and its children are gone before the next."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "wb") as sink:
        proc = subprocess.Popen(list(cmd), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)
        try:
            code = proc.wait(timeout=max(0.1, cap_s))
            return ProcessResult(code, time.perf_counter() - start, False)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            return ProcessResult(None, time.perf_counter() - start, True)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- the check

def host_facts() -> dict[str, Any]:
    """What can be known without importing torch: the GPU from nvidia-smi, package versions."""
    from importlib import metadata

    def version(name: str) -> Optional[str]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    facts: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                             "os": platform.platform(), "cpu_cores": os.cpu_count(), "gpu": None,
                             "driver": None, "gpu_memory": None,
                             "versions": {p: version(p) for p in ("torch", "transformers", "tokenizers", "pillow")},
                             "commit": _git_commit()}
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            line = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            if line:
                name, driver, memory = (part.strip() for part in (line[0].split(",") + ["", ""])[:3])
                facts.update(gpu=name, driver=driver, gpu_memory=memory)
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


def _git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or not shutil.which("git"):
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


Progress = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_check(settings: Settings, progress: Progress = _stderr,
              command_for: Callable[[Settings, Run, Path, Path], list[str]] = bench_command) -> dict[str, Any]:
    """Make the pages, run every run under its cap, write gpu_check.json / .md after each."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {
        "title": _("chatvlm GPU check"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": None,
        "settings": {"pages": settings.pages, "heavy_pages": settings.heavy_pages,
                     "batch1_pages": settings.batch1_pages, "tokens": settings.tokens,
                     "device": settings.device or "default", "page_size": list(settings.page_size),
                     "budget_s": settings.budget_s, "max_run_s": settings.max_run_s, "min_run_s": settings.min_run_s,
                     "max_pixels": settings.max_pixels, "models": list(settings.models),
                     "heavy_models": list(HEAVY_MODELS)},
        "host": host_facts(), "hardware": None, "runs": [], "summary": {},
    }
    progress(_("GPU check: {gpu}; writing to {out}").format(gpu=report["host"]["gpu"] or _("no GPU found"), out=out))
    t0 = time.perf_counter()
    pages_dir = out / "pages"
    if pages_dir.exists():
        shutil.rmtree(pages_dir)
    make_pages(pages_dir, settings.pages, settings.page_size)
    progress(_("made {n} pages of {w}x{h} px in {s:.1f} s").format(n=settings.pages, w=settings.page_size[0],
                                                                     h=settings.page_size[1], s=time.perf_counter() - t0))
    runs = plan_runs(settings)
    deadline = time.perf_counter() + settings.budget_s
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for number, run in enumerate(runs, start=1):
        run_out = out / "runs" / run.id
        if run_out.exists():
            shutil.rmtree(run_out)
        run_out.mkdir(parents=True)
        log = run_out / "log.txt"
        cap = run_cap(deadline - time.perf_counter(), len(runs) - number + 1, settings.max_run_s, settings.min_run_s)
        if cap < 1.0:
            row = row_for(run, settings, run_out, ProcessResult(None, 0.0, False), cap, log)
            row.update(status="skipped", error=_("the check's time budget was spent before this run"))
        else:
            progress(_("[{i}/{n}] {run}: running (time cap {cap} s)").format(i=number, n=len(runs), run=run.id,
                                                                            cap=round(cap)))
            result = run_process(command_for(settings, run, pages_dir, run_out), log, cap, env)
            row = row_for(run, settings, run_out, result, cap, log)
        report["runs"].append(row)
        report["hardware"] = report["hardware"] or row.pop("hardware", None)
        row.pop("hardware", None)
        progress("[{i}/{n}] {run}: {line}".format(i=number, n=len(runs), run=run.id, line=progress_line(row)))
        report["summary"] = summarise(report["runs"])
        write_outputs(out, report)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["summary"] = summarise(report["runs"])
    write_outputs(out, report)
    progress(_("written: {json}, {md}").format(json=out / GPU_CHECK_JSON, md=out / GPU_CHECK_MD))
    return report


# --------------------------------------------------------------------------- command line

def parse_args(argv: Optional[Sequence[str]] = None) -> Settings:
    parser = argparse.ArgumentParser(prog="gpu_check", description=_(
        "Every VLM through `chatvlm bench --synthetic`, one process and one time cap per run; "
        "writes gpu_check.json and gpu_check.md."))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"),
                        help=_("output folder (default: $OUT if set, else gpu-check-out)"))
    parser.add_argument("--pages", type=int, default=64, help=_("pages per run"))
    parser.add_argument("--heavy-pages", type=int, default=32,
                        help=_("pages per run of the models whose pages cost most "
                               "(phi3_vision, deepseek_ocr, deepseek_ocr2)"))
    parser.add_argument("--batch1-pages", type=int, default=4, help=_("pages of the batch-1 baseline"))
    parser.add_argument("--tokens", default="512",
                        help=_("tokens generated per page: N, or A-B for a count per page drawn in A..B"))
    parser.add_argument("--device", default=None, help=_("cuda, cuda:N or cpu (default: the best available)"))
    parser.add_argument("--models", default=",".join(VLMS), help=_("comma-separated models (default: every VLM)"))
    parser.add_argument("--no-baselines", action="store_true", help=_("leave out the two qwen_vl_2b baselines"))
    parser.add_argument("--budget-s", type=float, default=420.0, help=_("seconds for all runs together"))
    parser.add_argument("--max-run-s", type=float, default=150.0, help=_("time cap of one run"))
    parser.add_argument("--min-run-s", type=float, default=30.0, help=_("seconds kept for each run still to come"))
    parser.add_argument("--page-size", default=f"{A4_200DPI[0]}x{A4_200DPI[1]}", help=_("page size WxH in pixels"))
    parser.add_argument("--max-pixels", type=int, default=None, help=_("model pixel budget per page (default: each model's)"))
    parser.add_argument("--synthetic-config", action="append", default=[],
                        help=_("NAME=config.json: build NAME from this config instead of its full one (repeatable)"))
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in VLMS]
    if unknown or not models:
        parser.error(_("--models: unknown {names}; choose from {known}").format(names=", ".join(unknown) or "''",
                                                                                known=", ".join(VLMS)))
    try:
        width, height = (int(v) for v in args.page_size.lower().split("x"))
    except ValueError:
        parser.error(_("--page-size takes WxH, e.g. 1654x2339"))
    configs = {}
    for item in args.synthetic_config:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(_("--synthetic-config takes NAME=PATH, got '{item}'").format(item=item))
        configs[name.strip()] = str(Path(path.strip()).resolve())
    from .synthetic import parse_token_range
    try:
        low, high = parse_token_range(args.tokens)
    except ValueError:
        low = high = 0
    if min(args.pages, args.heavy_pages, args.batch1_pages, low) < 1:
        parser.error(_("--pages, --heavy-pages, --batch1-pages and --tokens must be at least 1"))
    tokens = low if low == high else f"{low}-{high}"
    return Settings(out=args.out, pages=args.pages, heavy_pages=args.heavy_pages,
                    batch1_pages=args.batch1_pages, tokens=tokens,
                    device=args.device, models=models, baselines=not args.no_baselines, budget_s=args.budget_s,
                    max_run_s=args.max_run_s, min_run_s=args.min_run_s, page_size=(width, height),
                    max_pixels=args.max_pixels, synthetic_configs=configs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    settings = parse_args(argv)
    report = run_check(settings)
    return 0 if not report["summary"]["runs_not_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
