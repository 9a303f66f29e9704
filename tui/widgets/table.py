"""Bulk updates of a Textual DataTable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

__all__ = ["set_cells"]


def set_cells(table: DataTable[Any], cells: Iterable[tuple[str, ColumnKey, Any]]) -> int:
    """Put each ``(row key, column key, value)`` into ``table``, then refresh it once; returns
    how many cells were set.

    ``DataTable.update_cell`` refreshes the table for every cell, and each refresh walks
    Textual's dirty-region bookkeeping: a poll of 5,000 VMs changes ~9,000 cells (CPU, memory,
    uptime of each), which took ~0.7 s that way. The table's data and its update counter (which
    keys its render caches) are private to DataTable: the Textual version is pinned (pyproject's
    dev extras) and tests/test_tui_output.py checks what this relies on. Widths are not
    recomputed: a cell that may widen its column goes through ``update_cell(update_width=True)``.

    Raises:
        KeyError: a row that is not in the table.
    """
    data: dict[Any, dict[ColumnKey, Any]] = table._data
    count = 0
    for row, column, value in cells:
        data[row][column] = value  # a RowKey is equal to (and hashes as) its str: no key object per cell
        count += 1
    if count:
        table._update_count += 1  # the render caches are keyed by it: every row is drawn afresh
        table.refresh()
    return count
