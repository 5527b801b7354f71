"""``cache export``: a dataset's cached features written to one ``.npz`` (paths, hashes, labels, splits, arrays).

Reads the store only (extracting nothing); the file is written atomically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xrayfeat.data.datasets import Dataset
from xrayfeat.fileio import atomic_path, writing_to
from xrayfeat.options.settings import FeatureOptions


@dataclass
class FeatureExportResult:
    """The file written, its rows, the store read, and the shape of each part (None: the store does not keep it)."""

    out: str
    rows: int
    store: str
    pooled: list | None
    spatial: list | None

    def as_json(self) -> dict:
        return asdict(self)


def export_features(dataset: Dataset, features: FeatureOptions, out, *, cache_dir="data_cache",
                    device: str = "auto") -> FeatureExportResult:
    """Write a dataset's cached features to one ``.npz`` in the dataset's order; computes nothing.

    Arrays: sha256, path, label, split, pooled (N, C), spatial (N, H, W, C);
    a part the store does not keep (``--keep``) is left out of the file. The
    store is the one ``features.keep`` names, else any of the same features
    (:func:`~xrayfeat.extraction.selection.store_for`). Missing rows are a
    :class:`~xrayfeat.errors.StoreError` naming the extract command to run.
    """
    from xrayfeat.extraction.selection import open_store

    features.validate()
    store = open_store(features, cache_dir, device)
    arrays = store.read(dataset.hashes, store.parts)
    with writing_to(Path(out).parent, option="--out"), atomic_path(out, suffix=".npz") as tmp:
        np.savez(
            tmp,
            sha256=np.array(dataset.hashes),
            path=np.array([item.relpath for item in dataset.items]),
            label=np.array([item.label for item in dataset.items]),
            split=np.array([item.split for item in dataset.items]),
            **arrays,
        )
    shapes = {part: list(arrays[part].shape) if part in arrays else None for part in ("pooled", "spatial")}
    return FeatureExportResult(out=str(out), rows=len(dataset), store=str(store.path), **shapes)
