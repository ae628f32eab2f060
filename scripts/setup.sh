#!/usr/bin/env bash
# Installs mixq's build and test dependencies from Debian's packages. Idempotent: when every
# package is already installed it does nothing (and needs no root).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config python3-dev
  libdnnl-dev ocl-icd-opencl-dev libonnx-dev libprotobuf-dev protobuf-compiler
  nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev libzip-dev zlib1g-dev
  python3-torch python3-torchvision python3-onnx python3-numpy python3-pytest
  pybind11-dev python3-pybind11 dataset-fashion-mnist
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: run as root (or install sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
