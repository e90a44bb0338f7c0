"""A pretraining step with each of torch's Adam implementations (the per-parameter loop, foreach, fused), the
same model and batch, their steps interleaved (`cli.bench.speed.timed_together`). Medians in milliseconds.

    .venv/bin/python benchmarks/optimizer_speed.py --models mae_tiny,ginr_tiny --out benchmarks/results/optimizer
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cli.bench import speed
from minr.flops import random_batch
from minr.io import atomic_write_text, write_json
from minr.loop import apply_gradients

KINDS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_fn(name: str, batch: int, options: dict, device: torch.device):
    model, patch = speed.preset_model(name, device)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, **options)
    x, mask, patch = random_batch(model, batch, device, patch)

    def step() -> None:
        loss = model(x, mask, patch).loss
        opt.zero_grad(set_to_none=True)
        apply_gradients(model, opt, loss)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mae_tiny,ginr_tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/optimizer")
    args = ap.parse_args()
    device, rows = torch.device("cpu"), []
    for name in args.models.split(","):
        fns = {k: step_fn(name, args.batch, o, device) for k, o in KINDS.items()}
        ms = {k: 1000 * v for k, v in speed.timed_together(fns, device, args.steps).items()}
        rows.append({"model": name, "batch": args.batch, **ms})
        print(rows[-1], flush=True)
    out = Path(args.out)
    write_json(out / "optimizer.json", {"rows": rows, "steps": args.steps})
    lines = ["| model | batch | loop ms | foreach ms | fused ms | fused vs loop |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['model']} | {r['batch']} | {r['loop']:.1f} | {r['foreach']:.1f} | {r['fused']:.1f} | "
        f"{r['loop'] / r['fused']:.3f}x |"
        for r in rows
    ]
    atomic_write_text(out / "optimizer.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
