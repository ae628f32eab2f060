#!/usr/bin/env bash
# Configures and builds mixq into ${BUILD_DIR:-build}. Extra arguments go to CMake.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} \
  -DPython3_EXECUTABLE=/usr/bin/python3 "$@" >/dev/null
ninja -C "$BUILD_DIR"
