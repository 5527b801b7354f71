"""MIMIC-CXR-JPG 2.0.0: its chexpert, metadata and split tables (``.csv`` or ``.csv.gz``) into a manifest.

``mimic-cxr-2.0.0-metadata.csv`` lists every image (``dicom_id``) with its
subject, study and ``ViewPosition``; ``mimic-cxr-2.0.0-chexpert.csv`` gives each
study the fourteen CheXpert observations (``1.0``, ``0.0``, ``-1.0`` uncertain,
blank), which every image of the study takes; ``mimic-cxr-2.0.0-split.csv``
gives each image its official split (``train``, ``validate`` -> ``val``,
``test``). The image is ``files/p<first two digits of subject_id>/p<subject_id>/
s<study_id>/<dicom_id>.jpg``. An image whose study has no labels (the labeller
found no findings or impression section) is left out and counted. Sex and age
live in MIMIC-IV's ``patients.csv`` (``gender``, ``anchor_age``), read when
given as ``patients``; the age is the patient's age in their anchor year.
"""

from __future__ import annotations

import os
from pathlib import Path

from xrayfeat.data.converters.chexpert import OBSERVATIONS
from xrayfeat.data.converters.common import (
    FINDING_CELLS,
    Conversion,
    ConvertOptions,
    Row,
    age_group,
    cell,
    read_table,
    refuse_value,
    require_table,
    sex_group,
    view_group,
)
from xrayfeat.errors import DatasetError, one_line

__all__ = ["convert_mimic"]

_PREFIX = "mimic-cxr-2.0.0-"
_LABEL_COLUMNS = ("subject_id", "study_id", *OBSERVATIONS)
_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
_PATIENT_COLUMNS = ("subject_id", "gender", "anchor_age")
_SPLITS = {"train": "train", "validate": "val", "test": "test"}
_FRONTAL = ("PA", "AP")
_ALLOWED_CELLS = "1.0, 0.0, -1.0 (uncertain) or nothing"


def _labels(root: Path, shown_root: str) -> tuple[Path, dict[str, tuple[str, tuple[str, ...]]]]:
    """The chexpert table: study_id -> (subject_id, finding cells)."""
    path, shown = require_table(root, shown_root, (_PREFIX + "chexpert.csv",), "MIMIC-CXR-JPG's labels")
    table = read_table(path, shown, _LABEL_COLUMNS, official=",".join(_LABEL_COLUMNS))
    i_subject, i_study = table.index("subject_id"), table.index("study_id")
    observed = [(name, table.index(name)) for name in OBSERVATIONS]
    studies = {}
    for line, row in table.lines():
        cells = []
        for name, index in observed:
            value = FINDING_CELLS.get(cell(row, index))
            if value is None:
                raise refuse_value(shown, line, name, cell(row, index), _ALLOWED_CELLS)
            cells.append(value)
        studies[cell(row, i_study)] = (cell(row, i_subject), tuple(cells))
    return path, studies


def _splits(root: Path, shown_root: str) -> tuple[Path, dict[str, str]]:
    """The split table: dicom_id -> train, val or test."""
    path, shown = require_table(root, shown_root, (_PREFIX + "split.csv",), "MIMIC-CXR-JPG's official split")
    table = read_table(path, shown, _SPLIT_COLUMNS, official=",".join(_SPLIT_COLUMNS))
    i_dicom, i_split = table.index("dicom_id"), table.index("split")
    splits = {}
    for line, row in table.lines():
        split = _SPLITS.get(cell(row, i_split))
        if split is None:
            raise refuse_value(shown, line, "split", cell(row, i_split), ", ".join(_SPLITS))
        splits[cell(row, i_dicom)] = split
    return path, splits


def _patients(given: str | os.PathLike) -> tuple[Path, dict[str, tuple[str, str]]]:
    """MIMIC-IV's patients table: subject_id -> (sex group, age band)."""
    path = Path(given)
    shown = os.fspath(given)
    if not path.is_file():
        raise DatasetError(one_line(f"{shown}: no such file; pass MIMIC-IV's patients.csv (or .csv.gz) as the patients table"))
    table = read_table(path, shown, _PATIENT_COLUMNS,
                       official="subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod")
    i_subject, i_sex, i_age = (table.index(name) for name in _PATIENT_COLUMNS)
    patients = {}
    for line, row in table.lines():
        try:
            age = age_group(cell(row, i_age))
        except ValueError:
            raise refuse_value(shown, line, "anchor_age", cell(row, i_age), "years") from None
        patients[cell(row, i_subject)] = (sex_group(cell(row, i_sex)), age)
    return path, patients


def convert_mimic(root: Path, shown_root: str, options: ConvertOptions) -> Conversion:
    """The images of MIMIC-CXR-JPG's metadata table that have labels and exist (frontal ones with ``frontal_only``)."""
    metadata, shown = require_table(root, shown_root, (_PREFIX + "metadata.csv",), "MIMIC-CXR-JPG's image list")
    labels_path, studies = _labels(root, shown_root)
    split_path, splits = _splits(root, shown_root)
    tables = [labels_path, metadata, split_path]
    patients: dict[str, tuple[str, str]] = {}
    if options.patients is not None:
        patients_path, patients = _patients(options.patients)
        tables.append(patients_path)
    conversion = Conversion(tables=tables, findings=OBSERVATIONS,
                            split_rule="official (mimic-cxr-2.0.0-split.csv: train, validate -> val, test)")
    table = read_table(metadata, shown, _METADATA_COLUMNS, official=",".join(_METADATA_COLUMNS))
    i_dicom, i_subject, i_study, i_view = (table.index(name) for name in
                                           ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    unlabelled = 0
    unknown = ("", "")
    isfile = os.path.isfile
    for line, row in table.lines():
        conversion.table_rows += 1
        dicom, subject, study = cell(row, i_dicom), cell(row, i_subject), cell(row, i_study)
        if not (dicom and subject.isdigit() and study.isdigit()):
            raise DatasetError(one_line(
                f"{shown}: line {line}: dicom_id {dicom!r}, subject_id {subject!r}, study_id {study!r}: an image "
                f"needs a dicom_id and numeric subject and study ids; pass the dataset's own table"))
        view = view_group(cell(row, i_view))
        if options.frontal_only and view not in _FRONTAL:
            conversion.filtered += 1
            continue
        split = splits.get(dicom)
        if split is None:
            raise DatasetError(one_line(
                f"{shown}: line {line}: {dicom} has no row in {_PREFIX}split.csv; download the official tables "
                f"again (they list the same images)"))
        labelled = studies.get(study)
        if labelled is None:
            unlabelled += 1
            continue
        if labelled[0] != subject:
            raise DatasetError(one_line(
                f"{shown}: line {line}: study {study} is subject {subject}'s here and subject {labelled[0]}'s in "
                f"{_PREFIX}chexpert.csv; download the official tables again"))
        relpath = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        if not isfile(root / relpath):
            conversion.missing.append(relpath)
            continue
        sex, age = patients.get(subject, unknown)
        conversion.rows.append(Row(relpath, subject, split, labelled[1], sex, age, view, "mimic", (shown, line)))
    conversion.counts["images_without_labels"] = unlabelled
    if unlabelled:
        conversion.notes.append(f"{unlabelled} images of studies without a row in {_PREFIX}chexpert.csv are left out")
    if options.patients is None:
        conversion.notes.append("group:sex and group:age are empty: pass MIMIC-IV's patients.csv for them")
    return conversion
