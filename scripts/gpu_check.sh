#!/usr/bin/env bash
# The GPU check in one command, on a machine with one NVIDIA GPU (about 7 minutes on an
# H100/H200): every VLM through `chatvlm bench --synthetic` (random weights, real
# architecture, batch size auto), each in its own process under its own time cap, plus
# two qwen_vl_2b baselines (transformers generate, and batch 1). It makes its own A4
# pages (Pillow), so it needs neither poppler, tesseract nor network.
#
#   scripts/gpu_check.sh                       # results in $OUT, else ./gpu-check-out
#   scripts/gpu_check.sh --out DIR --models qwen_vl_2b,got_ocr_hf
#   scripts/gpu_check.sh --device cpu --tokens 4 --pages 2 ...   (a smoke run without a GPU)
#
# Writes gpu_check.json and gpu_check.md (hardware, versions, pages/s, tokens/s, time to
# first page, peak memory, decode path, failures) and runs/<run>/ with each run's log.
# chatvlm runs from this checkout (PYTHONPATH), not installed. Wheels in .whl/ (made by
# scripts/gpu_wheels.sh, e.g. a newer transformers) are installed into /tmp/site first.
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
