#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py has the stages and options): the tiny pipeline on the
# GPU, a paper-configuration training step in float32 and bf16, 400 pieces in one batch and
# the traced generation path, ending with one summary line. Exit code 1 when a stage fails.
#
#   bench/gpu_check.sh                      # on the GPU (cuda), paper sizes
#   bench/gpu_check.sh --device cpu --preset tiny --epochs 1 ...   # a dry run (tests/test_gpu_check.py)
#
# Python: $PYTHON, else the project's .venv, else python3. OpenMP's waiting as `make` sets it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-30000}"
exec "$PY" bench/gpu_check.py "$@"
