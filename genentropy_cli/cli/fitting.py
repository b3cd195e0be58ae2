"""Tables that fit the terminal without cutting a number.

Rich shrinks a table that is wider than the console by narrowing its columns, and a cell
narrower than its text ends in "…": ``-5.2961`` printed as ``-5…``. A number must never be cut,
so before printing, every table is measured: where its narrowest layout (each column as wide as
its longest word) fits, it is printed with cells that wrap (``overflow="fold"``, never an
ellipsis); where it does not, it is *stacked*: one block per row, one line per column,
``header  value``. Groups (a sweep's table, bars and verdict) are fitted part by part.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["fit_to_width", "stacked"]


UNBOUNDED = 100_000
"""A width no table reaches: measured at it, a table's minimum is its columns' longest words
(measured at the console's own width, Rich caps the minimum at that width)."""


def _fits(console: Console, renderable: Any, width: int) -> bool:
    return Measurement.get(console, console.options.update_width(UNBOUNDED), renderable).minimum <= width


def _folding(table: Table) -> Table:
    for column in table.columns:
        column.overflow = "fold"
    return table


def _block(rows: list[tuple[Text, Any]], single_column: bool) -> Table:
    """One row of a stacked table, under its heading: ``header  value`` lines (``header: value``)."""
    block = Table(show_header=False, box=None, padding=(0, 1, 0, 2))
    block.add_column(overflow="fold")
    if not single_column:
        block.add_column(overflow="fold")
    for header, value in rows:
        if single_column:
            label = Text.assemble(header, ": ") if header.plain else Text("")
            block.add_row(Text.assemble(label, _plain(value)))
        else:
            block.add_row(header, value)
    return block


def stacked(table: Table, single_column: bool = False) -> Group:
    """The table's rows one below the other: each row a block headed by its first cell, then
    ``header  value`` for every other column (``single_column``: ``header: value`` on one line),
    between the table's title and caption."""
    columns = table.columns
    cells = [list(column.cells) for column in columns]
    parts: list[Any] = []
    if table.title:
        parts.append(_plain(table.title, "italic"))
    for row in range(table.row_count):
        first_header = _plain(columns[0].header)
        heading = Text.assemble(*((first_header, " ") if first_header.plain else ()), _plain(cells[0][row]),
                                style="bold")
        rows = [(_plain(columns[index].header), cells[index][row]) for index in range(1, len(columns))]
        parts += [heading, _block(rows, single_column)]
    if table.caption:
        parts.append(_plain(table.caption, "dim"))
    return Group(*parts)


def _plain(value: Any, style: str = "") -> Text:
    if isinstance(value, Text):
        return value
    return Text.from_markup(value, style=style) if isinstance(value, str) else Text(str(value), style=style)


def fit_to_width(renderable: Any, console: Console, width: int) -> Any:
    """``renderable`` as it should be printed ``width`` columns wide (see the module docstring)."""
    if isinstance(renderable, Group):
        return Group(*(fit_to_width(part, console, width) for part in renderable.renderables))
    if not isinstance(renderable, Table):
        return renderable
    if _fits(console, renderable, width):
        return _folding(renderable)
    two_columns = stacked(renderable)
    if renderable.show_header and _fits(console, two_columns, width):
        return two_columns
    return stacked(renderable, single_column=True)  # a field table (no header), or too narrow for two columns
