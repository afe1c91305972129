#!/usr/bin/env bash
# Install everything chatvlm needs on a fresh Debian/Ubuntu machine: system packages
# (poppler for PDFs, Tesseract 5 with English, Russian and orientation data, a font,
# python3-venv), then a virtual environment (.venv) holding PyTorch and chatvlm itself
# (editable). Debian 12 and Ubuntu 24.04 refuse `pip install` into the system Python
# ("externally managed environment"), so nothing Python is installed outside .venv.
# Safe to run again; `--test` also installs what the tests need (pytest, the serve and ray
# extras, headless Chromium).
#
#   bash scripts/setup.sh [--test]      then: .venv/bin/chatvlm ..., or: source .venv/bin/activate
#
# PYTHON picks the interpreter the environment is made from (default python3),
# CHATVLM_VENV the environment's folder (default .venv in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."

# pyproject extras installed with --test (comma-separated)
TEST_EXTRAS="test,serve,ray"

PY=${PYTHON:-python3}
VENV=${CHATVLM_VENV:-.venv}

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

apt_packages="poppler-utils tesseract-ocr tesseract-ocr-eng tesseract-ocr-rus tesseract-ocr-osd fonts-dejavu-core"
# Debian's Python ships venv without ensurepip until python3-venv is installed.
if ! $PY -c "import ensurepip, venv" >/dev/null 2>&1; then apt_packages="$apt_packages python3-venv"; fi
need_apt=0
for pkg in $apt_packages; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $apt_packages >/dev/null
fi
# The tests photograph the `chatvlm ui` page in headless Chromium; users do not need it.
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  $PY -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# torch first, pinned: this version (CPU or CUDA build) is what the project is tested with.
"$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1
if [ "${1:-}" = "--test" ]; then
  "$VPY" -m pip install -q -e ".[$TEST_EXTRAS]"
else
  "$VPY" -m pip install -q -e .
fi
echo "chatvlm is installed in $VENV: $("$VENV/bin/chatvlm" --version)"
echo "run it as $VENV/bin/chatvlm, or first: source $VENV/bin/activate"
