"""What defines a feature store: its fingerprint, its folder name, the values it can hold.

A frozen backbone is a pure function of (pixels, backbone, weights, preprocessing,
input size, cut layer, precision). The *fingerprint* is the set of fields
(:data:`FINGERPRINT_FIELDS`) that pins that function down; one store holds the
outputs of one fingerprint, in a folder named by :func:`store_dirname`. The
storage dtypes a store may use are declared with the ``--store-dtype`` option
(:data:`xrayfeat.options.settings.STORE_DTYPES`).

A store also says which parts of each row it keeps (``--keep``): both the
spatial map and the pooled vector (``both``, every store made before the
option), the pooled vector only (25-50x smaller) or the spatial map only. The
fingerprint holds the field ``keep`` only when it is not ``both``
(:data:`OPTIONAL_FIELDS`), so every older store keeps its id and folder name,
and a store that keeps one part shows it in its folder name
(``vgg16-block5_pool-224-f32-pooled-<id>``). :func:`kept_parts` says what a
fingerprint's store holds, :func:`missing_parts` what a command would lack, and
:class:`KeepError` is the one line a command gets when it does. Nothing here
reads or writes files.

A store of features computed elsewhere (``xrayfeat cache import``,
:mod:`xrayfeat.store.imported`) has another kind of fingerprint
(:data:`IMPORTED_FIELDS`): the imported file's digest and the provenance its
user declared, and no backbone, weights, input size, preprocessing or layer,
since xrayfeat computed none of them. :func:`is_imported` tells it apart.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from xrayfeat.errors import StoreError

__all__ = [
    "FINGERPRINT_FIELDS", "OPTIONAL_FIELDS", "IMPORTED", "IMPORTED_FIELDS", "is_imported", "drawing_size", "IMPORTED_DRAWING_SIZE", "FLOAT16_MAX", "FLOAT16_TINY", "KeepError",
    "fingerprint_id", "defining_fields", "kept_parts", "missing_parts", "keep_error", "store_dirname", "check_storable",
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
#: The ``kind`` of an imported store's fingerprint (a computed store's has no ``kind``).
IMPORTED = "imported"
#: Fields that make up an imported store's fingerprint: the file's sha256, the provenance declared at import
#: (``--model``, ``--source-url``, ``--description``; empty when not declared) and how the values are stored.
IMPORTED_FIELDS = ("kind", "file_sha256", "model", "source_url", "description", "store_dtype")
#: Fields a fingerprint holds only when they differ from this default, so that stores made before them keep their id.
OPTIONAL_FIELDS = {"keep": "both"}
#: The parts of a row each ``keep`` stores, in the order shards hold them.
_KEPT = {"both": ("spatial", "pooled"), "pooled": ("pooled",), "spatial": ("spatial",)}
_PART_WORDS = {"spatial": "spatial maps", "pooled": "pooled vectors"}
FLOAT16_MAX = float(np.finfo(np.float16).max)
FLOAT16_TINY = float(np.finfo(np.float16).tiny)


def defining_fields(fingerprint: dict) -> dict:
    """The fields that define a fingerprint: every :data:`FINGERPRINT_FIELDS`, and optional ones off their default.

    This is what ``fingerprint.json`` holds and what :func:`fingerprint_id` hashes.
    An imported store's (:func:`is_imported`) are :data:`IMPORTED_FIELDS` and ``keep``.
    """
    names = IMPORTED_FIELDS if is_imported(fingerprint) else FINGERPRINT_FIELDS
    missing = [f for f in names if f not in fingerprint]
    if missing:
        raise ValueError(f"fingerprint lacks {missing}")
    fields = {k: fingerprint[k] for k in names}
    fields.update((k, fingerprint[k]) for k, default in OPTIONAL_FIELDS.items() if fingerprint.get(k, default) != default)
    return fields


def is_imported(fingerprint: dict) -> bool:
    """Whether ``fingerprint`` is an imported store's (features computed elsewhere, ``xrayfeat cache import``)."""
    return isinstance(fingerprint, dict) and fingerprint.get("kind") == IMPORTED


#: The size an image is decoded at to draw the map of imported spatial features over it (a display choice: the
#: model that computed them is not known to xrayfeat).
IMPORTED_DRAWING_SIZE = 224


def drawing_size(fingerprint: dict) -> int:
    """The size images are decoded at to draw a store's maps over them: its input size, or, imported, a fixed one."""
    return IMPORTED_DRAWING_SIZE if is_imported(fingerprint) else int(fingerprint["image_size"])


def fingerprint_id(fingerprint: dict) -> str:
    """A short stable id of a fingerprint (sha256 of the canonical JSON of its :func:`defining_fields`)."""
    canonical = json.dumps(defining_fields(fingerprint), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def kept_parts(fingerprint: dict) -> tuple[str, ...]:
    """The parts of each row a fingerprint's store holds: ``("spatial", "pooled")``, ``("pooled",)`` or ``("spatial",)``."""
    keep = fingerprint.get("keep", OPTIONAL_FIELDS["keep"])
    if keep not in _KEPT:
        raise ValueError(f"The 'keep' field of a fingerprint must be one of {set(_KEPT)}. Got {keep!r} instead.")
    return _KEPT[keep]


def missing_parts(fingerprint: dict, need) -> tuple[str, ...]:
    """The parts of ``need`` a fingerprint's store does not hold (empty when it serves the need)."""
    kept = kept_parts(fingerprint)
    return tuple(part for part in need if part not in kept)


class KeepError(StoreError):
    """A store does not keep the part (spatial maps or pooled vectors) a command needs.

    Exit code 2: the store is sound, the fix is an option (``extract --keep both``).
    """

    exit_code = 2


def keep_error(where, fingerprint: dict, need, purpose: str) -> KeepError:
    """The one line for ``purpose`` needing parts the store at ``where`` does not keep: what it keeps, the fix."""
    keep = fingerprint.get("keep", OPTIONAL_FIELDS["keep"])
    kept = " and ".join(_PART_WORDS[p] for p in kept_parts(fingerprint))
    lacking = " and ".join(_PART_WORDS[p] for p in missing_parts(fingerprint, need))
    if is_imported(fingerprint):
        return KeepError(f"{where} holds imported {kept} only, but {purpose} needs {lacking}: import a file that "
                         f"holds them (an npz with a 'spatial' array of shape (n, h, w, c) for spatial maps)")
    return KeepError(
        f"{where} keeps {kept} only (--keep {keep}), but {purpose} needs {lacking}: run "
        f"`xrayfeat extract DATA --backbone {fingerprint['backbone']} --keep both` with the same feature options"
    )


def store_dirname(fingerprint: dict) -> str:
    """The store's folder name: ``<backbone>-<layer>-<size>-<precision>[-<keep>]-<id>``, keep shown unless both.

    An imported store's: ``imported[-<keep>]-<id>``.
    """
    keep = fingerprint.get("keep", OPTIONAL_FIELDS["keep"])
    shown = "" if keep == OPTIONAL_FIELDS["keep"] else f"-{keep}"
    if is_imported(fingerprint):
        return f"{IMPORTED}{shown}-{fingerprint_id(fingerprint)}"
    short = {"float32": "f32", "mixed_bfloat16": "bf16", "mixed_float16": "f16"}
    precision = short.get(fingerprint["precision"], fingerprint["precision"])
    return (
        f"{fingerprint['backbone']}-{fingerprint['layer']}-{fingerprint['image_size']}"
        f"-{precision}{shown}-{fingerprint_id(fingerprint)}"
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
