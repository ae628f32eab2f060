#!/usr/bin/env bash
# The main job on the built-in default: the shipped LeNet (examples/checkpoints/lenet.pth, trained
# on Debian's Fashion-MNIST; examples/train.py remakes it) built as fp32, mixed, int8 PTQ and int8
# QAT engines, each timed at batch 128 and scored on the 10 000 test images, printed as NNI's
# table. Installs what it needs, builds, runs (about two minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BUILD_DIR=build ./scripts/build.sh
export PYTHONPATH=$PWD/build/python${PYTHONPATH:+:$PYTHONPATH}
/usr/bin/python3 examples/results_table.py --model lenet "$@"
