#!/usr/bin/env bash
# Install everything chatvlm needs on a fresh Debian/Ubuntu machine: system packages
# (poppler for PDFs, Tesseract 5 with English, Russian and orientation data, a font),
# PyTorch, and chatvlm itself (editable). Safe to run again; `--test` adds pytest,
# the serve extra and headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

need_apt=0
for pkg in poppler-utils tesseract-ocr tesseract-ocr-eng tesseract-ocr-rus tesseract-ocr-osd fonts-dejavu-core; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    poppler-utils tesseract-ocr tesseract-ocr-eng tesseract-ocr-rus tesseract-ocr-osd fonts-dejavu-core >/dev/null
fi
# The tests photograph the `chatvlm ui` page in headless Chromium; users do not need it.
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

PY=${PYTHON:-python3}
# torch first, pinned: this version (CPU or CUDA build) is what the project is tested with.
$PY -m pip install -q torch==2.14.1 torchvision==0.29.1
if [ "${1:-}" = "--test" ]; then
  $PY -m pip install -q -e ".[test,serve,ray]"
else
  $PY -m pip install -q -e .
fi
echo "chatvlm is installed: $($PY -m chatvlm --version)"
