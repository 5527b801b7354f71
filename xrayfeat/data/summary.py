"""What ``xrayfeat inspect`` shows about a dataset: counts, duplicates, leakage, image formats.

:func:`summarize` works from what discovery found (labels, splits, hashes,
sizes) and, optionally, each image file's header; it never decodes pixels.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable

from xrayfeat.data import images
from xrayfeat.data.datasets import SPLITS, Dataset, Item
from xrayfeat.display import MAX_ROWS, html_block, html_table, html_title, names_repr, path_repr
from xrayfeat.errors import ImageReadError

__all__ = ["summarize", "inspect_data", "Inspection", "imbalance_warning", "IMBALANCE_RATIO", "dataset_repr", "dataset_html"]

#: Train is called imbalanced when its largest class has more than this many times the images of its smallest.
IMBALANCE_RATIO = 2.0

_SPLIT_ORDER = {name: i for i, name in enumerate(SPLITS)}


def imbalance_warning(counts: dict[str, int], where: str = "train") -> str | None:
    """A sentence when the largest class in ``counts`` has more than :data:`IMBALANCE_RATIO` × the smallest's images.

    Accuracy then rewards predicting the majority; the sentence points at the
    balanced accuracy and at ``--class-weight balanced``. Classes with no images
    at all are another problem (fit-head refuses them), not counted here.
    """
    present = {name: n for name, n in counts.items() if n > 0}
    if len(present) < 2:
        return None
    large = max(present, key=present.get)
    small = min(present, key=present.get)
    ratio = present[large] / present[small]
    if ratio <= IMBALANCE_RATIO:
        return None
    return (f"{where} is imbalanced: {large} has {present[large]} images, {ratio:.1f}× the {present[small]} of "
            f"{small}; accuracy rewards the majority class, so read the balanced accuracy and per-class "
            f"sensitivity, or train with --class-weight balanced")


def summarize(dataset: Dataset, *, probe_images: bool = True) -> dict:
    """The facts ``xrayfeat inspect`` shows about a dataset, as a JSON-serialisable dict.

    Counts per split and class (a multi-label dataset: positive images per
    finding, with its uncertain and blank entries counted apart), the images
    per patient group, total bytes, exact duplicate files (same SHA-256;
    ``cross_split`` marks leakage between splits), patients found in several
    splits, and, when ``probe_images``, image formats, modes, bit depths and the
    width/height range read from file headers (no pixels are decoded). Files
    whose header cannot be read are listed under ``unreadable`` rather than
    raising: inspection reports problems, extraction is where they fail.
    """
    counts = {split: {name: 0 for name in dataset.classes} for split in dataset.splits}
    unsure = {split: {name: 0 for name in dataset.classes} for split in dataset.splits}
    blank = {split: {name: 0 for name in dataset.classes} for split in dataset.splits}
    groups: dict[str, Counter] = defaultdict(Counter)
    by_hash: dict[str, list[Item]] = defaultdict(list)
    patient_splits: dict[str, set[str]] = defaultdict(set)
    for item in dataset.items:
        if dataset.multilabel:
            for name, value in zip(dataset.classes, item.findings):
                where = counts if value == 1 else unsure if value == -1 else blank if value != value else None
                if where is not None:
                    where[item.split][name] += 1
        else:
            counts[item.split][item.label] += 1
        for name, value in item.groups:
            groups[name][value] += 1
        by_hash[item.sha256].append(item)
        if item.patient_id is not None:
            patient_splits[item.patient_id].add(item.split)

    def in_order(splits: Iterable[str]) -> list[str]:
        return sorted(set(splits), key=_SPLIT_ORDER.__getitem__)

    duplicates = [
        {
            "sha256": digest,
            "paths": [item.relpath for item in group],
            "splits": in_order(item.split for item in group),
            "labels": sorted({item.label for item in group}),
            "cross_split": len({item.split for item in group}) > 1,
        }
        for digest, group in by_hash.items() if len(group) > 1
    ]
    patients = [
        {"patient_id": pid, "splits": in_order(splits)}
        for pid, splits in sorted(patient_splits.items()) if len(splits) > 1
    ]

    formats: Counter = Counter()
    modes: Counter = Counter()
    bit_depths: Counter = Counter()
    widths: list[int] = []
    heights: list[int] = []
    unreadable = []
    if probe_images:
        for item in dataset.items:
            try:
                info = images.probe(item.path)
            except ImageReadError as error:
                unreadable.append({"path": item.relpath, "reason": error.reason})
                continue
            except OSError as error:
                unreadable.append({"path": item.relpath, "reason": error.strerror or str(error)})
                continue
            formats[str(info["format"])] += 1
            modes[str(info["mode"])] += 1
            bit_depths[str(info["bit_depth"])] += 1
            widths.append(int(info["width"]))
            heights.append(int(info["height"]))

    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "classes": list(dataset.classes),
        "images": len(dataset),
        "counts": counts,
        "multilabel": dataset.multilabel,
        "uncertain": unsure if dataset.multilabel else None,
        "blank": blank if dataset.multilabel else None,
        "groups": {name: dict(sorted(values.items())) for name, values in sorted(groups.items())},
        "probed": probe_images,
        "formats": dict(sorted(formats.items())),
        "modes": dict(sorted(modes.items())),
        "bit_depths": dict(sorted(bit_depths.items(), key=lambda kv: (len(kv[0]), kv[0]))),
        "width": [min(widths), max(widths)] if widths else None,
        "height": [min(heights), max(heights)] if heights else None,
        "bytes": sum(item.nbytes for item in dataset.items),
        "duplicates": duplicates,
        "patients_in_several_splits": patients,
        "unreadable": unreadable,
        "imbalance": imbalance_warning(counts["train"]) if "train" in counts and not dataset.multilabel else None,
    }


@dataclass
class Inspection:
    """What ``xrayfeat inspect`` shows about a dataset (:func:`summarize`'s fields, typed); ``as_json()`` is its ``--json``."""

    root: str
    layout: str
    classes: list
    images: int
    counts: dict  # split -> class -> images (multi-label: split -> finding -> positive images)
    multilabel: bool
    uncertain: dict | None  # multi-label: split -> finding -> images labelled uncertain (-1)
    blank: dict | None  # multi-label: split -> finding -> images the table leaves blank
    groups: dict  # group -> value -> images (group:* columns, DICOM headers)
    probed: bool
    formats: dict
    modes: dict
    bit_depths: dict
    width: list | None  # [min, max] in pixels
    height: list | None
    bytes: int
    duplicates: list  # groups of files with the same bytes: paths, splits, labels, cross_split
    patients_in_several_splits: list
    unreadable: list
    imbalance: str | None  # the warning about train's classes, if any

    def as_json(self) -> dict:
        return asdict(self)


def inspect_data(data: str | os.PathLike | Dataset, *, classes: Iterable[str] | None = None) -> Inspection:
    """``xrayfeat inspect DATA``: counts, formats, sizes, duplicates and patient overlap of a folder, manifest or Dataset."""
    from xrayfeat.data.datasets import discover

    if isinstance(data, Dataset):
        dataset = data.select_classes(classes) if classes else data
    else:
        dataset = discover(data, classes=list(classes) if classes else None)
    return Inspection(**summarize(dataset))


# --------------------------------------------------------------------------- in a notebook


def _dataset_counts(dataset) -> tuple[Counter, Counter]:
    """Images per (class, split), for a multi-label dataset positive images per (finding, split); images per split."""
    if dataset.multilabel:
        by_cell = Counter((name, item.split) for item in dataset.items
                          for name, value in zip(dataset.classes, item.findings) if value == 1)
    else:
        by_cell = Counter((item.label, item.split) for item in dataset.items)
    by_split = Counter(item.split for item in dataset.items)
    return by_cell, by_split


def dataset_repr(dataset) -> str:
    """``Dataset('ROOT', layout=…, images=N, classes=[…], splits={…}, skipped=K)``, bounded whatever N."""
    _, by_split = _dataset_counts(dataset)
    splits = ", ".join(f"{s!r}: {by_split[s]}" for s in dataset.splits)
    return (f"Dataset({path_repr(dataset.root)}, layout={dataset.layout!r}, images={len(dataset.items)}, "
            f"classes={names_repr(dataset.classes)}, splits={{{splits}}}, skipped={len(dataset.skipped)})")


def dataset_html(dataset) -> str:
    """The images per class (rows) and split (columns) with totals, under the root, layout and what items carry."""
    by_cell, by_split = _dataset_counts(dataset)
    splits = list(dataset.splits)
    rows = [[name, *(by_cell[name, s] for s in splits), sum(by_cell[name, s] for s in splits)]
            for name in dataset.classes[:MAX_ROWS]]
    rows.append(["total", *(by_split[s] for s in splits), len(dataset.items)])
    kind = "findings (positive images)" if dataset.multilabel else "classes"
    notes = [f"layout {dataset.layout}", f"{len(dataset.items)} images", f"{len(dataset.classes)} {kind}"]
    if dataset.has_patients:
        notes.append(f"{len({i.patient_id for i in dataset.items if i.patient_id is not None})} patients")
    if dataset.has_sources:
        notes.append(f"{len({i.source for i in dataset.items if i.source is not None})} sources")
    if dataset.skipped:
        notes.append(f"{len(dataset.skipped)} files skipped (see .skipped)")
    return html_block(html_title("Dataset", str(dataset.root), " · ".join(notes)),
                      html_table(["class", *splits, "total"], rows, more=len(dataset.classes) - MAX_ROWS))
