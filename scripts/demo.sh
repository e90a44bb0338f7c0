#!/usr/bin/env bash
# The quick MINR-vs-MAE comparison on Fashion-MNIST: pretrain ginr_tiny, transinr_tiny and mae_tiny under one
# budget (same data, masks, seed, batch and steps), print their validation PSNR side by side, then probe their
# frozen features (linear probe and k-NN against the raw-pixel floor, paired MINR - MAE statistics).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
STEPS=${STEPS:-400}
for m in ginr_tiny transinr_tiny mae_tiny; do
  if [ -e "$OUT/$m/summary.json" ] && [ "$(.venv/bin/python -c "import json,sys; print(json.load(open('$OUT/$m/summary.json'))['steps'])")" = "$STEPS" ]; then
    echo "demo: $m already done in $OUT/$m"; continue
  fi
  .venv/bin/minrctl pretrain --model "$m" --dataset fashion-mnist --max-steps "$STEPS" --seed 0 \
    --out "$OUT/$m" --resume --quiet
done
.venv/bin/minrctl compare "$OUT"/ginr_tiny "$OUT"/transinr_tiny "$OUT"/mae_tiny --out "$OUT/comparison.md"
.venv/bin/minrctl probe --task classification --ckpt "$OUT/ginr_tiny/checkpoint.safetensors" \
  --ckpt "$OUT/transinr_tiny/checkpoint.safetensors" --ckpt "$OUT/mae_tiny/checkpoint.safetensors" \
  --max-images "${PROBE_IMAGES:-5000}" --seeds 3 --cache-dir "$OUT/feature-cache" --out "$OUT/probe" --quiet
