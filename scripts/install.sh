#!/usr/bin/env bash
# Installs what byol needs on a fresh Debian machine (idempotent): Fashion-MNIST from Debian,
# PyTorch (CPU wheels on this kind of machine), and byol itself with its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "install.sh: no apt-get; put Fashion-MNIST's IDX files in /usr/share/datasets/fashion-mnist" >&2
  fi
fi
PY=${PYTHON:-python3}
if ! $PY -c "import torch, torchvision" 2>/dev/null; then
  $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
$PY -m pip install -q -e ".[dev,timm,bench]"
