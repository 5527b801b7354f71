"""COVIDx (COVID-Net): ``train.txt``, ``val.txt`` and ``test.txt`` into a single-label manifest.

Each line is ``patient_id filename class source``, separated by spaces (COVIDx
8A and earlier wrote only the first three fields). The class is ``positive`` or
``negative`` (COVIDx 8B and later) or ``normal``, ``pneumonia``, ``COVID-19``
(8A and earlier); one conversion uses one of the two vocabularies. Images are in
``ROOT/train/``, ``ROOT/val/`` and ``ROOT/test/``, the folder of the table's
split, each folder listed once. The manifest has a ``label`` column, and its
``source`` is the line's fourth field (the collection it came from), else
``covidx``; the tables say nothing of sex, age or view, so it has no group columns.
"""

from __future__ import annotations

import os
from pathlib import Path

from xrayfeat.data.converters.common import Conversion, ConvertOptions, Row, listing, read_lines, refuse_value
from xrayfeat.errors import DatasetError, one_line

__all__ = ["COVIDX_CLASSES", "convert_covidx"]

#: The class names of each version of COVIDx: the 8B-and-later binary task, the 8A-and-earlier three classes.
COVIDX_CLASSES = (("positive", "negative"), ("normal", "pneumonia", "COVID-19"))
_TABLES = (("train.txt", "train"), ("val.txt", "val"), ("test.txt", "test"))


def convert_covidx(root: Path, shown_root: str, options: ConvertOptions) -> Conversion:
    """One row per line of COVIDx's tables whose image exists in its split's folder."""
    found = [(name, split) for name, split in _TABLES if (root / name).is_file()]
    if not found:
        raise DatasetError(one_line(
            f"{shown_root}: no train.txt, val.txt nor test.txt here (COVIDx's tables); pass the folder that holds "
            f"them and the train/ and test/ image folders"))
    conversion = Conversion(tables=[root / name for name, _ in found], findings=None, groups=False,
                            split_rule="official (" + ", ".join(f"{name}: {split}" for name, split in found) + ")")
    vocabulary: tuple[str, ...] | None = None
    first: tuple[str, int] | None = None
    allowed = " or ".join(", ".join(names) for names in COVIDX_CLASSES)
    for name, split in found:
        shown = os.path.join(shown_root, name)
        present = listing(root / split)
        for line, text in read_lines(root / name, shown):
            conversion.table_rows += 1
            fields = text.split()
            if len(fields) not in (3, 4):
                raise DatasetError(one_line(
                    f"{shown}: line {line}: {len(fields)} fields; COVIDx writes 'patient_id filename class source' "
                    f"(or, before 8B, 'patient_id filename class') separated by spaces; pass the dataset's own file"))
            patient, filename, label = fields[:3]
            if vocabulary is None:
                vocabulary = next((names for names in COVIDX_CLASSES if label in names), None)
                first = (shown, line)
                if vocabulary is None:
                    raise refuse_value(shown, line, "class", label, allowed)
            elif label not in vocabulary:
                other = next((names for names in COVIDX_CLASSES if label in names), None)
                if other is None:
                    raise refuse_value(shown, line, "class", label, allowed)
                raise DatasetError(one_line(
                    f"{shown}: line {line}: class {label!r} is from another COVIDx version than "
                    f"{first[0]} line {first[1]}'s ({', '.join(vocabulary)}); pass the tables of one version"))
            if filename not in present:
                conversion.missing.append(f"{split}/{filename}")
                continue
            source = fields[3] if len(fields) == 4 else "covidx"
            conversion.rows.append(Row(f"{split}/{filename}", patient, split, (label,), "", "", "", source,
                                       (shown, line)))
    return conversion
