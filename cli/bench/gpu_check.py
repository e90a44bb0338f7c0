"""The CUDA path in one short run (`bash benchmarks/gpu_check.sh`): for each paper preset, a few training steps under
bf16 autocast at its recipe's batch, images/s, model FLOPs utilisation against the GPU's bf16 matmul rate measured
in the same run (and against a nominal peak), peak memory, and the bf16 loss and gradients checked against fp32 on
the same batch. Writes its numbers to a JSON file. `--device cpu --quick` runs the same code on the tiny presets."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cli.bench.speed import (
    PeakMemory,
    flops_per_image,
    matmul_ceiling,
    preset_model,
    random_batch,
    timed,
    train_step_fn,
)
from minr.build import default_config

PAPER = ("transinr_paper", "ginr_paper", "mae_base_paper")
TINY = ("transinr_tiny", "ginr_tiny", "mae_tiny")


def precision_check(name: str, device: torch.device) -> dict[str, float]:
    """Loss and gradients of one batch in bf16 autocast against fp32: relative loss difference, and the cosine
    similarity and relative norm difference of the full gradient vector."""
    model, patch = preset_model(name, device)
    model.train()
    x, mask, patch = random_batch(model, 2, device, patch)
    results = {}
    for tag, ctx in (
        ("fp32", torch.autocast(device.type, enabled=False)),
        ("bf16", torch.autocast(device.type, dtype=torch.bfloat16)),
    ):
        torch.manual_seed(1)  # the same dropout masks in both passes
        model.zero_grad(set_to_none=True)
        with ctx:
            loss = model(x, mask, patch).loss
        loss.float().backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        results[tag] = (loss.item(), grads)
    (l32, g32), (l16, g16) = results["fp32"], results["bf16"]
    return {
        "loss_fp32": l32,
        "loss_bf16": l16,
        "loss_rel_diff": abs(l16 - l32) / abs(l32),
        "grad_cosine": torch.nn.functional.cosine_similarity(g16, g32, dim=0).item(),
        "grad_norm_rel_diff": abs(g16.norm().item() - g32.norm().item()) / g32.norm().item(),
    }


def throughput(
    name: str, device: torch.device, batch: int, steps: int, ceiling: float, nominal: float
) -> dict[str, float]:
    model, patch = preset_model(name, device)
    model.train()
    flops = flops_per_image(model, patch, device)
    with PeakMemory(device) as mem:
        step_s = timed(train_step_fn(model, patch, batch, device, autocast=True), device, steps)
    achieved = flops * batch / step_s / 1e12
    return {
        "batch": batch,
        "step_s": step_s,
        "images_per_s": batch / step_s,
        "gflop_per_image": flops / 1e9,
        "tflops": achieved,
        "mfu_vs_measured": achieved / (ceiling / 1000),
        "mfu_vs_nominal": achieved / nominal,
        "peak_mb": mem.peak_mb,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny presets, batch 2, one timed step")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="nominal dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--out", default="benchmarks/results/gpu/gpu_check.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    ceiling = matmul_ceiling(device, n=1024 if args.quick else 8192)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "bf16_matmul_gflops": ceiling,
        "nominal_tflops": args.peak_tflops,
        "models": {},
    }
    for name in TINY if args.quick else PAPER:
        batch = 2 if args.quick else default_config(name).train.batch_size if "mae" not in name else 256
        entry = {"precision": precision_check(name, device)}
        entry["speed"] = throughput(name, device, batch, 1 if args.quick else args.steps, ceiling, args.peak_tflops)
        entry["ok"] = entry["precision"]["loss_rel_diff"] < 0.02 and entry["precision"]["grad_cosine"] > 0.99
        report["models"][name] = entry
        print(name, json.dumps(entry), flush=True)
    report["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
