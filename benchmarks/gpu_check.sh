#!/usr/bin/env bash
# The CUDA path in one short run (under 8 minutes on one H100/H200): bf16 training steps of each paper preset,
# images/s, MFU, peak memory, bf16 loss and gradients against fp32. Writes benchmarks/results/gpu/gpu_check.json.
#   bash benchmarks/gpu_check.sh                       # on a CUDA machine
#   bash benchmarks/gpu_check.sh --device cpu --quick  # the same code on the tiny presets, anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" -m cli.bench.gpu_check "$@"
