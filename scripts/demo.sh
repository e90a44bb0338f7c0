#!/usr/bin/env bash
# The main job: the quick MINR-vs-MAE comparison on Fashion-MNIST, every stage under one budget (pretrain ->
# reconstruct -> probe -> fine-tune -> segment -> report), about 8 minutes on a 2-core CPU. Results and the report
# (report.md, report.html, results.json) land in $OUT (default runs/quick); run it again to continue or to reuse
# the stages already done. PRESET=cpu-full for the README's full comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/minrctl bench --preset "${PRESET:-quick}" --out "${OUT:-runs/${PRESET:-quick}}" "$@"
