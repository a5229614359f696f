#!/usr/bin/env bash
# Build the onedl-mmcv wheel (with its ops) once into a cache outside the repository, keyed on the torch
# version it is compiled against. mmsegmentation imports mmcv.ops at module level, so mmcv-lite is not enough,
# and onedl-mmcv is published as source only.
#   PY=.venv/bin/python WHEEL_CACHE=~/.cache/mim-wheels/torch-2.14.1 FORCE_CUDA=0 MAX_JOBS=2 tools/build_mmcv.sh
# ~30 CPU-minutes for the CPU ops. FORCE_CUDA=1 (with nvcc and TORCH_CUDA_ARCH_LIST) builds the CUDA ops.
set -euo pipefail
PY=${PY:-.venv/bin/python}
VERSION=2.3.6
TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
CACHE=${WHEEL_CACHE:-$HOME/.cache/mim-wheels/torch-$TORCH}
if compgen -G "$CACHE/onedl_mmcv-$VERSION-*.whl" >/dev/null; then
  echo "onedl-mmcv $VERSION: using the wheel cached in $CACHE"
  exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip install -q --disable-pip-version-check "setuptools>=80,<81" wheel "packaging>=24.2" ninja psutil
"$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$work" "onedl-mmcv==$VERSION"
tar -xzf "$work"/onedl_mmcv-"$VERSION".tar.gz -C "$work"
src="$work/onedl_mmcv-$VERSION"
# torch 2.14's headers need C++20; setup.py puts -std=c++17 last on every compile line, so CFLAGS cannot win
sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
echo "building onedl-mmcv $VERSION (FORCE_CUDA=${FORCE_CUDA:-0}, MAX_JOBS=${MAX_JOBS:-2}) into $CACHE"
MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$CACHE" "$src"
