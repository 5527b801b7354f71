"""Feature options resolved: weights, device, precision and the store's fingerprint, without loading a framework.

The fingerprint is computed from names, versions and file digests alone, so a
warm extraction (every row cached) and every command that only reads the store
never import the deep-learning framework.
"""

from __future__ import annotations

from dataclasses import dataclass

from xrayfeat.backbones import get_spec
from xrayfeat.data import images
from xrayfeat.devices import gpu_likely, keras_backend_name
from xrayfeat.extraction.weights import WeightsInfo, resolve_weights
from xrayfeat.options.settings import FeatureOptions
from xrayfeat.provenance import library_versions
from xrayfeat.store.fingerprint import OPTIONAL_FIELDS
from xrayfeat.store.imported import ImportRefused, imported_entry, imported_options

__all__ = ["FeatureConfig", "resolve"]


@dataclass(frozen=True)
class FeatureConfig:
    """Resolved options: the fingerprint plus what is needed to compute it."""

    options: FeatureOptions
    weights: WeightsInfo
    fingerprint: dict
    device: str  # "cpu" or "gpu" (as resolved or guessed)


def resolve(options: FeatureOptions, device: str = "auto", *, gpu: bool | None = None, cache_dir=None) -> FeatureConfig:
    """Weights, device, precision and the fingerprint, without loading the framework.

    ``precision="auto"`` means float32 on a CPU and mixed_bfloat16 on a GPU; with
    ``device="auto"`` the GPU is guessed here and confirmed once a model is built.
    ``keep`` enters the fingerprint only when it is not ``both``, so stores made
    before ``--keep`` keep their id (:mod:`xrayfeat.store.fingerprint`).

    A name of features imported into ``cache_dir`` (``xrayfeat cache import``)
    resolves to its store's fingerprint (:mod:`xrayfeat.store.imported`): no
    backbone, weights kind ``imported``; ``options`` as the store's.
    """
    options = imported_options(options, cache_dir)
    options.validate()
    if device == "auto":
        device = "gpu" if (gpu if gpu is not None else gpu_likely()) else "cpu"
    if options.imported:
        return _imported(options, cache_dir, device)
    spec = get_spec(options.backbone)
    weights = resolve_weights(spec, options.weights, options.seed)
    precision = options.precision
    if precision == "auto":
        precision = "mixed_bfloat16" if device == "gpu" else "float32"
    fingerprint = {
        "backbone": spec.name,
        "weights": weights.identity,
        "image_size": int(options.image_size or spec.input_size),
        "preprocess": spec.preprocess,
        "decode": images.DECODE_VERSION,
        "layer": spec.layer(options.layer),
        "precision": precision,
        "store_dtype": options.store_dtype,
        "keras": library_versions(("keras",), keep_missing=True)["keras"],
        "backend": keras_backend_name(),
    }
    if options.keep != OPTIONAL_FIELDS["keep"]:
        fingerprint["keep"] = options.keep
    return FeatureConfig(options, weights, fingerprint, device)


def _imported(options: FeatureOptions, cache_dir, device: str) -> FeatureConfig:
    """The config of features imported into ``cache_dir`` under ``options.backbone``; one line when there are none."""
    found = None if cache_dir is None else imported_entry(cache_dir, options.backbone)
    if found is None:
        where = f"in {cache_dir}" if cache_dir is not None else "(no cache folder given)"
        raise ImportRefused(f"no features are imported as {options.backbone!r} {where}: run `xrayfeat cache import "
                            f"FILE --name {options.backbone}` with this --cache-dir")
    entry, store = found
    weights = WeightsInfo("imported", path=entry.get("file"), sha256=store.fingerprint["file_sha256"])
    return FeatureConfig(options, weights, dict(store.fingerprint), device)
