#!/usr/bin/env bash
# The one install script: the Makefile (make venv, demo, test, seg), CI (.ci/run, through make) and the
# Dockerfile's build stage all run these steps, so CI exercises the image's install except its CUDA compile.
#
#   tools/install.sh STEP [STEP ...]     steps run in the order given, e.g. `tools/install.sh venv seg`
#
#   runtime        $VENV with requirements.txt (the image's venv)
#   venv           runtime, then requirements-dev.txt (tests, hadolint): what `make` uses
#   mmcv           build the onedl-mmcv wheel with its ops once into $WHEEL_CACHE (skipped when cached there)
#   seg            mmcv, then requirements-seg.txt from that cache and requirements-seg-nodeps.txt: the
#                  segmentation extra, with detection (mmdet)
#   fashion-mnist  Debian's dataset-fashion-mnist through apt, when $FMNIST_DIR lacks it (the demo's data)
#   help           this text
#
# Environment (defaults in brackets):
#   PYTHON [python3]  the interpreter that creates $VENV     VENV [.venv]  the virtual environment
#   WHEEL_CACHE [~/.cache/mim-wheels/torch-<torch version>]  where the mmcv wheel is built and found
#   FORCE_CUDA [0]  1 compiles mmcv's CUDA ops (needs nvcc of torch's CUDA, with TORCH_CUDA_ARCH_LIST)
#   MAX_JOBS [2]  parallel compile jobs                      FMNIST_DIR [/usr/share/datasets/fashion-mnist]
#
# `runtime` and `venv` leave $VENV/.installed, `seg` $VENV/.seg-installed: the Makefile's targets.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
MMCV_VERSION=2.3.6  # requirements-seg.txt pins the same
PIP=(-m pip install --disable-pip-version-check -q)

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

step_runtime() {
  [ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
  "$PY" "${PIP[@]}" -r requirements.txt
  touch "$VENV/.installed"
}

step_venv() {
  step_runtime
  "$PY" "${PIP[@]}" -r requirements-dev.txt
  touch "$VENV/.installed"
}

wheel_cache() {
  local torch
  torch=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
  echo "${WHEEL_CACHE:-$HOME/.cache/mim-wheels/torch-$torch}"
}

# onedl-mmcv is published as source only, and mmsegmentation imports mmcv.ops at module level (mmcv-lite is
# not enough): its wheel is built with the ops once, into a cache outside the repository keyed on torch.
# ~30 CPU-minutes for the CPU ops; FORCE_CUDA=1 (with nvcc and TORCH_CUDA_ARCH_LIST) builds the CUDA ops too.
step_mmcv() {
  local cache work src
  cache=$(wheel_cache)
  if compgen -G "$cache/onedl_mmcv-$MMCV_VERSION-*.whl" >/dev/null; then
    echo "onedl-mmcv $MMCV_VERSION: using the wheel cached in $cache"
    return
  fi
  mkdir -p "$cache"
  work=$(mktemp -d)
  # shellcheck disable=SC2064  # expand $work now: it is local to this function
  trap "rm -rf '$work'" EXIT
  "$PY" "${PIP[@]}" "setuptools>=80,<81" wheel "packaging>=24.2" ninja psutil
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$work" \
    "onedl-mmcv==$MMCV_VERSION"
  tar -xzf "$work/onedl_mmcv-$MMCV_VERSION.tar.gz" -C "$work"
  src="$work/onedl_mmcv-$MMCV_VERSION"
  # torch 2.14's headers need C++20; setup.py puts -std=c++17 last on every compile line, so CFLAGS cannot win
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  echo "building onedl-mmcv $MMCV_VERSION (FORCE_CUDA=${FORCE_CUDA:-0}, MAX_JOBS=${MAX_JOBS:-2}) into $cache"
  MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$cache" "$src"
}

step_seg() {
  step_mmcv
  "$PY" "${PIP[@]}" --find-links "$(wheel_cache)" -r requirements-seg.txt
  "$PY" "${PIP[@]}" --no-deps -r requirements-seg-nodeps.txt
  touch "$VENV/.seg-installed"
}

step_fashion_mnist() {
  [ -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] && return
  if ! command -v apt-get >/dev/null; then
    echo "Fashion-MNIST not found in $FMNIST_DIR: install Debian's dataset-fashion-mnist" >&2
    exit 1
  fi
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq dataset-fashion-mnist
}

[ $# -gt 0 ] || { usage >&2; exit 2; }
for step in "$@"; do
  case "$step" in
    runtime) step_runtime ;;
    venv) step_venv ;;
    mmcv) step_mmcv ;;
    seg) step_seg ;;
    fashion-mnist) step_fashion_mnist ;;
    help | -h | --help) usage ;;
    *) echo "tools/install.sh: unknown step '$step' (runtime, venv, mmcv, seg, fashion-mnist, help)" >&2; exit 2 ;;
  esac
done
