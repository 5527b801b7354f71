"""CheXpert v1.0 (and CheXpert-v1.0-small): ``train.csv`` and ``valid.csv`` into a manifest.

One row per image, fourteen observation columns holding ``1.0``, ``0.0``,
``-1.0`` (uncertain) or nothing (not mentioned), written to the manifest as
``1``, ``0``, ``-1`` and blank. ``Path`` (``CheXpert-v1.0-small/train/patient00001/
study1/view1_frontal.jpg``) is relative to the folder above ROOT; the image is
looked for at ``ROOT/<Path less its first folder>``, then at ``ROOT/../<Path>``.
The patient is the ``patientNNNNN`` folder. ``train.csv`` is the train split and
``valid.csv`` the test split (CheXpert's own test set is not public, and its
validation set is what studies report on), or the validation split with
``valid_as="val"``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from xrayfeat.data.converters.common import (
    FINDING_CELLS,
    Conversion,
    ConvertOptions,
    Row,
    age_group,
    cell,
    find_table,
    read_table,
    refuse_value,
    sex_group,
    view_group,
)
from xrayfeat.errors import DatasetError, one_line

__all__ = ["OBSERVATIONS", "convert_chexpert"]

#: The fourteen observations of the CheXpert labeller, in the tables' order (MIMIC-CXR's table uses the same).
OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")
_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS)
_OFFICIAL_HEADER = ",".join(_COLUMNS)
_TABLES = (("train.csv", "train"), ("valid.csv", None))  # valid.csv's split: options.valid_as
_PATIENT = re.compile(r"patient\d+")
_ALLOWED_CELLS = "1.0, 0.0, -1.0 (uncertain) or nothing"


def convert_chexpert(root: Path, shown_root: str, options: ConvertOptions) -> Conversion:
    """The rows of CheXpert's train.csv and valid.csv whose image exists (frontal ones only with ``frontal_only``)."""
    tables = [(find_table(root, shown_root, (name,)), split or options.valid_as) for name, split in _TABLES]
    if not any(found for found, _ in tables):
        raise DatasetError(one_line(
            f"{shown_root}: no train.csv nor valid.csv here (CheXpert's tables); pass the CheXpert-v1.0 or "
            f"CheXpert-v1.0-small folder, which holds them"))
    conversion = Conversion(tables=[found[0] for found, _ in tables if found], findings=OBSERVATIONS,
                            split_rule=f"official (train.csv: train, valid.csv: {options.valid_as})")
    parent = root.parent
    for found, split in tables:
        if found is not None:
            _convert_table(*found, split, root, parent, options, conversion)
    return conversion


def _convert_table(path: Path, shown: str, split: str, root: Path, parent: Path, options: ConvertOptions,
                   conversion: Conversion) -> None:
    table = read_table(path, shown, _COLUMNS, official=_OFFICIAL_HEADER)
    i_path, i_sex, i_age, i_frontal, i_view = (table.index(name) for name in _COLUMNS[:5])
    observed = [(name, table.index(name)) for name in OBSERVATIONS]
    values = FINDING_CELLS
    isfile = os.path.isfile
    for line, row in table.lines():
        conversion.table_rows += 1
        written = cell(row, i_path)
        parts = written.replace("\\", "/").split("/")
        patient = next((part for part in parts if _PATIENT.fullmatch(part)), None)
        if patient is None or ".." in parts:
            raise refuse_value(shown, line, "Path", written, "a path like CheXpert-v1.0-small/train/patient00001/"
                                                              "study1/view1_frontal.jpg")
        cells = []
        for name, index in observed:
            value = values.get(cell(row, index))
            if value is None:
                raise refuse_value(shown, line, name, cell(row, index), _ALLOWED_CELLS)
            cells.append(value)
        frontal = cell(row, i_frontal)
        if frontal not in ("Frontal", "Lateral"):
            raise refuse_value(shown, line, "Frontal/Lateral", frontal, "Frontal or Lateral")
        if options.frontal_only and frontal != "Frontal":
            conversion.filtered += 1
            continue
        try:
            age = age_group(cell(row, i_age))
        except ValueError:
            raise refuse_value(shown, line, "Age", cell(row, i_age), "years") from None
        inside = "/".join(parts[1:])
        if inside and isfile(root / inside):
            relpath = inside
        elif isfile(parent / written):
            relpath = "/".join(("..", *parts))  # beside ROOT: the manifest's folder must hold it (checked on writing)
        else:
            conversion.missing.append(written)
            continue
        view = view_group(cell(row, i_view)) or frontal
        conversion.rows.append(Row(relpath, patient, split, tuple(cells), sex_group(cell(row, i_sex)),
                                   age, view, "chexpert", (shown, line)))
