"""Rich progress bars: one look for training, extraction and evaluation, on the one console."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# The one console every command prints on. Soft wrap: a long message line (a path) is left whole for the terminal to
# wrap, never cut by rich at its own idea of the width (80 columns when piped). Under `torchrun` only rank 0 prints.
console = Console(soft_wrap=True, quiet=os.environ.get("RANK", "0") != "0")


def make_progress(enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )


class TrainProgress:
    """A bar over optimiser steps showing the loss, the step function's own figures (PSNR) and images/s."""

    def __init__(self, total: int, *, start: int = 0, enabled: bool = True, description: str = "train") -> None:
        self.progress = make_progress(enabled)
        self.task = self.progress.add_task(description, total=total, completed=start, info="")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, *, loss: float, metrics: dict[str, float], ips: float | None) -> None:
        extra = "".join(f" {k} {v:.2f}" for k, v in metrics.items())
        speed = f" {ips:.0f} img/s" if ips else ""
        self.progress.update(self.task, completed=step, info=f"loss {loss:.4f}{extra}{speed}")
