#!/usr/bin/env bash
# The full MINR-vs-MAE comparison on Fashion-MNIST at CPU scale, one equal budget for every model:
#   pretrain (reconstruction PSNR, images/s, peak memory) -> frozen probes (linear + k-NN, every feature kind,
#   3 seeds, raw pixels) -> fine-tuning -> segmentation of Fashion-MNIST scenes (frozen and full, tokens and
#   per-pixel INR features). Results land in $OUT (default benchmarks/results/fashion); each step resumes.
# Budget knobs: STEPS (pretraining steps of batch 64), PROBE_IMAGES, FT_IMAGES, FT_EPOCHS, SEG_ITERS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-benchmarks/results/fashion}
STEPS=${STEPS:-843}            # one epoch of the 54,000 training images
PROBE_IMAGES=${PROBE_IMAGES:-10000}
FT_IMAGES=${FT_IMAGES:-10000}
FT_EPOCHS=${FT_EPOCHS:-2}
SEG_FROZEN_ITERS=${SEG_FROZEN_ITERS:-1500}   # frozen backbone, light head: cheap
SEG_FULL_ITERS=${SEG_FULL_ITERS:-200}        # full fine-tuning runs at 20-40 images/s on 2 CPU cores
M=.venv/bin/minrctl
CK=()
for m in ginr_tiny transinr_tiny mae_tiny; do
  [ -e "$OUT/pretrain/$m/summary.json" ] || \
    $M pretrain --model "$m" --max-steps "$STEPS" --seed 0 --out "$OUT/pretrain/$m" --resume --quiet
  CK+=(--ckpt "$OUT/pretrain/$m/checkpoint.safetensors")
done
$M compare "$OUT"/pretrain/{ginr_tiny,transinr_tiny,mae_tiny} --out "$OUT/pretrain/comparison.md"
for pass in probe probe-cached; do  # the second pass times the same run with every feature cached
  start=$SECONDS
  $M probe --task classification "${CK[@]}" --kind all --seeds 3 --max-images "$PROBE_IMAGES" \
    --mask-ratios 0,0.25,0.5,0.75 --cache-dir "$OUT/feature-cache" --out "$OUT/$pass" --quiet
  echo "$pass: $((SECONDS - start)) s" | tee -a "$OUT/probe/timing.txt"
done
$M finetune --task classification "${CK[@]}" --max-images "$FT_IMAGES" --epochs "$FT_EPOCHS" \
  --out "$OUT/finetune" --resume --quiet
[ -d "$OUT/scenes" ] || $M data make-fashion-scenes --out "$OUT/scenes" --n-train 2000 --n-val 400
for regime in frozen full; do
  iters=$SEG_FROZEN_ITERS; [ "$regime" = full ] && iters=$SEG_FULL_ITERS
  $M finetune --task segmentation "${CK[@]}" --dataset "fashion-scenes:$OUT/scenes" --regime "$regime" \
    --backbone tokens --backbone inr --max-steps "$iters" --batch-size 8 --out "$OUT/segmentation-$regime" \
    --resume --quiet
done
