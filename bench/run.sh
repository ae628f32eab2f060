#!/usr/bin/env bash
# The benchmark suite in one command: prints one side-by-side table per model and writes them as
# markdown, with the machine, to bench/.cache/results.md.
#
#   bench/run.sh [-n ITERATIONS] [-t THREADS] [--warmup N] [--calib-algo ALGO]
#                (defaults: 30 timed runs, 2 threads, 5 warm-up runs, percentile calibration)
#
# Builds what it needs (the mixq CLI in ${BUILD_DIR:-build} unless MIXQ names a mixq binary to use,
# the peak kernel, ONNX Runtime from npm), makes the models and data into bench/.cache (once; again
# when make_models.py, the example models or their trained checkpoints change), builds the mixq engines, then times, in blocks and never interleaved
# (ONNX Runtime's thread pools spin): the peak kernel, every mixq engine, ONNX Runtime, PyTorch.
# Batch 128, THREADS threads, the same input for all. The peak kernel runs first and last; the
# table uses the higher of the two (a busy machine only ever lowers a peak).
set -euo pipefail
MIXQ=${MIXQ:+$(realpath "$MIXQ")}
cd "$(dirname "$0")"
N=30 THREADS=2 WARMUP=5 ALGO=percentile
while [ $# -gt 0 ]; do
  case $1 in
    -n) N=$2; shift 2 ;;
    -t|--threads) THREADS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --calib-algo) ALGO=$2; shift 2 ;;
    *) echo "usage: $0 [-n ITERATIONS] [-t THREADS] [--warmup N] [--calib-algo ALGO]" >&2; exit 2 ;;
  esac
done
PY=/usr/bin/python3                   # Debian's Python, with torch and onnx
ROOT=$(cd .. && pwd)
BUILD=$ROOT/${BUILD_DIR:-build}
C=.cache
export OMP_NUM_THREADS=$THREADS
step() { echo "== $*" >&2; }

step "build: mixq CLI, peak kernel, ONNX Runtime"
if [ -z "$MIXQ" ]; then
  [ -f "$BUILD/build.ninja" ] || cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython3_EXECUTABLE=$PY >/dev/null
  ninja -C "$BUILD" mixq_cli >&2
  MIXQ=$BUILD/mixq
fi
rm -rf $C/results $C/outputs
mkdir -p $C/engines $C/results $C/outputs
[ $C/peak -nt peak/peak.cpp ] || g++ -O2 -fopenmp peak/peak.cpp -o $C/peak
[ -d peers/node_modules/onnxruntime-node ] ||
  (cd peers && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund >/dev/null)

