"""RSNA Pneumonia Detection (stage 2): ``stage_2_train_labels.csv`` into a one-finding manifest.

The table has one row per box (``patientId,x,y,width,height,Target``), so an
image with three boxes has three rows, all with the same ``Target``; an image
without opacity has one row with empty box cells and ``Target`` 0. Each image
(``stage_2_train_images/<patientId>.dcm``, one image per patient) becomes one
manifest row with a ``Pneumonia`` column, its ``Target``. The optional
``stage_2_detailed_class_info.csv`` (``patientId,class``) is checked against the
labels and its classes counted in the record. RSNA has no official split of its
labelled images: the split is patient-grouped. Sex, age and view live in the
DICOM headers, not in the tables, so the manifest has no group columns (and
discovery, where it reads DICOM headers for groups, reads them there).
"""

from __future__ import annotations

from pathlib import Path

from xrayfeat.data.converters.common import (
    Conversion,
    ConvertOptions,
    Row,
    cell,
    find_table,
    listing,
    patient_split,
    read_table,
    refuse_value,
    require_table,
)
from xrayfeat.errors import DatasetError, one_line

__all__ = ["DETAILED_CLASSES", "convert_rsna"]

_LABELS = "stage_2_train_labels.csv"
_DETAILS = "stage_2_detailed_class_info.csv"
_IMAGES = "stage_2_train_images"
_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
_DETAIL_COLUMNS = ("patientId", "class")
#: The detailed classes, and the Target each means.
DETAILED_CLASSES = {"Lung Opacity": "1", "Normal": "0", "No Lung Opacity / Not Normal": "0"}
_FINDING = "Pneumonia"


def convert_rsna(root: Path, shown_root: str, options: ConvertOptions) -> Conversion:
    """One row per image of RSNA's labels table whose DICOM file exists, with its ``Pneumonia`` finding."""
    path, shown = require_table(root, shown_root, (_LABELS,), "RSNA Pneumonia Detection's labels")
    table = read_table(path, shown, _COLUMNS, official=",".join(_COLUMNS))
    i_patient, i_target = table.index("patientId"), table.index("Target")
    targets: dict[str, tuple[str, int]] = {}  # patientId -> (Target, first line)
    rows = 0
    for line, row in table.lines():
        rows += 1
        patient, target = cell(row, i_patient), cell(row, i_target)
        if target not in ("0", "1"):
            raise refuse_value(shown, line, "Target", target, "0 or 1")
        if not patient:
            raise refuse_value(shown, line, "patientId", patient, "the image's id")
        first = targets.setdefault(patient, (target, line))
        if first[0] != target:
            raise DatasetError(one_line(
                f"{shown}: line {line}: {patient} has Target {target} here and {first[0]} on line {first[1]}; "
                f"an image's boxes share one Target; pass the dataset's own table"))
    split_of = patient_split(options.seed)
    conversion = Conversion(tables=[path], findings=(_FINDING,), split_rule=split_of.rule(), table_rows=rows,
                            groups=False)
    details = find_table(root, shown_root, (_DETAILS,))
    if details is not None:
        conversion.tables.append(details[0])
        conversion.counts["detailed_classes"] = _check_details(*details, targets)
    present = listing(root / _IMAGES)
    for patient, (target, line) in targets.items():
        name = f"{patient}.dcm"
        if name not in present:
            conversion.missing.append(f"{_IMAGES}/{name}")
            continue
        conversion.rows.append(Row(f"{_IMAGES}/{name}", patient, split_of(patient), (target,), "", "", "", "rsna",
                                   (shown, line)))
    conversion.notes.append("no group columns: RSNA keeps sex, age and view in the DICOM headers, which discovery reads")
    return conversion


def _check_details(path: Path, shown: str, targets: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Images per detailed class, each class checked against the image's Target."""
    table = read_table(path, shown, _DETAIL_COLUMNS, official=",".join(_DETAIL_COLUMNS))
    i_patient, i_class = table.index("patientId"), table.index("class")
    counted: dict[str, str] = {}
    for line, row in table.lines():
        patient, name = cell(row, i_patient), cell(row, i_class)
        target = DETAILED_CLASSES.get(name)
        if target is None:
            raise refuse_value(shown, line, "class", name, ", ".join(DETAILED_CLASSES))
        known = targets.get(patient)
        if known is not None and known[0] != target:
            raise DatasetError(one_line(
                f"{shown}: line {line}: {patient} is {name!r} here but has Target {known[0]} in {_LABELS} "
                f"(line {known[1]}); pass the tables of one download"))
        counted[patient] = name
    counts = dict.fromkeys(DETAILED_CLASSES, 0)
    for name in counted.values():
        counts[name] += 1
    return counts

