"""Tables that fit the terminal without cutting a number.

Rich shrinks a table that is wider than the console by narrowing its columns, and a cell
narrower than its text ends in "…": ``-5.2961`` printed as ``-5…``. A number must never be cut
nor split across lines, so before printing, every table is measured. Right-aligned columns hold
numbers (an entropy, a standard error, ``1.9050 to 1.9285``): they never wrap, so a table's
narrowest layout is those columns at full width and every other column as wide as its longest
word. The first of these layouts that fits is printed:

    1. the table as built;
    2. compact: no outer border, one space of padding between columns;
    3. compact with the short headers of its ``Narrowing`` (``SE`` for ``Std. error``) and a
       legend for them under the table;
    4. ... then without its optional columns, one at a time (the legend says where they are);
    5. *stacked*: one block per row, one line per column, ``header  value``.

Text columns wrap at spaces (``overflow="fold"``, never an ellipsis). Groups (a sweep's table,
bars and verdict) are fitted part by part.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["Narrowing", "fit_to_width", "narrowing", "stacked"]


UNBOUNDED = 100_000
"""A width no table reaches: measured at it, a table's minimum is its columns' longest words
(measured at the console's own width, Rich caps the minimum at that width)."""


@dataclass(frozen=True)
class Narrowing:
    """How a table narrows before it is stacked: shorter headers (header -> short), columns it
    can do without (headers, dropped first to last), and the legend printed under the narrowed
    table (what the short headers stand for, where the dropped columns' values are)."""

    short: dict[str, str]
    optional: Sequence[str] = ()
    legend: str = ""
    dropped_caption: str | None = None
    """The caption once an optional column is dropped (None: the caption with the legend)."""


def narrowing(table: Table, how: Narrowing) -> Table:
    """``table`` with ``how`` attached (``fit_to_width`` reads it)."""
    table.narrowing = how  # type: ignore[attr-defined]
    return table


def _numbers_whole(table: Table) -> Table:
    for column in table.columns:
        if column.justify == "right":
            column.no_wrap = True  # a number column: never wrapped, so never split
    return table


def _ranges(console: Console, table: Table) -> list[tuple[int, int, int]]:
    """Per column: (narrowest, widest, padding), the first two with padding; a no-wrap column's
    narrowest is its widest."""
    options = console.options.update_width(UNBOUNDED)
    ranges = []
    for index, column in enumerate(table.columns):
        column._index = index  # after columns were dropped: padding and edges follow the position
        measured = table._measure_column(console, options, column)
        ranges.append((measured.maximum if column.no_wrap else measured.minimum, measured.maximum,
                       table._get_padding_width(index)))
    return ranges


def minimum_width(console: Console, table: Table) -> int:
    """The narrowest the table can be printed: its no-wrap columns at full width, the others
    as wide as their longest word (padding and borders included)."""
    return sum(low for low, _, _ in _ranges(console, table)) + table._extra_width


def _natural_width(console: Console, table: Table) -> int:
    """The table's width with no cell wrapped."""
    return sum(high for _, high, _ in _ranges(console, table)) + table._extra_width


def _set_widths(console: Console, table: Table, width: int) -> Table:
    """Fix every column's width for ``width`` columns in all: each at least its narrowest, the
    room left shared by the wrapping columns up to their widest (Rich's own shrinking may take
    a column below its longest word, and then cuts it)."""
    ranges = _ranges(console, table)
    widths = [high for _, high, _ in ranges]
    excess = sum(widths) + table._extra_width - width
    while excess > 0:  # narrow the column with the most room to give, one character at a time
        slack, index = max((widths[index] - low, index) for index, (low, _, _) in enumerate(ranges))
        if slack <= 0:
            break
        widths[index] -= 1
        excess -= 1
    for column, size, (_, _, padding) in zip(table.columns, widths, ranges):
        column.width = max(1, size - padding)
    return table


def _fits(console: Console, renderable: Any, width: int) -> bool:
    if isinstance(renderable, Table):
        return minimum_width(console, renderable) <= width
    return Measurement.get(console, console.options.update_width(UNBOUNDED), renderable).minimum <= width


def _compact(table: Table) -> Table:
    narrow = copy.copy(table)
    narrow.columns = [copy.copy(column) for column in table.columns]
    narrow.show_edge, narrow.pad_edge, narrow.collapse_padding = False, False, True
    narrow.caption_justify = "left"
    if narrow.box is not None and narrow.box is not box.SIMPLE_HEAD:
        narrow.box = box.SIMPLE_HEAD
    return narrow


def _with_legend(caption: Any, legend: str) -> Any:
    if not legend:
        return caption
    return f"{caption} {legend}" if isinstance(caption, str) and caption else legend


def _narrower(table: Table) -> list[Table]:
    """The layouts to try after the table itself, widest first (steps 2-4 of the module docstring)."""
    layouts = [_compact(table)]
    how: Narrowing | None = getattr(table, "narrowing", None)
    if how is None:
        return layouts
    short = _compact(table)
    for column in short.columns:
        column.header = how.short.get(str(column.header), column.header)
    short.caption = _with_legend(short.caption, how.legend)
    layouts.append(short)
    current = short
    for header in how.optional:
        current = _compact(current)
        current.columns = [column for column in current.columns if str(column.header) != how.short.get(header, header)]
        if how.dropped_caption is not None:
            current.caption = how.dropped_caption
        layouts.append(current)
    return layouts


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
    if not table.show_header and len(columns) == 2:  # a field table: "name: value", wrapped as a paragraph
        parts += [Text.assemble(_plain(name, "bold"), ": ", _plain(value)) for name, value in zip(*cells)]
        if table.caption:
            parts.append(_plain(table.caption, "dim"))
        return Group(*parts)
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
    _numbers_whole(renderable)
    layouts = [renderable, *_narrower(renderable)]
    unwrapped = next((layout for layout in layouts[:3] if _natural_width(console, layout) <= width), None)
    for layout in ([unwrapped] if unwrapped is not None else []) + layouts:
        if _fits(console, layout, width):
            return _set_widths(console, _folding(layout), width)
    two_columns = stacked(renderable)
    if renderable.show_header and _fits(console, two_columns, width):
        return two_columns
    return stacked(renderable, single_column=True)  # a field table (no header), or too narrow for two columns
