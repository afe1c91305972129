#!/usr/bin/env bash
# The GPU check in one command, on a machine with one NVIDIA GPU: the engine's speed
# targets measured in one run (about 7.3 minutes planned on an H100/H200; the runs stop
# within an 8-minute budget). Every VLM through `chatvlm bench --synthetic` (random weights,
# real architecture), qwen_vl_2b also at --tokens 256-1024, and the other VLMs through
# transformers generate for their speed-ups, each run in its own process under its own
# time cap. It makes its own A4 pages (Pillow), so it needs neither poppler, tesseract nor
# network.
#
#   scripts/gpu_check.sh                       # results in $OUT, else ./gpu-check-out
#   scripts/gpu_check.sh --plan-only           # the runs and their planned seconds
#   scripts/gpu_check.sh --out DIR --models qwen_vl_2b,got_ocr_hf
#   scripts/gpu_check.sh --dry-run --out DIR   # the same check on a CPU, reduced models
#
# Writes gpu_check.json and gpu_check.md (the targets with threshold, measured value and
# verdict; per run pages/s, first page, idle fraction, peak memory, batch, slots, decode
# path and fallback reasons) and runs/<run>/ with each run's bench.json and log, and prints
# the table at the end. chatvlm runs from this checkout (PYTHONPATH), not installed. Wheels
# in .whl/ (made by scripts/gpu_wheels.sh, e.g. a newer transformers) are installed into
# /tmp/site first.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
PY=${PYTHON:-python3}

WHEELS=${CHATVLM_WHEELS:-.whl}     # another folder (or none) for a run that must not install these
SITE=""
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  echo "gpu_check: installing the wheels in $WHEELS/ into /tmp/site" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  SITE=/tmp/site:
fi
export PYTHONPATH="${SITE}${REPO}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON="$PY"

exec "$PY" -m chatvlm.gpucheck --out "${OUT:-gpu-check-out}" "$@"
