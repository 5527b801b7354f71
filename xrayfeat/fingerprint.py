"""What defines a feature store: its fingerprint, its folder name, the values it can hold.

A frozen backbone is a pure function of (pixels, backbone, weights, preprocessing,
input size, cut layer, precision). The *fingerprint* is the set of fields
(:data:`FINGERPRINT_FIELDS`) that pins that function down; one store holds the
outputs of one fingerprint, in a folder named by :func:`store_dirname`. The
storage dtypes a store may use are declared with the ``--store-dtype`` option
(:data:`xrayfeat.options.STORE_DTYPES`). Nothing here reads or writes files.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .errors import StoreError

__all__ = [
    "FINGERPRINT_FIELDS", "FLOAT16_MAX", "FLOAT16_TINY",
    "fingerprint_id", "store_dirname", "check_storable",
]

#: Fields that make up a fingerprint; anything that changes a feature value is here.
FINGERPRINT_FIELDS = (
    "backbone",
    "weights",
    "image_size",
    "preprocess",
    "decode",
    "layer",
    "precision",
    "store_dtype",
    "keras",
    "backend",
)
FLOAT16_MAX = float(np.finfo(np.float16).max)
FLOAT16_TINY = float(np.finfo(np.float16).tiny)


def fingerprint_id(fingerprint: dict) -> str:
    """A short stable id of a fingerprint (sha256 of its canonical JSON)."""
    missing = [f for f in FINGERPRINT_FIELDS if f not in fingerprint]
    if missing:
        raise ValueError(f"fingerprint lacks {missing}")
    canonical = json.dumps({k: fingerprint[k] for k in FINGERPRINT_FIELDS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def store_dirname(fingerprint: dict) -> str:
    """The store's folder name: ``<backbone>-<layer>-<size>-<precision>-<id>``."""
    short = {"float32": "f32", "mixed_bfloat16": "bf16", "mixed_float16": "f16"}
    precision = short.get(fingerprint["precision"], fingerprint["precision"])
    return (
        f"{fingerprint['backbone']}-{fingerprint['layer']}-{fingerprint['image_size']}"
        f"-{precision}-{fingerprint_id(fingerprint)}"
    )


def check_storable(values: np.ndarray, store_dtype: str) -> float:
    """Refuse values the storage dtype cannot hold; return the share of float16-subnormal values."""
    if not np.all(np.isfinite(values)):
        raise StoreError("the backbone produced NaN or infinite features; check the weights and --precision")
    if store_dtype != "float16":
        return 0.0
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak > FLOAT16_MAX:
        raise StoreError(
            f"feature values up to {peak:.3g} overflow float16 (max {FLOAT16_MAX:.0f}); "
            f"rerun with --store-dtype float32"
        )
    magnitude = np.abs(values)
    nonzero = np.count_nonzero(magnitude)
    if not nonzero:
        return 0.0
    return float(np.count_nonzero((magnitude > 0) & (magnitude < FLOAT16_TINY)) / nonzero)
