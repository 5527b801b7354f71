"""What every converter shares: reading an official table, the manifest's cells and groups, splits, records.

A converter (one module per dataset) reads its dataset's own tables with
:func:`read_table`, which refuses a header without the expected columns, and
turns each table row into a :class:`Row`: the image's path relative to the
dataset's root, its patient, split, finding cells or class, and its groups.
It checks that each image exists (a folder listed once with :func:`listing`
or :func:`image_index`, else one ``stat`` per image) and returns a
:class:`Conversion`; :func:`~xrayfeat.data.converters.convert.convert_manifest`
writes it. No converter opens an image.

Every refusal is one line naming the table (and the line, the column and the
value when one cell is at fault) and the fix: a table is the dataset's own,
so an unexpected value means a different table, a damaged download or a
format this converter does not know, never something to guess about.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from xrayfeat.data.labels import age_band
from xrayfeat.errors import DatasetError, caller, one_line
from xrayfeat.options.constraints import Choice, Interval, Is, option

__all__ = ["FINDING_CELLS", "PATIENT_SPLIT", "VALID_AS", "Conversion", "ConvertOptions",
           "OfficialTable", "PatientSplit", "Row", "age_group", "cell", "find_table", "flag", "image_index",
           "listing", "patient_split", "read_lines", "read_table", "refuse_value", "require_table", "sex_group",
           "view_group"]

#: A finding cell of CheXpert's and MIMIC-CXR's tables, and what the manifest writes for it.
FINDING_CELLS = {"1.0": "1", "1": "1", "0.0": "0", "0": "0", "-1.0": "-1", "-1": "-1", "": ""}
#: Where CheXpert's validation images go: the test split (what studies evaluate on) or the validation split.
VALID_AS = ("test", "val")
#: The patient-grouped split when a dataset has no official one: (split, share of patients).
PATIENT_SPLIT = (("train", 0.7), ("val", 0.1), ("test", 0.2))


@dataclass(frozen=True)
class ConvertOptions:
    """The filters and options of a conversion; each dataset takes some of them (its registry entry says which)."""

    frontal_only: bool = option(False, check=Is((bool,)),
                                help="Keep frontal images only (CheXpert: Frontal/Lateral is Frontal; MIMIC-CXR: "
                                     "ViewPosition PA or AP).")
    valid_as: str = option("test", check=Choice(VALID_AS),
                           help="CheXpert: the split of valid.csv's images, test (what studies evaluate on; the "
                                "test set is not public) or val.")
    patients: str | os.PathLike | None = option(None, check=Is((str, os.PathLike)), none=True,
                                                help="MIMIC-CXR: MIMIC-IV's patients.csv(.gz), for group:sex and "
                                                     "group:age (without it they are empty).")
    seed: int = option(0, check=Interval(0, None, integer=True),
                       help="Seed of the patient-grouped 70/10/20 split of a dataset without an official split "
                            "(NIH without its split lists, RSNA).")


def flag(name: str) -> str:
    """How the caller names option ``name``: ``--frontal-only`` on the command line, ``frontal_only=`` from Python."""
    return "--" + name.replace("_", "-") if caller() == "cli" else f"{name}="


class Row(NamedTuple):
    """One image of the manifest, before its path is made relative to the manifest's folder.

    ``path`` is relative to the dataset's root, POSIX; ``cells`` are the
    finding cells as the manifest writes them (``"1"``, ``"0"``, ``"-1"``,
    ``""``), or the one class of a single-label dataset; ``where`` is the
    table and line it came from, for a refusal to name.
    """

    path: str
    patient_id: str
    split: str
    cells: tuple[str, ...]
    sex: str
    age: str
    view: str
    source: str
    where: tuple[str, int]


@dataclass
class Conversion:
    """What a converter read and found: the tables, the rows whose image exists, and those it left out.

    ``findings`` names the finding columns (None: a single-label dataset, one
    ``label`` column); ``missing`` lists the images the tables name that do not
    exist, as the tables name them; ``filtered`` counts rows a filter left out
    (``--frontal-only``); ``split_rule`` says where the splits come from;
    ``counts`` holds counts particular to the dataset (RSNA's detailed classes);
    ``groups`` says whether the manifest has the group columns (False
    where the tables say nothing of sex, age and view).
    """

    tables: list[Path]
    findings: tuple[str, ...] | None
    split_rule: str
    groups: bool = True
    rows: list[Row] = field(default_factory=list)
    table_rows: int = 0
    missing: list[str] = field(default_factory=list)
    filtered: int = 0
    counts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class OfficialTable:
    """An official table, its header checked; :meth:`lines` streams its rows (10^5 rows are never all held).

    ``shown`` is how refusals name it (the path as the user's ROOT makes it).
    """

    def __init__(self, path: Path, shown: str, header: list[str], columns: dict[str, int]):
        self.path = path
        self.shown = shown
        self.header = header
        self.columns = columns

    def index(self, name: str) -> int:
        """The position of column ``name`` (one :func:`read_table` was asked to require)."""
        return self.columns[name]

    def lines(self) -> Iterator[tuple[int, list[str]]]:
        """(line number, cells) of every row that is not blank; line 1 is the header."""
        with _reading(self.shown), _open_text(self.path) as handle:
            rows = csv.reader(handle)
            next(rows, None)
            for row in rows:
                if row and any(row):
                    yield rows.line_num, row


def cell(row: list[str], index: int) -> str:
    """A row's cell, stripped ('' where the row is short)."""
    return row[index].strip() if index < len(row) else ""


def find_table(root: Path, shown_root: str, names: tuple[str, ...]) -> tuple[Path, str] | None:
    """The first of ``names`` (each also as ``NAME.gz``) in ``root``: (path, shown), or None."""
    for name in names:
        for candidate in (name, name + ".gz"):
            path = root / candidate
            if path.is_file():
                return path, os.path.join(shown_root, candidate)
    return None


def require_table(root: Path, shown_root: str, names: tuple[str, ...], what: str) -> tuple[Path, str]:
    """:func:`find_table`, or a one-line refusal naming the tables looked for and where."""
    found = find_table(root, shown_root, names)
    if found is None:
        listed = " or ".join(f"{name}(.gz)" if name.endswith(".csv") else name for name in names)
        raise DatasetError(one_line(
            f"{shown_root}: no {listed} here ({what}); pass the folder that holds the dataset's official tables"))
    return found


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


@contextlib.contextmanager
def _reading(shown: str):
    """A table that cannot be read or decoded, as one line naming it."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise DatasetError(one_line(f"{shown}: not UTF-8 text; pass the dataset's own file")) from error
    except (OSError, EOFError, csv.Error, gzip.BadGzipFile, zlib.error) as error:
        raise DatasetError(one_line(f"{shown}: cannot read it ({error}); download it again")) from error


def read_table(path: Path, shown: str, required: tuple[str, ...], *, official: str) -> OfficialTable:
    """Open a CSV table (``.csv`` or ``.csv.gz``) and check that its header has every ``required`` column.

    Column names are compared exactly (case and spaces), after stripping each
    cell; trailing empty header cells (a trailing comma, as NIH's 2017 table
    has) are dropped. ``official`` is the header as the dataset publishes it,
    quoted by the refusal. The rows are read by :meth:`OfficialTable.lines`.
    """
    with _reading(shown), _open_text(path) as handle:
        first = next(csv.reader(handle), [])
    header = [name.strip() for name in first]
    while header and not header[-1]:
        header.pop()
    missing = [name for name in required if name not in header]
    if missing:
        raise DatasetError(one_line(
            f"{shown}: the header lacks column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(found: {','.join(header) or 'nothing'}); this is not the official table, whose header is "
            f"{official}; pass the dataset's own file"))
    return OfficialTable(path, shown, header, {name: header.index(name) for name in required})


def read_lines(path: Path, shown: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line of a text file (NIH's split lists, COVIDx's tables)."""
    with _reading(shown), _open_text(path) as handle:
        return [(number, text.strip()) for number, text in enumerate(handle, start=1) if text.strip()]


def refuse_value(shown: str, line: int, column: str, value: str, allowed: str) -> DatasetError:
    """The one-line refusal of a cell the dataset's format does not allow (to raise)."""
    return DatasetError(one_line(
        f"{shown}: line {line}: column {column!r} holds {value!r}, which this dataset's format does not use "
        f"(allowed: {allowed}); pass the dataset's own table, or fix the cell"))


def listing(folder: Path) -> set[str]:
    """The names of the files in ``folder`` (one listing, no ``stat`` per file); empty when it is not a folder."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if not entry.is_dir()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def image_index(root: Path, folders: list[str]) -> dict[str, str]:
    """File name -> its path relative to ``root``, over ``folders`` (relative, POSIX), each listed once.

    A name found in two folders keeps the first folder's file.
    """
    index: dict[str, str] = {}
    for folder in folders:
        for name in sorted(listing(root / folder)):
            index.setdefault(name, f"{folder}/{name}")
    return index


_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([YyMmDd]?)")
_AGE_UNIT = {"": 1.0, "y": 1.0, "m": 12.0, "d": 365.25}


def age_group(text: str) -> str:
    """The ``group:age`` cell of an age as the tables write it (``58``, ``58.0``, ``058Y``, ``007M``, ``012D``).

    Bands of 20 years, lower bound inclusive (``20`` is ``20-40``, ``80`` and
    more ``80+``); '' for a blank cell. Raises ValueError for anything else.
    """
    text = text.strip()
    if not text:
        return ""
    match = _AGE.fullmatch(text)
    if match is None:
        raise ValueError(text)
    years = float(match.group(1)) / _AGE_UNIT[match.group(2).lower()]
    return age_band(years)


_SEXES = {"f": "F", "female": "F", "m": "M", "male": "M"}


def sex_group(text: str) -> str:
    """``F`` or ``M`` from the tables' F/M/Female/Male (any case); '' for Unknown, blank or anything else."""
    return _SEXES.get(text.strip().lower(), "")


def view_group(text: str) -> str:
    """A view as the table gives it, PA and AP upper-cased (``pa`` -> ``PA``); '' when blank."""
    text = text.strip()
    return text.upper() if text.upper() in ("PA", "AP") else text


class PatientSplit:
    """The patient-grouped split: each patient's images in one split, by a seeded hash of the patient id.

    70/10/20 (:data:`PATIENT_SPLIT`) of patients, deterministic: the same id and
    seed give the same split on every machine, whatever the table's order.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._known: dict[str, str] = {}

    def __call__(self, patient_id: str) -> str:
        split = self._known.get(patient_id)
        if split is None:
            digest = hashlib.sha256(f"{self.seed}\0{patient_id}".encode("utf-8", "surrogateescape")).digest()
            u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
            total = 0.0
            split = PATIENT_SPLIT[-1][0]
            for name, share in PATIENT_SPLIT:
                total += share
                if u < total:
                    split = name
                    break
            self._known[patient_id] = split
        return split

    def rule(self) -> str:
        shares = "/".join(f"{round(share * 100)}" for _, share in PATIENT_SPLIT)
        return f"patient-grouped {shares} train/val/test by a hash of the patient id, seed {self.seed}"


def patient_split(seed: int) -> PatientSplit:
    """The patient-grouped split function of ``seed`` (see :class:`PatientSplit`)."""
    return PatientSplit(seed)
