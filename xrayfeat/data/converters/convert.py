"""The registry of dataset converters, and :func:`convert_manifest`: official tables in, a manifest and its record out.

:data:`CONVERTERS` describes each public dataset once (its name, what it is
called, the options it takes, its converter); the command line's choices and
the tests read it. :func:`convert_manifest` runs one converter, makes each
image's path relative to the manifest's folder, writes the manifest (every cell
through :func:`~xrayfeat.fileio.csv_cell`, atomically) and, beside it,
``<manifest>.json``: the tables read and their SHA-256, the options, the counts,
and every image the tables name that does not exist. It returns the same record
as a :class:`ConversionResult`.

The manifest's paths are relative to its own folder and must stay inside it (as
:func:`~xrayfeat.data.datasets.discover` requires), so the manifest is written in
ROOT or in a folder above it; an ``out`` elsewhere is refused before anything
is read.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from xrayfeat.data.converters.chexpert import convert_chexpert
from xrayfeat.data.converters.common import Conversion, ConvertOptions, flag
from xrayfeat.data.labels import GROUP_COLUMNS
from xrayfeat.data.converters.covidx import convert_covidx
from xrayfeat.data.converters.mimic import convert_mimic
from xrayfeat.data.converters.nih import convert_nih
from xrayfeat.data.converters.rsna import convert_rsna
from xrayfeat.errors import DatasetError, one_line, out_words
from xrayfeat.fileio import atomic_write, check_writable, csv_text, file_digest, sibling, write_json, writing_to
from xrayfeat.options.constraints import Choice, OptionError, check_value, declaration

__all__ = ["CONVERTERS", "DATASET_NAMES", "SCHEMA", "Converter", "ConversionResult", "convert_manifest"]

logger = logging.getLogger(__name__)

#: The version of the ``<manifest>.json`` record.
SCHEMA = 1
_SHOW_MISSING = 5  # how many missing images the warning names


@dataclass(frozen=True)
class Converter:
    """One public dataset: its name (the command's DATASET), what it is called, what it reads, the options it takes."""

    name: str
    title: str
    tables: str
    options: tuple[str, ...]
    convert: Callable[[Path, str, ConvertOptions], Conversion]


#: Every dataset :func:`convert_manifest` knows, by name.
CONVERTERS: dict[str, Converter] = {c.name: c for c in (
    Converter("nih", "NIH ChestX-ray14", "Data_Entry_2017.csv (or _v2020), train_val_list.txt, test_list.txt",
              ("seed",), convert_nih),
    Converter("chexpert", "CheXpert v1.0 (or -small)", "train.csv, valid.csv", ("frontal_only", "valid_as"),
              convert_chexpert),
    Converter("mimic", "MIMIC-CXR-JPG 2.0.0", "mimic-cxr-2.0.0-{chexpert,metadata,split}.csv(.gz)",
              ("frontal_only", "patients"), convert_mimic),
    Converter("rsna", "RSNA Pneumonia Detection (stage 2)", "stage_2_train_labels.csv, "
              "stage_2_detailed_class_info.csv", ("seed",), convert_rsna),
    Converter("covidx", "COVIDx (COVID-Net)", "train.txt, val.txt, test.txt", (), convert_covidx),
)}
#: The datasets' names, in the registry's order.
DATASET_NAMES: tuple[str, ...] = tuple(CONVERTERS)


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_manifest` wrote: the manifest, its record, and the counts the record holds.

    ``findings`` maps each finding column to its counts over the written images
    (``positive``, ``negative``, ``uncertain``, ``blank``); a single-label
    dataset has ``classes`` (images per class) instead. ``missing_paths`` are the
    images the tables name that do not exist, as the tables name them.
    """

    dataset: str
    root: Path
    manifest: Path
    record: Path
    tables: tuple[tuple[str, str], ...]  # (path, sha256)
    options: dict
    split_rule: str
    table_rows: int
    images: int
    missing: int
    filtered: int
    patients: int
    splits: dict
    patients_per_split: dict
    findings: dict | None
    classes: dict | None
    counts: dict
    notes: tuple[str, ...]
    missing_paths: tuple[str, ...]

    def as_json(self, *, missing_paths: int | None = None) -> dict:
        """The record as written beside the manifest; ``missing_paths`` keeps only that many of the missing images."""
        data = {"schema": SCHEMA, **{f.name: getattr(self, f.name) for f in fields(self)}}
        for key in ("root", "manifest", "record"):
            data[key] = os.fspath(data[key])
        data["tables"] = [{"path": path, "sha256": digest} for path, digest in self.tables]
        data["notes"] = list(self.notes)
        data["missing_paths"] = list(self.missing_paths[:missing_paths] if missing_paths is not None
                                     else self.missing_paths)
        return data


def _options(dataset: str, filters: dict) -> ConvertOptions:
    """The ConvertOptions of ``filters``, each checked; one given for a dataset that does not take it is refused."""
    names = {f.name for f in fields(ConvertOptions)}
    unknown = sorted(set(filters) - names)
    if unknown:
        raise TypeError(f"convert_manifest() got unexpected keyword argument(s): {', '.join(unknown)}")
    takes = CONVERTERS[dataset].options
    for name, value in filters.items():
        spec = declaration(ConvertOptions, name)
        check_value("convert_manifest", name, value, spec["check"], spec["none"])
        if name not in takes:
            others = [c.name for c in CONVERTERS.values() if name in c.options]
            raise OptionError(f"{flag(name)} applies to {' and '.join(others)}, not to {dataset}; "
                              f"leave it out for {dataset}")
    return ConvertOptions(**filters)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def convert_manifest(dataset: str, root: str | os.PathLike, out: str | os.PathLike, **filters) -> ConversionResult:
    """Convert a public dataset's official tables under ``root`` into a manifest at ``out`` (and ``out.json``).

    ``dataset`` is one of :data:`DATASET_NAMES`; ``filters`` are fields of
    :class:`~xrayfeat.data.converters.common.ConvertOptions` the dataset takes
    (``frontal_only=True``, ``valid_as="val"``, ``patients=...``, ``seed=...``).
    No image is opened: each is only checked to exist. Images that do not exist
    are left out, counted and listed in the record, and named in a warning.

    Raises :class:`~xrayfeat.errors.DatasetError` in one line for a table
    without its expected columns, a value its dataset's format does not use
    (naming the line, the column and the value), an ``out`` whose folder does not
    hold ``root``, and tables none of whose images exist.
    """
    check_value("convert_manifest", "dataset", dataset, Choice(DATASET_NAMES))
    options = _options(dataset, filters)
    shown_root, shown_out = os.fspath(root), os.fspath(out)
    root_path = Path(os.path.abspath(shown_root))
    if not root_path.is_dir():
        raise DatasetError(one_line(f"{shown_root}: no such folder; pass the folder of the downloaded dataset"))
    if not shown_out.lower().endswith(".csv"):
        raise DatasetError(one_line(f"{shown_out}: a manifest is a .csv file (discover reads a .csv as a manifest); "
                                    f"name it {shown_out}.csv"))
    out_path = check_writable(os.path.abspath(shown_out))
    folder = os.path.dirname(out_path)
    real_folder, real_root = os.path.realpath(folder), os.path.realpath(root_path)
    if not _inside(real_root, real_folder):
        raise DatasetError(one_line(
            f"{shown_out}: its folder does not hold {shown_root}, and a manifest's paths stay inside its folder; "
            f"write it in {shown_root} or a folder above it ({out_words()} {os.path.join(shown_root, dataset + '.csv')})"))
    converter = CONVERTERS[dataset]
    conversion = converter.convert(root_path, shown_root, options)
    record = sibling(out_path, ".json")
    read = {os.path.realpath(p) for p in conversion.tables}
    for target in (out_path, record):
        if os.path.realpath(target) in read:
            raise DatasetError(one_line(f"{shown_out}: would overwrite {target}, a table of the dataset; "
                                        f"name the manifest otherwise"))
    if not conversion.rows:
        raise DatasetError(one_line(
            f"{shown_root}: none of the {conversion.table_rows} images listed in {', '.join(p.name for p in conversion.tables)} "
            f"exists under it ({len(conversion.missing)} missing, {conversion.filtered} filtered out); download the "
            f"images into the layout docs/datasets.md shows"))
    prefix = os.path.relpath(root_path, folder).replace(os.sep, "/")
    lines = _manifest_lines(conversion, prefix, shown_out)
    result = _result(dataset, root_path, Path(out_path), record, conversion, options, converter)
    with writing_to(folder, option=out_words()):
        atomic_write(out_path, csv_text(lines))
        write_json(record, result.as_json())
    if conversion.missing:
        few = ", ".join(conversion.missing[:_SHOW_MISSING])
        more = len(conversion.missing) - _SHOW_MISSING
        logger.warning("%s", one_line(
            f"{len(conversion.missing)} image{'s' if len(conversion.missing) > 1 else ''} listed in the tables "
            f"{'do' if len(conversion.missing) > 1 else 'does'} not exist under {shown_root} and "
            f"{'are' if len(conversion.missing) > 1 else 'is'} left out: {few}{f' and {more} more' if more > 0 else ''} "
            f"(all listed in {record})"))
    for note in conversion.notes:
        logger.info("%s", note)
    return result


def _manifest_lines(conversion: Conversion, prefix: str, shown_out: str) -> list[list[str]]:
    """The manifest's header and rows; a path that would leave the manifest's folder, or one listed twice, is refused."""
    label_columns = list(conversion.findings) if conversion.findings is not None else ["label"]
    groups = conversion.groups
    lines = [["path", "patient_id", "source", "split", *label_columns, *(GROUP_COLUMNS if groups else ())]]
    seen: dict[str, tuple[str, int]] = {}
    join, normpath = posixpath.join, posixpath.normpath
    for row in conversion.rows:
        path = normpath(join(prefix, row.path)) if prefix != "." else normpath(row.path)
        if path.startswith("../"):
            raise DatasetError(one_line(
                f"{row.where[0]}: line {row.where[1]}: the image {row.path} is outside the manifest's folder; write "
                f"the manifest in a folder that holds it ({out_words()})"))
        first = seen.get(path)
        if first is not None:
            raise DatasetError(one_line(
                f"{row.where[0]}: line {row.where[1]}: the image {row.path} is also on line {first[1]} of "
                f"{first[0]}; keep one row per image"))
        seen[path] = row.where
        line = [path, row.patient_id, row.source, row.split, *row.cells]
        if groups:
            line += (row.sex, row.age, row.view)
        lines.append(line)
    return lines


_CELL_NAMES = {"1": "positive", "0": "negative", "-1": "uncertain", "": "blank"}


def _result(dataset: str, root: Path, manifest: Path, record: Path, conversion: Conversion, options: ConvertOptions,
            converter: Converter) -> ConversionResult:
    from xrayfeat.data.datasets import SPLITS  # numpy: not at import, which the command line's --help does

    rows = conversion.rows
    splits = Counter(row.split for row in rows)
    patients: dict[str, set] = {split: set() for split in SPLITS}
    for row in rows:
        patients[row.split].add(row.patient_id)
    findings = classes = None
    columns = list(zip(*(row.cells for row in rows)))
    if conversion.findings is not None:
        findings = {}
        for name, column in zip(conversion.findings, columns):
            counted = Counter(column)
            findings[name] = {word: counted.get(value, 0) for value, word in _CELL_NAMES.items()}
    else:
        classes = dict(sorted(Counter(columns[0]).items()))
    taken = {name: getattr(options, name) for name in converter.options}
    taken = {name: os.path.abspath(value) if name == "patients" and value is not None else value
             for name, value in taken.items()}
    return ConversionResult(
        dataset=dataset, root=root, manifest=manifest, record=record,
        tables=tuple((os.fspath(p), file_digest(p)) for p in conversion.tables),
        options=taken, split_rule=conversion.split_rule, table_rows=conversion.table_rows, images=len(rows),
        missing=len(conversion.missing), filtered=conversion.filtered,
        patients=len({row.patient_id for row in rows}),
        splits={split: splits.get(split, 0) for split in SPLITS},
        patients_per_split={split: len(ids) for split, ids in patients.items()},
        findings=findings, classes=classes, counts=dict(conversion.counts), notes=tuple(conversion.notes),
        missing_paths=tuple(conversion.missing))
