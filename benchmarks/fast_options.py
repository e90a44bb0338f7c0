"""MINR's two fast options and their cost: dropping fully masked tokens (model_args.drop_masked_tokens) and rendering
a quarter of the pixels (train.render_fraction=0.25), each alone and both, against the exact model.

For ginr_tiny and transinr_tiny on Fashion-MNIST (same seed, data and masks): pretraining speed, and validation PSNR
under the three protocols at an equal number of steps and at an equal time budget (each option runs for as many
steps as fit in the exact run's training time), paired per image against the exact model (bootstrap interval,
Wilcoxon). Then training steps at paper scale timed directly, exact against both options.

    .venv/bin/python benchmarks/fast_options.py --steps 400 --work /tmp/fast --out benchmarks/results/fast_options
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from cli.bench.speed import flops_per_image, matmul_ceiling, preset_model, timed, train_step_fn
from minr.build import default_config
from minr.io import read_json, write_json
from minr.metrics import PROTOCOLS
from minr.train import pretrain
from probes.recon.evaluate import ReconConfig, run_conditions
from probes.stats import bootstrap_mean, compare
from probes.tables import markdown_table

OPTIONS = {
    "exact": {},
    "drop tokens": {"model_args.drop_masked_tokens": True},
    "render 25%": {"train.render_fraction": 0.25},
    "both": {"model_args.drop_masked_tokens": True, "train.render_fraction": 0.25},
}


def train(model: str, option: str, steps: int, work: Path) -> dict:
    out = work / model / f"{option.replace(' ', '_').replace('%', '')}-{steps}"
    over = {
        "train.max_steps": steps,
        "train.seed": 0,
        "train.batch_size": 64,
        "train.val_max_images": 1000,
        **OPTIONS[option],
    }
    if not (out / "summary.json").is_file():
        pretrain(default_config(model, over), out, resume=True, progress=False)
    return {"dir": str(out), "steps": steps, **read_json(out / "summary.json", "a run summary")}


def per_image(runs: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Per-image validation PSNR of each run (75% random masking of 4-px cells, the same masks for every run)."""
    ckpts = tuple(str(Path(r["dir"]) / "checkpoint.safetensors") for r in runs)
    names = [Path(r["dir"]).name for r in runs]
    cfg = ReconConfig(
        ckpts=ckpts, datasets=("fashion-mnist",), split="val", mask_ratios=(0.75,), mask_kinds=("random",), floors=False
    )
    got = run_conditions(cfg, names, progress=False)
    return {n: {p: got.arrays[f"{n}|fashion-mnist|random|0.75|{p}"] for p in PROTOCOLS} for n in names}


def paper_steps(batch: int = 4) -> list[dict]:
    """Training-step speed at 182 px, exact against both options, measured directly."""
    device, rows = torch.device("cpu"), []
    ceiling = matmul_ceiling(device)
    for name in ("transinr_paper", "ginr_paper"):
        for option, args in (("exact", {}), ("both", {"drop_masked_tokens": True})):
            model, patch = preset_model(name, device, **args)
            model.train()
            fraction = 0.25 if option == "both" else 1.0
            step = train_step_fn(model, patch, batch, device, autocast=False, render_fraction=fraction)
            seconds = timed(step, device, 2)
            rows.append(
                {
                    "model": name,
                    "option": option,
                    "batch": batch,
                    "step_s": seconds,
                    "images_per_s": batch / seconds,
                    "gflop_per_image": flops_per_image(model, patch, device, render_fraction=fraction) / 1e9,
                    "ceiling_gflops": ceiling,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--work", default="/tmp/fast")
    ap.add_argument("--out", default="benchmarks/results/fast_options")
    args = ap.parse_args()
    work, out, t0 = Path(args.work), Path(args.out), time.perf_counter()
    results = {"steps": args.steps, "models": {}}
    for model in ("ginr_tiny", "transinr_tiny"):
        equal_steps = {o: train(model, o, args.steps, work) for o in OPTIONS}
        busy = {o: r["steps"] * 64 / r["train_images_per_s"] for o, r in equal_steps.items()}
        equal_time = {
            o: train(model, o, math.floor(args.steps * busy["exact"] / busy[o]), work) for o in OPTIONS if o != "exact"
        }
        psnr = per_image(list(equal_steps.values()) + list(equal_time.values()))
        exact = psnr[Path(equal_steps["exact"]["dir"]).name]
        rows = []
        for budget, runs in (
            ("equal steps", equal_steps),
            ("equal time", {"exact": equal_steps["exact"], **equal_time}),
        ):
            for option, r in runs.items():
                mine = psnr[Path(r["dir"]).name]
                row = {
                    "budget": budget,
                    "option": option,
                    "steps": r["steps"],
                    "images_per_s": r["train_images_per_s"],
                    "speedup": r["train_images_per_s"] / equal_steps["exact"]["train_images_per_s"],
                }
                for p in PROTOCOLS:
                    row[f"psnr_{p}"] = bootstrap_mean(mine[p])[0]
                    c = compare(option, mine[p], "exact", exact[p], method=budget, metric=p)
                    row[f"diff_{p}"] = {"diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p}
                rows.append(row)
        results["models"][model] = rows
    results["paper_steps"] = paper_steps()
    results["seconds"] = time.perf_counter() - t0
    write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


def _cell(r: dict, p: str) -> str:
    d = r[f"diff_{p}"]
    return f"{r[f'psnr_{p}']:.2f} ({d['diff']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}])"


def markdown(results: dict) -> str:
    parts = [
        f"# MINR's fast options on Fashion-MNIST ({results['steps']} steps of batch 64 for the equal-steps runs)\n",
        "Validation PSNR (1,000 images, 75% random masking of 4-px cells) and the paired difference to the exact model "
        "on the same images: mean [bootstrap 95% CI], Wilcoxon p. Equal time: each option trains for as many steps as "
        "fit in the exact run's training time.\n",
    ]
    for model, rows in results["models"].items():
        table = [
            [
                r["budget"],
                r["option"],
                r["steps"],
                f"{r['images_per_s']:.0f}",
                f"{r['speedup']:.2f}x",
                *(_cell(r, p) for p in PROTOCOLS),
            ]
            for r in rows
        ]
        parts += [
            f"## {model}\n",
            markdown_table(
                [
                    "budget",
                    "option",
                    "steps",
                    "train img/s",
                    "speed-up",
                    "PSNR full (diff)",
                    "PSNR pasted (diff)",
                    "PSNR masked (diff)",
                ],
                table,
            ),
        ]
    rows = [
        [
            r["model"],
            r["option"],
            r["batch"],
            f"{r['step_s']:.2f}",
            f"{r['images_per_s']:.2f}",
            f"{r['gflop_per_image']:.1f}",
        ]
        for r in results["paper_steps"]
    ]
    parts += [
        "## Paper scale (182 px), measured directly\n",
        markdown_table(["model", "option", "batch", "step s", "img/s", "GFLOP/img"], rows),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
