#!/usr/bin/env bash
# Download transformers (default 5.25), pylatexenc and what they need, as CPython 3.12 manylinux x86-64
# wheels, into .whl/ for a GPU machine without network: scripts/gpu_check.sh installs them
# there. numpy is left out (the machine has its own; two versions would clash). .whl/ is
# ignored by git.
#
#   scripts/gpu_wheels.sh                  # transformers==5.25.*
#   scripts/gpu_wheels.sh 5.26.0           # another version
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
PY=${PYTHON:-python3}
VERSION=${1:-5.25.*}
DEST=.whl

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 any; do
  PLATFORMS+=(--platform "$p")
done
# With --only-binary the resolver follows the dependencies for the target (cp312, Linux).
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d "$DEST" "transformers==$VERSION" "pylatexenc>=2.10,<3"
rm -f "$DEST"/numpy-*.whl
ls -1 "$DEST"
du -sh "$DEST" | awk '{print "gpu_wheels: " $1 " in .whl/"}'
