"""What a manifest's label columns mean: one label, several findings, and patient groups.

A manifest (see :mod:`xrayfeat.data.datasets`) states its task by its columns:

``label``
    one class per image: a single-label task (binary or multiclass), as always.
``labels``
    findings separated by ``|`` (``Cardiomegaly|Effusion``, NIH's way): a
    multi-label task whose findings are every name the column uses; an image
    is positive (1) for the names in its cell and negative (0) for the others.
finding columns
    neither of those: every column that is not ``path``, ``split``,
    ``patient_id``, ``source`` or a ``group:*`` column is a finding, one column
    per finding (CheXpert's and MIMIC-CXR's way). Its cells hold ``1`` (positive),
    ``0`` (negative), ``-1`` (uncertain, as the CheXpert labeller writes it) or
    nothing (the report does not mention it); ``1.0``, ``0.0`` and ``-1.0`` read
    the same. Any other value is refused in one line, since a column of notes
    taken for a finding would change the task silently.

``group:NAME`` columns (``group:sex``, ``group:age``, ``group:view``) put each
image in a patient group for the subgroup metrics; an empty cell means unknown.

Finding values are kept as the table gives them (1, 0, -1, NaN for blank) in
:attr:`~xrayfeat.data.datasets.Item.findings`. What training and scoring make
of uncertain and blank entries is :func:`targets` (the policies of Irvin et al.
2019: ``ignore`` masks uncertain entries out of the loss and the metrics,
``zeros`` and ``ones`` read them as negative or positive). A blank entry is
always masked, as torchxrayvision does: the report did not say.
"""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np

from xrayfeat.errors import DatasetError, one_line

__all__ = ["AGE_BANDS", "age_band", "GROUP_COLUMNS", "FINDING_VALUES", "GROUP_PREFIX", "RESERVED_COLUMNS", "UNCERTAIN", "finding_value", "finding_values", "is_group_column",
           "label_columns", "positive_names", "split_labels", "targets"]

RESERVED_COLUMNS = ("path", "label", "labels", "split", "patient_id", "source")
"""Manifest columns that are never findings."""

GROUP_PREFIX = "group:"
"""A column named ``group:NAME`` puts each image in a group of ``NAME`` for the subgroup metrics."""

UNCERTAIN = -1.0
"""The value of an uncertain finding (CheXpert's labeller writes ``-1``)."""

FINDING_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": UNCERTAIN, "-1.0": UNCERTAIN, "": math.nan}
"""What a finding column's cell may hold, and the value it stands for (blank: not mentioned)."""

LABELS_SEPARATOR = "|"

#: The group columns of a manifest that knows its patients' sex, age and view (converters and phantoms write them).
GROUP_COLUMNS = ("group:sex", "group:age", "group:view")

AGE_BANDS = ("0-20", "20-40", "40-60", "60-80", "80+")
"""The age bands of ``group:age``: those of the CheXclusion audit (Seyyed-Kalantari et al. 2021), lower bound inclusive."""


def age_band(years: float) -> str:
    """The :data:`AGE_BANDS` band of an age in years (``20`` is ``20-40``; ``80`` and above ``80+``)."""
    if years < 0:
        raise ValueError(f"an age is at least 0 years; got {years}")
    return AGE_BANDS[min(int(years // 20), len(AGE_BANDS) - 1)]


def is_group_column(name: str) -> bool:
    """Whether a manifest column is a ``group:NAME`` column (one without a name is refused at discovery)."""
    return name.lower().startswith(GROUP_PREFIX)


def label_columns(header: list[str]) -> tuple[str, list[int]]:
    """How a manifest's header states its task: ("label" | "labels" | "findings", indices of finding columns).

    ``header`` is the header as written (case kept: a finding's name is its
    column's name). Finding columns are only looked for when there is neither
    a ``label`` nor a ``labels`` column, so a single-label manifest with extra
    columns (notes, ages) reads as it always has.
    """
    lowered = [name.strip().lower() for name in header]
    if "label" in lowered:
        return "label", []
    if "labels" in lowered:
        return "labels", []
    findings = [i for i, name in enumerate(lowered)
                if name and name not in RESERVED_COLUMNS and not is_group_column(name)]
    return "findings", findings


def finding_value(cell: str, *, where: str, column: str) -> float:
    """The value of one finding cell (1, 0, -1 or NaN), or a one-line refusal naming where it is."""
    value = FINDING_VALUES.get(cell.strip())
    if value is None:
        raise DatasetError(one_line(
            f"{where}: column {column!r} holds {cell.strip()!r}; a finding column holds 1 (positive), 0 (negative), "
            f"-1 (uncertain) or nothing (not mentioned), and a manifest without a 'label' column reads its other "
            f"columns as findings; fix the value, add the label column, or name the column group:{column} if it "
            f"describes the patient"))
    return value


def split_labels(cell: str) -> list[str]:
    """The findings named in a ``labels`` cell (``A|B``), stripped, without empties or repeats, in order."""
    names = []
    for part in cell.split(LABELS_SEPARATOR):
        part = part.strip()
        if part and part not in names:
            names.append(part)
    return names


def positive_names(findings, classes) -> str:
    """An image's label text in a multi-label task: its positive findings joined by ``|`` (empty for none).

    ``findings`` are values (1 positive) or booleans (True: called positive, as predict decides).
    """
    return LABELS_SEPARATOR.join(itertools.compress(classes, map(operator.eq, findings, itertools.repeat(1.0))))


def finding_values(items, k: int) -> np.ndarray:
    """The (items, k) float32 matrix of multi-label items' finding values (1, 0, -1, NaN), in one flat pass.

    A list of 10^5 tuples handed to ``np.array`` costs several times more.
    """
    flat = itertools.chain.from_iterable(item.findings for item in items)
    return np.fromiter(flat, dtype=np.float32, count=len(items) * k).reshape(len(items), k)


def targets(values: np.ndarray, uncertain: str = "ignore") -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask) for training and scoring from raw finding values (1, 0, -1, NaN).

    ``targets`` is 0/1 float32; ``mask`` is True where the entry counts. Blank
    entries are masked; uncertain ones masked (``ignore``), read as 0
    (``zeros``) or as 1 (``ones``).
    """
    from xrayfeat.options.settings import UNCERTAIN_POLICIES

    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}; got {uncertain!r}")
    values = np.asarray(values, dtype=np.float32)
    known = ~np.isnan(values)
    unsure = values == UNCERTAIN
    mask = known & ~unsure if uncertain == "ignore" else known
    y = np.where(unsure, 1.0 if uncertain == "ones" else 0.0, np.nan_to_num(values, nan=0.0))
    return y.astype(np.float32), mask
