#!/usr/bin/env bash
# GPU benchmark of the cuda backend: builds the CIFAR-style ResNet18 and the MNIST LeNet as engines
# at fp32, tf32, fp16, int8, fp8 and a mixed plan (plans/*_mixed.json), then times each with
# `mixq bench` (median device compute time of the replayed CUDA graph, and end to end with copies),
# batch 128. Prints a table and writes it, with the GPU's name, to $OUT/results.md.
#
#   bench/cuda/gpu_bench.sh [-n ITERATIONS] [--warmup N] [--batch B] [--profile]
#
# Environment:
#   MIXQ     the mixq CLI built with the CUDA backend (default: ${BUILD_DIR:-build-cuda}/mixq)
#   MODELS   folder with resnet18.onnx, lenet.onnx, calib_resnet.npy, calib_lenet.npy, as
#            bench/models/make_models.py writes them (default: bench/.cache; made there when
#            missing and python3 with torch is available)
#   OUT      engines, logs and results (default: $MODELS/cuda)
# Layers a precision cannot run (e.g. int8/fp8 on ResNet18's 3-channel stem) fall back as the
# build reports (default precision); the build logs in $OUT list every layer's precision.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
N=50 WARMUP=10 BATCH=128 PROFILE=
while [ $# -gt 0 ]; do
  case $1 in
    -n) N=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --profile) PROFILE=--profile; shift ;;
    *) echo "usage: $0 [-n ITERATIONS] [--warmup N] [--batch B] [--profile]" >&2; exit 2 ;;
  esac
done
MIXQ=${MIXQ:-$ROOT/${BUILD_DIR:-build-cuda}/mixq}
MODELS=${MODELS:-$ROOT/bench/.cache}
OUT=${OUT:-$MODELS/cuda}
PY=${PYTHON:-python3}
step() { echo "== $*" >&2; }

[ -x "$MIXQ" ] || { echo "error: no mixq CLI at $MIXQ; build it with the CUDA backend:" \
  "cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DMIXQ_CUDA=ON && ninja -C build-cuda mixq_cli mixq_cuda" >&2; exit 1; }
missing=
for f in resnet18.onnx lenet.onnx calib_resnet.npy calib_lenet.npy; do [ -f "$MODELS/$f" ] || missing="$missing $f"; done
if [ -n "$missing" ]; then
  step "models missing in $MODELS ($missing): bench/models/make_models.py"
  mkdir -p "$MODELS"
  "$PY" "$ROOT/bench/models/make_models.py" "$MODELS" >&2
fi
mkdir -p "$OUT"

ENGINES=() FAILED=()
engine() {  # engine MODEL PLAN [mixq build options]
  local model=$1 plan=$2 name=$1__cuda-$2
  shift 2
  step "build $name"
  if "$MIXQ" build "$MODELS/$model.onnx" --backend cuda --max-batch "$BATCH" "$@" -o "$OUT/$name.mixq" \
       >"$OUT/$name.log" 2>&1; then
    ENGINES+=("$name")
  else
    echo "   build failed (log: $OUT/$name.log):" >&2
    tail -n 20 "$OUT/$name.log" >&2
    FAILED+=("$name")
  fi
}
calib() { echo --calib "$MODELS/calib_$1.npy" --calib-algo entropy --calib-cache "$OUT/$2.calib"; }

for p in fp32 tf32 fp16; do
  engine resnet18 $p --default-precision $p
  engine lenet $p --default-precision $p
done
for p in int8 fp8; do
  engine resnet18 $p --default-precision $p $(calib resnet resnet18_$p)
  engine lenet $p --default-precision $p $(calib lenet lenet_$p)
done
engine resnet18 mixed --config "$HERE/plans/resnet18_mixed.json" $(calib resnet resnet18_mixed)
engine lenet mixed --config "$HERE/plans/lenet_mixed.json" $(calib lenet lenet_mixed)

GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
{
  echo "# mixq cuda backend, batch $BATCH, $N runs after $WARMUP warm-up (median device compute time)"
  echo
  echo "GPU: ${GPU:-unknown}; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| engine | compute ms (median) | p10 | p90 | end to end ms | samples/s | avg bits (MACs) |"
  echo "|---|---|---|---|---|---|---|"
} >"$OUT/results.md"
for name in "${ENGINES[@]}"; do
  step "bench $name"
  if ! "$MIXQ" bench "$OUT/$name.mixq" --batch "$BATCH" -n "$N" --warmup "$WARMUP" --json >"$OUT/$name.json" \
       2>"$OUT/$name.bench.log"; then
    echo "   bench failed:" >&2
    cat "$OUT/$name.bench.log" >&2
    FAILED+=("$name (bench)")
    continue
  fi
  "$PY" - "$OUT/$name.json" "$name" "$BATCH" >>"$OUT/results.md" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
batch = int(sys.argv[3])
med = j["compute_ms_median"]
print(f"| {sys.argv[2]} | {med:.4f} | {j['compute_ms_p10']:.4f} | {j['compute_ms_p90']:.4f} | "
      f"{j['end_to_end_ms_median']:.3f} | {batch / (med * 1e-3):.0f} | {j['average_bits_by_macs']:.1f} |")
PY
  if [ -n "$PROFILE" ]; then
    "$MIXQ" bench "$OUT/$name.mixq" --batch "$BATCH" -n "$N" --warmup "$WARMUP" --profile >"$OUT/$name.profile.txt" 2>&1 || true
  fi
done
if [ ${#FAILED[@]} -gt 0 ]; then
  { echo; echo "Failed: ${FAILED[*]} (logs in $OUT)"; } >>"$OUT/results.md"
fi
cat "$OUT/results.md"
[ ${#FAILED[@]} -eq 0 ]
