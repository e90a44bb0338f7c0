"""The table helpers every evaluation prints and writes with (on the one console of `minr.progress`).

A cell's words and numbers are never split across lines: on a terminal, columns are at least as wide as their
longest word and wrap only at spaces; a table too wide for that is printed one record at a time (field, value).
When the output is not a terminal (piped, redirected, CI logs), tables are plain Markdown, one row per line.
Markdown tables are GitHub pipes tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from minr.progress import console as default_console


def over_seeds(mean: float | None, std: float, n: int) -> str:
    """'81.20 ± 0.31 (n=3)' over seeds; the mean alone for one seed (never '± 0.00')."""
    return f"{pct(mean)} ± {pct(std)} (n={n})" if n > 1 else pct(mean)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are written with str()."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _longest_word(texts: Sequence[str]) -> int:
    return max((len(word) for text in texts for word in text.split()), default=1)


def _longest_line(texts: Sequence[str]) -> int:
    return max((len(line) for text in texts for line in text.splitlines()), default=1)


def _widths(columns: list[list[str]], width: int) -> list[int] | None:
    """Column widths that fit `width` (borders and padding included) without splitting a word: every column gets
    its longest word, then the columns that need least to show whole lines get it first; None if even the longest
    words do not fit."""
    room = width - (3 * len(columns) + 1)  # a 1-char border before each column and after the last, 1-char padding
    widths = [_longest_word(c) for c in columns]
    natural = [max(lo, _longest_line(c)) for lo, c in zip(widths, columns, strict=True)]
    spare = room - sum(widths)
    if spare < 0:
        return None
    for i in sorted(range(len(columns)), key=lambda i: natural[i] - widths[i]):
        more = min(natural[i] - widths[i], spare)
        widths[i], spare = widths[i] + more, spare - more
    return widths


def rich_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None, width: int | None = None
) -> Table:
    """A rich table for a terminal `width` columns wide (default: the console's) whose cells never split a word or
    number; a table that cannot fit so is laid out vertically, one record (field, value) per section."""
    cells = [[str(c) for c in row] for row in rows]
    columns = [[h, *(row[i] for row in cells)] for i, h in enumerate(headers)]
    widths = _widths(columns, width or default_console.width)
    if widths is None:
        return _vertical(headers, cells, title=title)
    table = Table(title=title, title_justify="left")
    for h, w in zip(headers, widths, strict=True):
        table.add_column(h, width=w, overflow="fold")
    for row in cells:
        table.add_row(*row)
    return table


def _vertical(headers: Sequence[str], cells: list[list[str]], *, title: str | None) -> Table:
    """One section per record: each header beside its value, so a wide table reads on a narrow terminal."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    for row in cells:
        for i, (h, v) in enumerate(zip(headers, row, strict=True)):
            table.add_row(h, v, end_section=i == len(row) - 1)
    return table


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    title: str | None = None,
    console: Console | None = None,
) -> None:
    """On a terminal, a rich table that fits its width; otherwise a Markdown table, written without wrapping."""
    console = console or default_console
    if not console.is_terminal:
        text = (f"{title}\n\n" if title else "") + markdown_table(headers, rows)
        console.out(text, highlight=False)  # a blank line after, so that tables in a row stay apart
        return
    console.print(rich_table(headers, rows, title=title, width=console.width))


def pct(x: float | None, digits: int = 2) -> str:
    """0.8337 -> '83.37'; None -> ''."""
    return "" if x is None else f"{100 * x:.{digits}f}"


def signed_pct(x: float) -> str:
    return f"{100 * x:+.2f}"


def rate(x: float | None) -> str:
    """An images/s figure, '-' when none was measured."""
    return "-" if x is None else f"{x:.0f}"
