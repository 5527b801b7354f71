"""A CSV table read column by column by pyarrow's compiled reader, for discovering a large manifest.

Discovery reads a manifest row by row with Python's :mod:`csv` (see
:mod:`xrayfeat.data.datasets`), which spends a few microseconds of Python per
cell; a CheXpert manifest holds 4.7 million cells. Where pyarrow is installed
(the ``parquet`` extra), :func:`read_columns` reads the table in C instead, and
the helpers here turn a column into per-row Python values by its distinct
cells, so that a column of 224k rows with a few hundred distinct values costs
a few hundred Python calls.

pyarrow is optional: without it, or wherever its reading could differ from
``csv.reader``'s, :func:`read_columns` answers None and discovery reads the rows
in Python as before. Both give the same dataset (``tests/test_datasets.py``
compares them).
"""

from __future__ import annotations

import csv
import os
from typing import Callable, Sequence

import numpy as np

__all__ = ["CsvColumns", "read_columns", "distinct", "per_row", "combine"]

_PACKED = 1 << 62  # combined codes stay below this (int64)


class CsvColumns:
    """A CSV's cells as pyarrow string arrays: ``header`` (row 0, as written) and ``column(i)`` (the other rows)."""

    def __init__(self, header: list[str], columns: list, rows: int):
        self.header = header
        self.rows = rows
        self._columns = columns

    def column(self, index: int):
        """The cells of column ``index`` below the header, a pyarrow ChunkedArray of strings."""
        return self._columns[index]


def _arrow():
    """pyarrow's array and CSV modules, or None where pyarrow is not installed."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv
    except ImportError:
        return None
    return pyarrow, pyarrow.csv, pyarrow.compute


def read_columns(path: str, header: Sequence[str]) -> CsvColumns | None:
    """The CSV at ``path`` read by pyarrow, every cell as text, or None where that could differ from ``csv.reader``.

    ``header`` is the first row as ``csv.reader`` reads it (``utf-8-sig``):
    pyarrow's first row must be the same. The rows below it are those
    ``csv.reader`` gives, but for empty lines, which pyarrow leaves out and
    discovery skips anyway (only an error's line number would count them, and
    discovery reads a table with any problem again in Python). None, and the
    caller reads the rows in Python, when pyarrow is not installed; when it
    refuses the file (not UTF-8, rows of different lengths, an unclosed
    quote); and when a cell is longer than ``csv.field_size_limit()``, which
    ``csv.reader`` refuses.
    """
    modules = _arrow()
    if modules is None or not header:
        return None
    pa, pacsv, pc = modules
    width = len(header)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(autogenerate_column_names=True),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),  # a quoted cell may hold a line break
            convert_options=pacsv.ConvertOptions(column_types={f"f{i}": pa.string() for i in range(width)},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowException, OSError, ValueError):
        return None
    if table.num_columns != width or table.num_rows == 0:
        return None
    columns = [table.column(i) for i in range(width)]
    if [column[0].as_py() for column in columns] != list(header):
        return None
    if os.path.getsize(path) >= csv.field_size_limit():  # a cell this long is csv.reader's error: let it say so
        if any((pc.max(pc.binary_length(column)).as_py() or 0) >= csv.field_size_limit() for column in columns):
            return None
    return CsvColumns(list(header), [column.slice(1) for column in columns], table.num_rows - 1)


def distinct(column) -> tuple[list[str], np.ndarray]:
    """A string column's distinct cells and, per row, the index of its cell among them (int64)."""
    pc = _arrow()[2]
    cells = pc.unique(column)
    codes = pc.index_in(column, value_set=cells).chunks  # int32, none missing: every cell is among the cells
    return cells.to_pylist(), np.concatenate([_int32s(chunk) for chunk in codes] + [np.zeros(0, np.int32)]).astype(np.int64)


def _int32s(chunk) -> np.ndarray:
    """An int32 pyarrow array without nulls as numpy, from its buffer (pyarrow's ``to_numpy`` imports pandas: 0.5 s)."""
    if chunk.null_count:
        raise ValueError("a code is missing")
    return np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk)]


def per_row(column, value: Callable[[str], object]) -> tuple[list, list, np.ndarray]:
    """``value`` of each row's cell, computed once per distinct cell: (per row, per distinct cell, codes).

    Rows with the same cell share one object (one string per patient id,
    not one per image).
    """
    cells, codes = distinct(column)
    values = [value(cell) for cell in cells]
    return list(map(values.__getitem__, codes.tolist())), values, codes


def combine(codes: Sequence[np.ndarray], sizes: Sequence[int], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows that hold the same combination of codes, one per column: (a row of each combination, each row's combination).

    ``codes[j]`` are column ``j``'s codes below ``sizes[j]``. Returns the index
    of one row holding each distinct combination, and for each row the index
    of its combination among them.
    """
    key = np.zeros(rows, dtype=np.int64)
    span = 1
    for column, size in zip(codes, sizes):
        size = max(int(size), 1)
        if span * size >= _PACKED:  # renumber the combinations so far densely before packing more columns
            _, key = np.unique(key, return_inverse=True)
            key = key.astype(np.int64).reshape(-1)
            span = int(key.max()) + 1 if rows else 1
        key = key * size + column
        span *= size
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)
