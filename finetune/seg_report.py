"""What a segmentation run writes: results.json / results.md / predictions.npz from the typed results (the main
table with the pixel floor, per-class IoU, the paired comparisons), the printed table, and a PNG of predictions
with column titles (image, ground truth, then each model's prediction). Writers never change the results."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from finetune.report import write_files
from finetune.seg_results import SegResults
from minr.io import atomic_write_bytes
from probes.stats import Paired
from probes.tables import markdown_table, over_seeds, pct, print_table, rate, signed_pct


def main_table(results: SegResults) -> tuple[list[str], list[list[str]]]:
    """One row per model x feature: mIoU (mean ± std over seeds), mAcc, aAcc, the difference to the pixel floor."""
    floor = results.floor
    head = ["model:feature", "mIoU (mean ± std over seeds)", "mAcc", "aAcc", "vs pixels (pts)", "train img/s"]
    rows = [
        [
            e.name + (" (floor)" if e.is_floor else ""),
            over_seeds(e.mean, e.std, len(e.per_seed)),
            pct(e.mAcc),
            pct(e.aAcc),
            "" if floor is None or e.is_floor else signed_pct(e.mean - floor.mean),
            rate(e.train_images_per_s),
        ]
        for e in results.entries
    ]
    return head, rows


def per_class_table(results: SegResults) -> tuple[list[str], list[list[str]]]:
    """IoU per class (rows) and model x feature (columns); "-" where the class is in no image nor prediction."""
    head = ["class", *(e.name for e in results.entries)]
    rows = [
        [c, *(pct(e.per_class_IoU.get(c)) if e.per_class_IoU.get(c) is not None else "-" for e in results.entries)]
        for c in results.classes
    ]
    return head, rows


def _paired_table(paired: list[Paired], a: str, b: str) -> str:
    rows = [
        [p.a, p.b, signed_pct(p.diff), f"[{signed_pct(p.ci_low)}, {signed_pct(p.ci_high)}]", f"{p.p:.3g}"]
        for p in paired
    ]
    return markdown_table([a, b, "diff (pts)", "95% CI", "p"], rows)


def markdown(results: SegResults) -> str:
    regime = results.config.get("regime", "")
    parts = [f"# segmentation ({regime})\n", markdown_table(*main_table(results))]
    parts += ["## IoU per class\n", markdown_table(*per_class_table(results))]
    tests = "per-image IoU; bootstrap 95% CI; Wilcoxon signed-rank"
    if results.paired:
        parts += [f"## Paired MINR - MAE ({tests})\n", _paired_table(results.paired, "MINR", "MAE")]
    if results.vs_floor:
        parts += [f"## Paired encoder - pixel floor ({tests})\n", _paired_table(results.vs_floor, "encoder", "floor")]
    return "\n".join(parts)


def write_results(results: SegResults, out: Path, arrays: dict[str, np.ndarray]) -> None:
    """results.json, results.md and predictions.npz (per-image IoU) into `out`; print the main table."""
    write_files(out, results, markdown(results), arrays)
    print_table(*main_table(results), title=f"segmentation ({results.config.get('regime', '')})")


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (background black), (num_classes, 3) in [0, 1]."""
    rng = np.random.default_rng(0)
    return np.concatenate([[[0, 0, 0]], rng.integers(40, 255, size=(max(num_classes - 1, 1), 3))])[:num_classes] / 255


def colorize(labels: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) colours from the fixed palette; ignored pixels white."""
    colours = palette(num_classes)
    out = colours[np.clip(labels, 0, num_classes - 1)]
    out[labels == ignore_index] = 1.0
    return out


def save_prediction_grid(dataset, predictions: list[tuple[str, list[np.ndarray]]], path: Path, n: int = 6) -> None:
    """One row per validation image; columns titled "image", "ground truth" and each model's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(dataset))
    classes = dataset.metainfo["classes"]
    cols = ["image", "ground truth", *(name for name, _ in predictions)]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n + 0.4), squeeze=False)
    for i in range(n):
        item = dataset[i]
        img = item["inputs"].float().numpy() / 255
        img = np.repeat(img, 3, 0) if img.shape[0] == 1 else img[::-1]  # gray -> RGB, BGR -> RGB
        tiles = [img.transpose(1, 2, 0), colorize(item["data_samples"].gt_sem_seg.data[0].numpy(), len(classes))]
        tiles += [colorize(preds[i], len(classes)) for _, preds in predictions]
        for j, tile in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
