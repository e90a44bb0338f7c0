"""Side-by-side summaries of pretraining runs (what `minrctl compare` prints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minr.errors import MinrError

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
        rows.append(json.loads(path.read_text()))
    return rows


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
