#!/usr/bin/env bash
# GPU benchmark of the cuda backend: builds the CIFAR-style ResNet18 and the MNIST LeNet as engines
# at fp32, tf32, fp16, int8, fp8 and a mixed plan (plans/*_mixed.json), then times each with
# `mixq bench` (median device compute time of the replayed CUDA graph, and end to end with copies),
# batch 128. Then a "measured" plan per model: pick_plan.py chooses each layer's precision among
# fp16, int8 and fp8 from the per-layer times of those uniform engines (profiled here), and that
# engine is built and timed too. Prints a table and writes it, with the GPU's name, to
# $OUT/results.md.
#
#   bench/cuda/gpu_bench.sh [-n ITERATIONS] [--warmup N] [--batch B] [--profile] [--plans LIST]
#
# --plans: the engines to build, from "fp32 tf32 fp16 int8 fp8 mixed" (the default: all) and
# "int8-exhaustive" (int8 tuned with MIXQ_CUDA_TUNE_KERNELS=1: every kernel configuration of the
# winning runtime-compiled cuDNN engines, a build of minutes); the measured plan needs at least
# two of fp16, int8, fp8.
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
N=50 WARMUP=10 BATCH=128 PROFILE= PLANS="fp32 tf32 fp16 int8 fp8 mixed"
while [ $# -gt 0 ]; do
  case $1 in
    -n) N=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --profile) PROFILE=--profile; shift ;;
    --plans) PLANS=$2; shift 2 ;;
    *) echo "usage: $0 [-n ITERATIONS] [--warmup N] [--batch B] [--profile] [--plans LIST]" >&2; exit 2 ;;
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

wanted() { case " $PLANS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for p in fp32 tf32 fp16; do
  wanted $p || continue
  engine resnet18 $p --default-precision $p
  engine lenet $p --default-precision $p
done
for p in int8 fp8; do
  wanted $p || continue
  engine resnet18 $p --default-precision $p $(calib resnet resnet18_$p)
  engine lenet $p --default-precision $p $(calib lenet lenet_$p)
done
if wanted int8-exhaustive; then  # the int8 engines' calibration (same ranges)
  export MIXQ_CUDA_TUNE_KERNELS=1
  engine resnet18 int8-exhaustive --default-precision int8 $(calib resnet resnet18_int8)
  engine lenet int8-exhaustive --default-precision int8 $(calib lenet lenet_int8)
  unset MIXQ_CUDA_TUNE_KERNELS
fi
if wanted mixed; then
  engine resnet18 mixed --config "$HERE/plans/resnet18_mixed.json" $(calib resnet resnet18_mixed)
  engine lenet mixed --config "$HERE/plans/lenet_mixed.json" $(calib lenet lenet_mixed)
fi

GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
{
  echo "# mixq cuda backend, batch $BATCH, $N runs after $WARMUP warm-up (median device compute time)"
  echo
  echo "GPU: ${GPU:-unknown}; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| engine | compute ms (median) | p10 | p90 | end to end ms | samples/s | avg bits (MACs) |"
  echo "|---|---|---|---|---|---|---|"
} >"$OUT/results.md"
bench_engine() {  # bench_engine NAME
  local name=$1
  step "bench $name"
  if ! "$MIXQ" bench "$OUT/$name.mixq" --batch "$BATCH" -n "$N" --warmup "$WARMUP" --json >"$OUT/$name.json" \
       2>"$OUT/$name.bench.log"; then
    echo "   bench failed:" >&2
    cat "$OUT/$name.bench.log" >&2
    FAILED+=("$name (bench)")
    return
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
}
for name in "${ENGINES[@]}"; do bench_engine "$name"; done

# Per-layer precisions picked from measured layer times (fp16 / int8 / fp8 engines' profiles).
for model in resnet18 lenet; do
  profiles=()
  for p in fp16 int8 fp8; do
    [ -f "$OUT/${model}__cuda-$p.mixq" ] || continue
    "$MIXQ" bench "$OUT/${model}__cuda-$p.mixq" --batch "$BATCH" -n "$N" --warmup "$WARMUP" --profile \
      --json >"$OUT/${model}__cuda-$p.layers.json" 2>/dev/null && profiles+=("$OUT/${model}__cuda-$p.layers.json")
  done
  [ ${#profiles[@]} -ge 2 ] || continue
  step "measured plan for $model"
  "$PY" "$HERE/pick_plan.py" "${profiles[@]}" >"$OUT/${model}_measured.json" 2>"$OUT/${model}_measured.txt" || {
    FAILED+=("$model measured plan"); continue; }
  cat "$OUT/${model}_measured.txt" >&2
  short=${model/resnet18/resnet}
  engine "$model" measured --config "$OUT/${model}_measured.json" $(calib "$short" "${model}_measured")
  [ -f "$OUT/${model}__cuda-measured.mixq" ] && bench_engine "${model}__cuda-measured"
done
if [ ${#FAILED[@]} -gt 0 ]; then
  { echo; echo "Failed: ${FAILED[*]} (logs in $OUT)"; } >>"$OUT/results.md"
fi
cat "$OUT/results.md"
[ ${#FAILED[@]} -eq 0 ]