stale=$([ -f $C/models.stamp ] || echo yes)
for f in models/make_models.py ../examples/models.py ../examples/fashion_mnist.py ../examples/checkpoints/*.pth; do
  [ ! -e "$f" ] || [ "$f" -ot $C/models.stamp ] || stale=yes
done
if [ -n "$stale" ]; then
  step "models and data (Fashion-MNIST) into $C"
  $PY models/make_models.py $C >&2
  rm -f $C/engines/*.calib          # calibration caches of the old models (mixq refuses them)
  touch $C/models.stamp
fi

# --- mixq engines: name = <model>__mixq-<plan> -------------------------------------------------------
ENGINES=()
engine() {  # engine MODEL PLAN ONNX [mixq build options]; calibration is cached per engine
  local name=$1__mixq-$2 onnx=$3
  shift 3
  step "mixq build $name"
  if ! $MIXQ build $C/$onnx "$@" -o $C/engines/$name.mixq >$C/engines/$name.log 2>&1; then
    cat $C/engines/$name.log >&2
    exit 1
  fi
  ENGINES+=("$name")
}
calib() { echo --calib $C/calib_$1.npy --calib-algo $ALGO --calib-cache $C/engines/$2_$ALGO.calib; }
engine resnet18 fp32 resnet18.onnx
engine resnet18 int8 resnet18.onnx --default-precision int8 $(calib resnet resnet18_int8)
engine resnet18 int8-qdq-w7 resnet18_qdq_w7.onnx
engine lenet fp32 lenet.onnx
engine lenet int8 lenet.onnx --default-precision int8 $(calib lenet lenet_int8)
engine lenet mixed lenet.onnx --config plans/lenet_mixed.json $(calib lenet lenet_mixed)
# The same LeNet plans with oneDNN limited to AVX2, as on CPUs without VNNI (7-bit weights there):
# where int8 products saturate 16-bit lanes, a one-input-channel int8 conv is slower than fp32.
export ONEDNN_MAX_CPU_ISA=AVX2
engine lenet-avx2 fp32 lenet.onnx
engine lenet-avx2 int8 lenet.onnx --default-precision int8 $(calib lenet lenet_avx2_int8)
engine lenet-avx2 mixed lenet.onnx --config plans/lenet_mixed.json $(calib lenet lenet_avx2_mixed)
unset ONEDNN_MAX_CPU_ISA
isa_env() { [[ $1 == *avx2* ]] && echo ONEDNN_MAX_CPU_ISA=AVX2 || echo ONEDNN_MAX_CPU_ISA=ALL; }

# --- timing, in blocks -------------------------------------------------------------------------------
input() { [[ $1 == lenet* ]] && echo $C/bench_lenet.npy || echo $C/bench_resnet.npy; }
step "time: peak kernel ($THREADS threads)"
$C/peak "$THREADS" >$C/results/peak_first.json
for e in "${ENGINES[@]}"; do
  step "time: mixq $e"
  env $(isa_env $e) $MIXQ bench $C/engines/$e.mixq -i input="$(input ${e%%__*})" --warmup "$WARMUP" -n "$N" \
    --threads "$THREADS" --json >$C/results/$e.json
done
for model in resnet18 lenet; do
  for v in fp32: int8-qdq-w7:_qdq_w7 int8-qdq-w8:_qdq_w8; do
    step "time: ONNX Runtime $model ${v%%:*}"
    node peers/ort_bench.js $C/$model${v#*:}.onnx "$(input $model)" -n "$N" --warmup "$WARMUP" \
      --threads "$THREADS" --out $C/outputs/${model}__ort-${v%%:*}.npy >$C/results/${model}__ort-${v%%:*}.json
  done
done
for model in resnet18 lenet; do
  for p in fp32 int8; do
    step "time: PyTorch $model $p"
    $PY peers/torch_bench.py $model $p $C -n "$N" --warmup "$WARMUP" --threads "$THREADS" \
      --out $C/outputs/${model}__torch-$p.npy >$C/results/${model}__torch-$p.json
  done
done

step "time: peak kernel again"
$C/peak "$THREADS" >$C/results/peak_last.json

# --- outputs of the mixq engines on the bench input (for SQNR), machine, table ----------------------
for e in "${ENGINES[@]}"; do
  env $(isa_env $e) $MIXQ run $C/engines/$e.mixq -i input="$(input ${e%%__*})" -o $C/outputs/$e >/dev/null
  mv $C/outputs/$e/output.npy $C/outputs/$e.npy && rmdir $C/outputs/$e
done
ONEDNN_VERBOSE=1 $MIXQ bench $C/engines/lenet__mixq-fp32.mixq -n 1 --warmup 0 2>&1 |
  grep -m1 ',isa:' >$C/results/onednn_isa.txt || true
for model in resnet18 lenet; do $MIXQ inspect $C/$model.onnx --json >$C/results/${model}_model.json; done
cp $C/results/lenet_model.json $C/results/lenet-avx2_model.json
for e in "${ENGINES[@]}"; do env $(isa_env $e) $MIXQ inspect $C/engines/$e.mixq --json >$C/results/$e.inspect.json; done
$PY report.py $C "$N" "$THREADS" "$ALGO"
