"""The tiny presets' recipes, searched per model on an equal grid: learning rate x warm-up, the same trials for every
model, each trial one pretraining run at the `cpu-full` budget (843 steps of batch 64 on Fashion-MNIST, seed 0).

Each model keeps its paper recipe's optimiser and schedule (TransINR: Adam, step decay; GINR: Adam, constant; MAE:
AdamW, cosine) and is scored on its own validation objective: its training loss on the validation split carved from
train (`data.val_fraction`), never the test split. The trial with the lowest validation loss is the model's recipe.
Trials resume: a finished trial is read back, a killed one continues from its checkpoint.

    .venv/bin/python benchmarks/recipe_search.py --work /tmp/recipes --out benchmarks/results/recipes
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from minr.build import default_config
from minr.io import atomic_write_text, read_json, write_json
from minr.models import get_spec
from minr.train import pretrain
from probes.tables import markdown_table

MODELS = ("mae_tiny", "ginr_tiny", "transinr_tiny")  # the cheapest first: a stopped search has whole grids
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
WARMUPS = (0.0, 0.05)


def trial(model: str, lr: float, warmup: float, steps: int, work: Path, data_root: str | None) -> dict:
    """One pretraining run of the grid (read back when it finished before); its summary and settings."""
    out = work / model / f"lr{lr:g}-warmup{warmup:g}"
    over = {
        "train.max_steps": steps,
        "train.epochs": None,
        "train.seed": 0,
        "train.batch_size": 64,
        "optim.lr": lr,
        "optim.warmup_fraction": warmup,
        **({"data.root": data_root} if data_root else {}),
    }
    if not (out / "summary.json").is_file():
        pretrain(default_config(model, over), out, resume=True, progress=False)
    summary = read_json(out / "summary.json", "a run summary")
    return {"model": model, "lr": lr, "warmup": warmup, "steps": steps, **summary}


def choose(trials: list[dict]) -> dict[str, dict]:
    """Each model's trial with the lowest validation loss (ties: the earlier trial of the grid)."""
    best: dict[str, dict] = {}
    for t in trials:
        if t["model"] not in best or t["val_loss"] < best[t["model"]]["val_loss"]:
            best[t["model"]] = t
    return best


def current(model: str) -> tuple[float, float]:
    """The preset's shipped learning rate and warm-up."""
    recipe = get_spec(model).recipe
    return recipe["optim.lr"], recipe.get("optim.warmup_fraction", 0.0)


def markdown(trials: list[dict], best: dict[str, dict], steps: int) -> str:
    rows = []
    for t in trials:
        shipped = (t["lr"], t["warmup"]) == current(t["model"])
        mark = "chosen" if best[t["model"]] is t else ("shipped" if shipped else "")
        rows.append(
            (
                t["model"],
                f"{t['lr']:g}",
                f"{t['warmup']:g}",
                f"{t['val_loss']:.5f}",
                f"{t['psnr_full']:.2f}",
                f"{t['psnr_pasted']:.2f}",
                f"{t['train_images_per_s']:.0f}",
                mark,
            )
        )
    head = ("model", "lr", "warm-up", "val loss", "val PSNR full", "val PSNR pasted", "img/s", "")
    lines = [
        "# Tiny presets' recipes: learning rate x warm-up, searched per model",
        "",
        f"Each trial pretrains for {steps} steps of batch 64 on Fashion-MNIST (seed 0), the `cpu-full` budget, with "
        "the model's own optimiser and schedule. The choice is the lowest loss on the validation split carved from "
        "train (each model's own training objective; PSNR at 75% random masking for reference). 'shipped' marks the "
        "recipe the preset had before the search when it was not chosen.",
        "",
        markdown_table(head, rows),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=843)
    ap.add_argument("--lrs", default=",".join(f"{x:g}" for x in LRS))
    ap.add_argument("--warmups", default=",".join(f"{x:g}" for x in WARMUPS))
    ap.add_argument("--data-root", default=None, help="where Fashion-MNIST is (default: the library's own source)")
    ap.add_argument("--work", default="/tmp/recipes", help="the trials' run folders (they resume)")
    ap.add_argument("--out", default="benchmarks/results/recipes")
    args = ap.parse_args()
    grid = list(itertools.product([float(x) for x in args.lrs.split(",")], [float(x) for x in args.warmups.split(",")]))
    trials = []
    for model in args.models.split(","):
        for lr, warmup in grid:
            trials.append(trial(model, lr, warmup, args.steps, Path(args.work), args.data_root))
            print(f"{model} lr {lr:g} warm-up {warmup:g}: val loss {trials[-1]['val_loss']:.5f}", flush=True)
    best = choose(trials)
    out = Path(args.out)
    write_json(out / "results.json", {"grid": grid, "steps": args.steps, "trials": trials, "chosen": best})
    atomic_write_text(out / "results.md", markdown(trials, best, args.steps))
    print(markdown(trials, best, args.steps))


if __name__ == "__main__":
    main()
