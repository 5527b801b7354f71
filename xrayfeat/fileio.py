"""The one way xrayfeat writes a file, and the one way it digests one.

:func:`atomic_path` yields a temporary path beside the target (a unique name, so
two processes writing the same file never share a temporary); when the block
ends the file is fsync-ed, renamed over the target and the folder fsync-ed. A
reader sees the old file or the new one, never half of one; a writer killed in
the block leaves only a ``.<name>.<random>.tmp[suffix]`` file that ``cache gc`` removes. When
two processes write the same target at once, the last rename wins and the file
is always one of the two complete versions.

:func:`atomic_write` and :func:`write_json` are the common cases;
:func:`file_digest` hashes a file with :func:`hashlib.file_digest`.

:func:`csv_text` is the one way xrayfeat writes CSV: every cell goes through
:func:`csv_cell`, which neutralises what a spreadsheet would run as a formula
(a name such as ``=HYPERLINK(...)``, ``@SUM(1)`` or ``-2+3.png``), headers
included, as OWASP advises for CSV injection; :func:`csv_value` undoes it, so
xrayfeat reading its own CSVs gets the names back exactly.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import numbers
import os
import re
import uuid
from pathlib import Path
from typing import Iterator

TEMP_GLOB = ".*.tmp*"  # what a killed writer leaves behind (see atomic_path)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a unique temporary path beside ``target``; on success it replaces ``target`` atomically.

    ``suffix`` ends the temporary name, for writers that insist on an extension
    (``numpy.savez`` appends ``.npz`` to any other name). On an exception the
    temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    # O_EXCL: never share a temporary; mode 0o666 less the umask, as open() gives (mkstemp would give 0600)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write(target: str | os.PathLike, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(target: str | os.PathLike, data) -> None:
    """Pretty JSON (numpy scalars and arrays and paths allowed), written atomically."""
    atomic_write(target, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, without importing numpy here
    if callable(tolist):
        return tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``hashlib.file_digest``: large buffers, the GIL released)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


# A spreadsheet runs a cell as a formula when it starts with one of these (OWASP, "CSV Injection"); tab, CR and LF
# also count, and so do the first characters after leading blanks, which some spreadsheets drop.
_FORMULA_START = ("=", "+", "-", "@")
_BLANKS = " \t\r\n"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")  # -0.5, 1e-05: a number, never a formula


def csv_cell(value) -> str:
    """``value`` as a CSV cell that a spreadsheet shows as text and never runs as a formula.

    Numbers (``int``, ``float``, numpy scalars) and plain decimal strings such as
    ``-0.25`` stay numbers. Any other string that starts with ``=``, ``+``,
    ``-``, ``@``, a tab, CR or LF (after leading blanks, too) gets a leading
    ``'``, as OWASP recommends: ``=HYPERLINK(...)`` is written ``'=HYPERLINK(...)``,
    ``-2+3.png`` is written ``'-2+3.png``. A string that already starts with ``'``
    gets one more, so :func:`csv_value` restores every string exactly. ``None``
    is the empty cell.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        return str(value)
    if value.startswith("'") or _runs_as_formula(value):
        return "'" + value
    return value


def _runs_as_formula(text: str) -> bool:
    if text[:1] in ("\t", "\r", "\n"):
        return True
    head = text.lstrip(_BLANKS)
    return head[:1] in _FORMULA_START and not _NUMBER.fullmatch(head.rstrip(_BLANKS))


def csv_value(cell: str) -> str:
    """The string :func:`csv_cell` was given for ``cell``: its added ``'`` removed, anything else as it is.

    Only a quote :func:`csv_cell` would have added is removed, so a hand-written
    CSV whose cell is ``'quoted'`` reads as written.
    """
    if cell.startswith("'") and csv_cell(cell[1:]) == cell:
        return cell[1:]
    return cell


def csv_text(rows, *, float_format: str | None = None, lineterminator: str = "\r\n") -> str:
    """Rows (the header first) as CSV text, every cell through :func:`csv_cell`.

    ``float_format`` (e.g. ``".6g"``) formats the float cells (Python and numpy
    floats; NaN is the empty cell); without it a float is written as ``str`` does.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=lineterminator)
    for row in rows:
        writer.writerow([_formatted(value, float_format) for value in row])
    return out.getvalue()


def _formatted(value, float_format: str | None) -> str:
    if float_format and isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        return "" if math.isnan(value) else format(value, float_format)
    return csv_cell(value)


def csv_rows(text: str) -> list[list[str]]:
    """CSV text (as :func:`csv_text` writes it) as rows of strings, every cell through :func:`csv_value`."""
    return [[csv_value(cell) for cell in row] for row in csv.reader(io.StringIO(text))]
