#!/usr/bin/env bash
# Installs a built mixq into a temporary prefix, builds a downstream project against it with
# find_package(mixq), and runs that project and the installed CLI on a model.
#
#   run_install_test.sh <build dir> <model.onnx> [<cmake>] [<c++ compiler>]
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 <build dir> <model.onnx> [<cmake>] [<c++ compiler>]" >&2
  exit 2
fi
build_dir=$1
model=$2
cmake=${3:-cmake}
cxx=${4:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

[[ -d $build_dir ]] || { echo "error: build dir '$build_dir' does not exist" >&2; exit 1; }
[[ -f $model ]] || { echo "error: model '$model' does not exist" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/mixq_install_test.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

echo "== install into $prefix"
"$cmake" --install "$build_dir" --prefix "$prefix"

echo "== configure and build the consumer"
args=(-S "$here/consumer" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release)
[[ -n $cxx ]] && args+=(-DCMAKE_CXX_COMPILER="$cxx")
"$cmake" "${args[@]}"
"$cmake" --build "$work/build"

echo "== run the consumer"
out=$("$work/build/consumer" "$model")
echo "$out"
grep -q '^ok$' <<<"$out" || { echo "error: consumer did not finish" >&2; exit 1; }

echo "== run the installed CLI"
cli=$prefix/bin/mixq
[[ -x $cli ]] || { echo "error: $cli was not installed" >&2; exit 1; }
"$cli" inspect "$model"
"$cli" run "$model" --batch 2 -o "$work/outputs"
ls "$work"/outputs/*.npy >/dev/null

echo "install test passed"
