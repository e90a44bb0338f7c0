"""`minrctl`: pretrain -> extract -> evaluate. Each command builds a config and calls one library function."""

from __future__ import annotations

import sys

from cli import bench, evaluate, pretrain  # noqa: F401  (register their commands on the group)
from cli.app import main

__all__ = ["main"]


def run() -> None:  # pragma: no cover - `python -m cli.main`, as torchrun starts it
    main(prog_name="minrctl")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
