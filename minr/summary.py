"""Side-by-side summaries of pretraining runs (what `minrctl compare` prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minr.errors import MinrError
from minr.io import read_json

COLUMNS = [
    ("model", "model"),
    ("steps", "steps"),
    ("psnr_full", "PSNR full"),
    ("psnr_pasted", "PSNR pasted"),
    ("psnr_masked", "PSNR masked"),
    ("val_loss", "val loss"),
    ("train_images_per_s", "train img/s"),
    ("peak_memory_mb", "peak MiB"),
]


def load_summaries(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    rows = []
    for d in run_dirs:
        path = Path(d) / "summary.json"
        if not path.is_file():
            raise MinrError(f"{path} does not exist; is {d} a finished `minrctl pretrain` run directory?")
        rows.append(read_json(path, "a finished `minrctl pretrain` run's summary"))
    return rows


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return "" if value is None else str(value)
