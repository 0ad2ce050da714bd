#!/usr/bin/env bash
# Set up flp2p in ./.venv: the Fashion-MNIST data package, Debian's chromium (the
# dashboard's browser test), a CPU build of torch, and the project with its dev extra.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# On these machines `torch==2.13.0` resolves to a local CPU build; any other spec
# downloads GBs of CUDA packages. Override with TORCH_SPEC elsewhere.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
FMNIST_DIR=/usr/share/datasets/fashion-mnist

if [ ! -d "$FMNIST_DIR" ] && [ -z "${FLP2P_FMNIST_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's dataset-fashion-mnist" >&2
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" \
         "or set FLP2P_FMNIST_DIR to a folder with its IDX files" >&2
  fi
fi

if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's chromium (for the dashboard's browser test)" >&2
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium missing: the dashboard's browser test will be skipped" \
         "(run 'sudo apt-get install chromium')" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC" >&2
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
echo "setup: installing flp2p and its dependencies" >&2
.venv/bin/python -m pip install -q -e ".[dev]"
# ByzFL's aggregators (numpy/scipy/torch) are the benchmarks' reference rules. Its
# package requires torchvision, whose wheel here is a CUDA build that cannot import
# beside a CPU torch, so install ByzFL alone; benchmarks/robust_updates.py imports
# only byzfl.aggregators.
if ! .venv/bin/python -c "import importlib.util as u; exit(u.find_spec('byzfl') is None)"; then
  echo "setup: installing byzfl (benchmark reference rules, without torchvision)" >&2
  .venv/bin/python -m pip install -q --no-deps "byzfl==0.0.11"
fi
echo "setup: done (.venv ready)" >&2
