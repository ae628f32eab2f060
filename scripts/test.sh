#!/usr/bin/env bash
# The whole test suite on a fresh machine: install dependencies, build, run every test, then
# rebuild under AddressSanitizer + UndefinedBehaviorSanitizer and run the suite again.
# Set MIXQ_SKIP_SANITIZERS=1 to skip the second pass.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
JOBS=$(nproc)

echo "== build (Release)"
BUILD_DIR=build ./scripts/build.sh
echo "== tests (Release)"
ctest --test-dir build --output-on-failure -j"$JOBS"

if [ "${MIXQ_SKIP_SANITIZERS:-0}" != "1" ]; then
  echo "== build (AddressSanitizer + UndefinedBehaviorSanitizer)"
  BUILD_DIR=build-asan BUILD_TYPE=RelWithDebInfo ./scripts/build.sh \
    -DMIXQ_SANITIZE=address,undefined -DMIXQ_BUILD_BENCH=OFF -DMIXQ_BUILD_PYTHON=OFF -DMIXQ_CUDA=OFF
  echo "== tests (sanitizers)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j"$JOBS" -LE install  # an uninstrumented consumer cannot load an ASan library
fi
echo "== all tests passed"
