"""The GPU check: the engine's speed targets measured in one run, every VLM through
`chatvlm bench --synthetic`, one process per run.

    python3 -m chatvlm.gpucheck --out DIR          (scripts/gpu_check.sh wraps this)
    python3 -m chatvlm.gpucheck --plan-only        (the runs and their planned seconds)
    python3 -m chatvlm.gpucheck --dry-run --out D  (the same check on a CPU, reduced models)

It writes its own A4 pages (200 DPI, 1654 x 2339 PNG, Pillow only: no poppler, no network),
then runs the plan (gpucheck_plan): each VLM through the engine, qwen_vl_2b again with
uneven pages (--tokens 256-1024), and the other VLMs through transformers `generate` for
their speed-ups. Each run is its own process under its own time cap, so a crash or a hang
costs one row and never hides the others; the caps come out of one budget. Progress goes
to stderr as it runs. DIR gets gpu_check.json (hardware, versions, settings, the plan, one
row per run, one verdict per target) and gpu_check.md (the targets' table, then the runs'),
rewritten after every run, and runs/<run>/ with each run's bench.json, per-page outputs and
log. At the end the table is printed on stdout.

`--dry-run` is the same check on a CPU: reduced configs of every model
(chatvlm.testing.tiny_synthetic_configs), two small pages, a few tokens per page. Its speed verdicts are
unmeasured by design (not the targets' conditions); it shows that every run starts, finishes
and leaves every figure the verdicts read.

This module imports no torch: the runs do, in their own processes. gpucheck_report turns a run's bench.json into its row and the rows into
gpu_check.md; gpucheck_targets judges the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .gpucheck_plan import (A4_200DPI, HEAVY_MODELS, TARGET_RANGE, TARGET_TOKENS, VLMS, Run, Settings,  # noqa: F401
                            left_out, plan_runs, planned_s, run_cap)
from .gpucheck_report import (GPU_CHECK_JSON, GPU_CHECK_MD, progress_line, render_markdown, row_for, summarise,
                              write_outputs)
from .gpucheck_targets import judge
from .i18n import _

DRY_RUN_PAGE_SIZE = (165, 233)


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


def bench_command(settings: Settings, run: Run, pages_dir: Path, out: Path) -> list[str]:
    cmd = [settings.python, "-m", "chatvlm", "bench", str(pages_dir), "--synthetic", "--models", run.model,
           "--tokens", run.tokens, "--out", str(out), "--batch-size", run.batch, "--max-pages", str(run.pages)]
    if run.seed is not None:
        cmd += ["--seed", str(run.seed)]
    if run.decode != "auto":
        cmd += ["-O", f"decode={run.decode}"]
    if not run.warmup:
        cmd += ["--no-warmup"]
    for key, value in (settings.model_options.get(run.model) or {}).items():
        cmd += ["-O", f"{key}={value}"]
    if settings.device:
        cmd += ["--device", settings.device]
    if settings.max_pixels:
        cmd += ["--max-pixels", str(settings.max_pixels)]
    if run.model in settings.synthetic_configs:
        cmd += ["--synthetic-config", f"{run.model}={settings.synthetic_configs[run.model]}"]
    return cmd


def plan_lines(settings: Settings, runs: Sequence[Run]) -> list[str]:
    """The plan as text: every run with its pages, tokens and planned seconds, and the total."""
    total = planned_s(runs)
    lines = [_("plan: {n} runs, {planned} s planned of a {budget} s budget (planning figures for one H100/H200, "
               "not measurements)").format(n=len(runs), planned=round(total), budget=round(settings.budget_s))]
    for number, run in enumerate(runs, start=1):
        lines.append("  {i:>2}. {id:<24} {role:<8} {pages:>3} {pages_word}, {tokens} {tokens_word}, ~{s} s".format(
            i=number, id=run.id, role=run.role, pages=run.pages, pages_word=_("pages"), tokens=run.tokens,
            tokens_word=_("tokens/page"), s=round(run.estimate_s)))
    skipped = left_out(settings, runs)
    if skipped:
        lines.append(_("left out (they only inform; over the budget, or --optional none): {runs}").format(
            runs=", ".join(skipped)))
    if total > settings.budget_s:
        lines.append(_("the plan is over its budget: the last runs will get less time than planned"))
    return lines


def settings_facts(settings: Settings) -> dict[str, Any]:
    return {"pages": settings.pages, "heavy_pages": settings.heavy_pages, "generate_pages": settings.generate_pages,
            "heavy_generate_pages": settings.heavy_generate_pages, "batch1_pages": settings.batch1_pages,
            "tokens": settings.tokens, "range_tokens": settings.range_tokens, "seed": settings.seed,
            "device": settings.device or "default", "page_size": list(settings.page_size),
            "budget_s": settings.budget_s, "slack": settings.slack, "floor_s": settings.floor_s,
            "max_run_s": settings.max_run_s, "reserve_s": settings.reserve_s, "max_pixels": settings.max_pixels,
            "models": list(settings.models), "heavy_models": list(HEAVY_MODELS), "baselines": settings.baselines,
            "optional": settings.optional, "synthetic_configs": dict(settings.synthetic_configs),
            "model_options": {k: dict(v) for k, v in settings.model_options.items()}, "dry_run": settings.dry_run}


def run_check(settings: Settings, progress: Progress = _stderr,
              command_for: Callable[[Settings, Run, Path, Path], list[str]] = bench_command) -> dict[str, Any]:
    """Make the pages, run every run under its cap, write gpu_check.json / .md after each."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    if settings.dry_run:
        write_tiny_configs(settings)
    runs = plan_runs(settings)
    report: dict[str, Any] = {
        "title": _("chatvlm GPU check"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finished": None,
        "settings": settings_facts(settings),
        "plan": {"runs": [r.to_dict() for r in runs], "planned_s": round(planned_s(runs), 1),
                 "left_out": left_out(settings, runs)},
        "host": host_facts(), "hardware": None, "runs": [], "targets": [], "summary": {},
    }
    progress(_("GPU check: {gpu}; writing to {out}").format(gpu=report["host"]["gpu"] or _("no GPU found"), out=out))
    for line in plan_lines(settings, runs):
        progress(line)
    t0 = time.perf_counter()
    pages_dir = out / "pages"
    if pages_dir.exists():
        shutil.rmtree(pages_dir)
    count = max([r.pages for r in runs] or [1])
    make_pages(pages_dir, count, settings.page_size)
    progress(_("made {n} pages of {w}x{h} px in {s:.1f} s").format(
        n=count, w=settings.page_size[0], h=settings.page_size[1], s=time.perf_counter() - t0))
    deadline = time.perf_counter() + settings.budget_s
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    _update(out, report)
    for number, run in enumerate(runs, start=1):
        run_out = out / "runs" / run.id
        if run_out.exists():
            shutil.rmtree(run_out)
        run_out.mkdir(parents=True)
        log = run_out / "log.txt"
        cap = run_cap(deadline - time.perf_counter(), len(runs) - number, run.estimate_s, settings)
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
        _update(out, report)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _update(out, report)
    progress(_("written: {json}, {md}").format(json=out / GPU_CHECK_JSON, md=out / GPU_CHECK_MD))
    return report


def _update(out: Path, report: dict[str, Any]) -> None:
    """Judge the targets on what has run so far and rewrite both files (a check stopped
    half-way still leaves its table)."""
    report["targets"] = judge(report)
    report["summary"] = summarise(report["runs"], report["targets"])
    write_outputs(out, report)


def write_tiny_configs(settings: Settings) -> None:
    """The dry run's reduced configs, for every model not given one, and the options they
    need on a CPU. The test builders write them (`python -m chatvlm.testing`), in a process of
    their own, as the runs themselves are: the package never imports a test builder."""
    cmd = [settings.python, "-m", "chatvlm.testing", "synthetic-configs", str(settings.out / "tiny-configs"),
           *settings.models]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(_("the dry run's reduced configs could not be written: {tail}").format(
            tail=done.stderr.strip()[-600:]))
    for model, written in json.loads(done.stdout.strip().splitlines()[-1]).items():
        settings.synthetic_configs.setdefault(model, written["config"])
        for key, value in written["options"].items():
            settings.model_options.setdefault(model, {}).setdefault(key, value)


# --------------------------------------------------------------------------- command line

# Defaults of a check on a GPU, and of the dry run on a CPU (an option given wins over both).
GPU_DEFAULTS: dict[str, Any] = dict(
    pages=64, heavy_pages=24, generate_pages=16, heavy_generate_pages=8, tokens=TARGET_TOKENS,
    range_tokens=TARGET_RANGE, page_size=f"{A4_200DPI[0]}x{A4_200DPI[1]}", max_pixels=None, device=None,
    budget_s=480.0, slack=2.0, floor_s=30.0, max_run_s=150.0, reserve_s=20.0)
DRY_RUN_DEFAULTS: dict[str, Any] = dict(
    pages=2, heavy_pages=2, generate_pages=1, heavy_generate_pages=1, tokens="4", range_tokens="2-6",
    page_size=f"{DRY_RUN_PAGE_SIZE[0]}x{DRY_RUN_PAGE_SIZE[1]}", max_pixels=40_000, device="cpu",
    budget_s=3600.0, slack=1.0, floor_s=300.0, max_run_s=300.0, reserve_s=0.0)


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[Settings, bool]:
    """(settings, plan only)."""
    parser = argparse.ArgumentParser(prog="gpu_check", description=_(
        "The engine's speed targets in one run: every VLM through `chatvlm bench --synthetic`, one process "
        "and one time cap per run; writes gpu_check.json and gpu_check.md."))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"),
                        help=_("output folder (default: $OUT if set, else gpu-check-out)"))
    parser.add_argument("--dry-run", action="store_true",
                        help=_("the same check on a CPU: reduced models, small pages, a few tokens per page"))
    parser.add_argument("--plan-only", action="store_true", help=_("print the plan and its budget, run nothing"))
    parser.add_argument("--pages", type=int, help=_("pages of each engine run (default 64)"))
    parser.add_argument("--heavy-pages", type=int,
                        help=_("pages of the engine runs of the models whose pages cost most "
                               "(dots_ocr, phi3_vision, deepseek_ocr, deepseek_ocr2; default 24)"))
    parser.add_argument("--generate-pages", type=int,
                        help=_("pages of each transformers generate baseline (default 16)"))
    parser.add_argument("--heavy-generate-pages", type=int,
                        help=_("pages of the generate baselines of the models whose pages cost most (default 8)"))
    parser.add_argument("--batch1-pages", type=int, default=0,
                        help=_("pages of a qwen_vl_2b batch-1 run (default 0: none)"))
    parser.add_argument("--tokens", help=_("tokens generated per page: N, or A-B for a count per page drawn in A..B "
                                           "(default 512)"))
    parser.add_argument("--range-tokens", help=_("tokens per page of the qwen_vl_2b-range run (default 256-1024)"))
    parser.add_argument("--seed", type=int, default=1, help=_("seed of the range run's token counts"))
    parser.add_argument("--device", help=_("cuda, cuda:N or cpu (default: the best available)"))
    parser.add_argument("--models", default=",".join(VLMS), help=_("comma-separated models (default: every VLM)"))
    parser.add_argument("--no-baselines", action="store_true",
                        help=_("leave out the transformers generate baselines (the speed-up targets go unmeasured)"))
    parser.add_argument("--optional", choices=("auto", "all", "none"), default="auto",
                        help=_("runs that only inform (qwen_vl_2b through generate, batch 1): when they fit the "
                               "budget, always, or never"))
    parser.add_argument("--budget-s", type=float, help=_("seconds for all runs together (default 480)"))
    parser.add_argument("--slack", type=float,
                        help=_("a run's time cap: this many times its planned seconds (default 2)"))
    parser.add_argument("--floor-s", type=float, help=_("the smallest time cap of a run (default 30)"))
    parser.add_argument("--max-run-s", type=float, help=_("the largest time cap of a run (default 150)"))
    parser.add_argument("--reserve-s", type=float, help=_("seconds kept back for each run still to come (default 20)"))
    parser.add_argument("--page-size", help=_("page size WxH in pixels (default 1654x2339)"))
    parser.add_argument("--max-pixels", type=int, help=_("model pixel budget per page (default: each model's)"))
    parser.add_argument("--synthetic-config", action="append", default=[],
                        help=_("NAME=config.json: build NAME from this config instead of its full one (repeatable)"))
    args = parser.parse_args(argv)
    values = {**(DRY_RUN_DEFAULTS if args.dry_run else GPU_DEFAULTS),
              **{k: v for k, v in vars(args).items() if k in GPU_DEFAULTS and v is not None}}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in VLMS]
    if unknown or not models:
        parser.error(_("--models: unknown {names}; choose from {known}").format(names=", ".join(unknown) or "''",
                                                                                known=", ".join(VLMS)))
    try:
        width, height = (int(v) for v in str(values["page_size"]).lower().split("x"))
    except ValueError:
        parser.error(_("--page-size takes WxH, e.g. 1654x2339"))
    configs = {}
    for item in args.synthetic_config:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(_("--synthetic-config takes NAME=PATH, got '{item}'").format(item=item))
        configs[name.strip()] = str(Path(path.strip()).resolve())
    from .synthetic import parse_token_range
    labels = []
    for option in ("tokens", "range_tokens"):
        try:
            low, high = parse_token_range(values[option])
        except ValueError:
            parser.error(_("--tokens and --range-tokens take N or A-B with 1 <= A <= B"))
        labels.append(str(low) if low == high else f"{low}-{high}")
    counts = (values["pages"], values["heavy_pages"], values["generate_pages"], values["heavy_generate_pages"])
    if min(counts) < 1 or args.batch1_pages < 0:
        parser.error(_("page counts must be at least 1"))
    settings = Settings(
        out=args.out, pages=values["pages"], heavy_pages=values["heavy_pages"],
        generate_pages=values["generate_pages"], heavy_generate_pages=values["heavy_generate_pages"],
        batch1_pages=args.batch1_pages, tokens=labels[0], range_tokens=labels[1], seed=args.seed,
        device=values["device"], models=models, baselines=not args.no_baselines, optional=args.optional,
        budget_s=values["budget_s"], slack=values["slack"], floor_s=values["floor_s"],
        max_run_s=values["max_run_s"], reserve_s=values["reserve_s"], page_size=(width, height),
        max_pixels=values["max_pixels"], synthetic_configs=configs, dry_run=args.dry_run)
    return settings, args.plan_only


def main(argv: Optional[Sequence[str]] = None) -> int:
    settings, plan_only = parse_args(argv)
    if plan_only:
        print("\n".join(plan_lines(settings, plan_runs(settings))))
        return 0
    report = run_check(settings)
    print(render_markdown(report), end="", flush=True)
    return 0 if not report["summary"]["runs_not_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
