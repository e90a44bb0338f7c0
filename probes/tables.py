"""The table helpers every evaluation prints and writes with (on the one console of `minr.progress`).

Tables on the terminal wrap long names instead of cutting them; Markdown tables are plain GitHub pipes tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from minr.progress import console


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are written with str()."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None) -> Table:
    """A rich table whose columns fold long cells onto several lines rather than cutting them with '…'."""
    table = Table(title=title, title_justify="left")
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    return table


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None) -> None:
    console.print(rich_table(headers, rows, title=title))


def pct(x: float | None, digits: int = 2) -> str:
    """0.8337 -> '83.37'; None -> ''."""
    return "" if x is None else f"{100 * x:.{digits}f}"


def signed_pct(x: float) -> str:
    return f"{100 * x:+.2f}"
