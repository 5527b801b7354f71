"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` (or ``_v2020``) and the official split lists into a manifest.

The table has one row per image: ``Finding Labels`` names its findings
(``Cardiomegaly|Effusion``) among the fourteen of :data:`NIH_FINDINGS`, or says
``No Finding``. The manifest gets one column per finding (1 or 0; NIH's
labels are never uncertain nor blank) and a ``No Finding`` column, 1 where the
table says so. Images are found by name in ``ROOT/images/`` or in the Kaggle
layout's ``ROOT/images_001/images/`` ... ``images_012/images/``, each folder
listed once. ``train_val_list.txt`` and ``test_list.txt`` give the official
split (train and test); without them the split is patient-grouped (see
:class:`~xrayfeat.data.converters.common.PatientSplit`), and the record says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xrayfeat.data.converters.common import (
    Conversion,
    ConvertOptions,
    Row,
    age_group,
    cell,
    find_table,
    image_index,
    patient_split,
    read_lines,
    read_table,
    refuse_value,
    require_table,
    sex_group,
    view_group,
)
from xrayfeat.errors import DatasetError, one_line

__all__ = ["NIH_FINDINGS", "NO_FINDING", "convert_nih", "image_folders"]

logger = logging.getLogger(__name__)

#: The fourteen findings of ChestX-ray14, in the order the dataset's paper lists them.
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
#: What ``Finding Labels`` says of an image without any of them; also a manifest column.
NO_FINDING = "No Finding"
#: The table's names, the newer first: when both are there, the 2020 revision is read.
_TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
#: The official header (``OriginalImage[Width,Height]`` is two CSV columns, as NIH writes it unquoted).
_OFFICIAL_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                   "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
           "View Position")
_SPLIT_LISTS = (("train_val_list.txt", "train"), ("test_list.txt", "test"))


def image_folders(root: Path) -> list[str]:
    """The folders holding NIH's images: ``images`` and the Kaggle layout's ``images_NNN/images``, those present."""
    folders = ["images"] if (root / "images").is_dir() else []
    numbered = sorted(name for name in _names(root) if name.startswith("images_"))
    for name in numbered:
        inner = f"{name}/images"
        folders.append(inner if (root / inner).is_dir() else name)
    return folders


def _names(root: Path) -> list[str]:
    with os.scandir(root) as entries:
        return [entry.name for entry in entries if entry.is_dir()]


def _official_split(root: Path, shown_root: str) -> dict[str, str] | None:
    """Image name -> split from the two lists, or None when neither is there (one without the other is refused)."""
    present = [(name, split) for name, split in _SPLIT_LISTS if (root / name).is_file()]
    if not present:
        return None
    if len(present) == 1:
        (have, _), = present
        lacking = next(name for name, _ in _SPLIT_LISTS if name != have)
        raise DatasetError(one_line(
            f"{os.path.join(shown_root, have)}: found without {lacking}; put both official split lists in "
            f"{shown_root}, or remove this one for a patient-grouped split"))
    splits: dict[str, str] = {}
    for name, split in _SPLIT_LISTS:
        shown = os.path.join(shown_root, name)
        for line, image in read_lines(root / name, shown):
            if splits.get(image, split) != split:
                raise DatasetError(one_line(
                    f"{shown}: line {line}: {image} is also in {_SPLIT_LISTS[0][0]}; an image is in one split; "
                    f"download the official lists again"))
            splits[image] = split
    return splits


def _labels(value: str, shown: str, line: int) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split("|") if part.strip())
    allowed = f"{', '.join(NIH_FINDINGS)}, or {NO_FINDING}, joined by |"
    for name in names:
        if name != NO_FINDING and name not in NIH_FINDINGS:
            raise refuse_value(shown, line, "Finding Labels", name, allowed)
    if not names or (NO_FINDING in names and len(names) > 1):
        raise refuse_value(shown, line, "Finding Labels", value, allowed)
    return names


def convert_nih(root: Path, shown_root: str, options: ConvertOptions) -> Conversion:
    """The rows of NIH ChestX-ray14's table whose image exists under ``root``."""
    path, shown = require_table(root, shown_root, _TABLES, "NIH ChestX-ray14's Data_Entry_2017 table")
    table = read_table(path, shown, _COLUMNS, official=_OFFICIAL_HEADER)
    if find_table(root, shown_root, _TABLES[1:]) and path.name.startswith(_TABLES[0]):
        logger.info("reading %s (the 2020 revision; %s is also there)", shown, _TABLES[1])
    official = _official_split(root, shown_root)
    split_of = None if official is not None else patient_split(options.seed)
    lists = [root / name for name, _ in _SPLIT_LISTS] if official is not None else []
    conversion = Conversion(tables=[path, *lists], findings=(*NIH_FINDINGS, NO_FINDING),
                            split_rule="official (train_val_list.txt: train, test_list.txt: test)"
                            if official is not None else split_of.rule())
    if official is None:
        logger.info("%s: no train_val_list.txt and test_list.txt; the split is %s", shown_root, split_of.rule())
    index = image_index(root, image_folders(root))
    i_image, i_labels, i_patient, i_age, i_sex, i_view = (table.index(name) for name in (
        "Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"))
    positive, negative = "1", "0"
    for line, row in table.lines():
        conversion.table_rows += 1
        image = cell(row, i_image)
        if not image:
            raise refuse_value(shown, line, "Image Index", image, "an image file name")
        names = _labels(cell(row, i_labels), shown, line)
        patient = cell(row, i_patient)
        if not patient:
            raise refuse_value(shown, line, "Patient ID", patient, "a patient number")
        try:
            age = age_group(cell(row, i_age))
        except ValueError:
            raise refuse_value(shown, line, "Patient Age", cell(row, i_age), "years, as 58 or 058Y") from None
        if official is not None:
            split = official.get(image)
            if split is None:
                raise DatasetError(one_line(
                    f"{shown}: line {line}: {image} is in neither {_SPLIT_LISTS[0][0]} nor {_SPLIT_LISTS[1][0]}; "
                    f"download the official lists again, or remove both for a patient-grouped split"))
        else:
            split = split_of(patient)
        relpath = index.get(image)
        if relpath is None:
            conversion.missing.append(image)
            continue
        cells = tuple(positive if name in names else negative for name in NIH_FINDINGS)
        cells += (positive if names == (NO_FINDING,) else negative,)
        conversion.rows.append(Row(relpath, patient, split, cells, sex_group(cell(row, i_sex)), age,
                                   view_group(cell(row, i_view)), "nih", (shown, line)))
    return conversion
