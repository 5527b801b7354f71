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

__all__ = ["FeatureConfig", "resolve"]


@dataclass(frozen=True)
class FeatureConfig:
    """Resolved options: the fingerprint plus what is needed to compute it."""

    options: FeatureOptions
    weights: WeightsInfo
    fingerprint: dict
    device: str  # "cpu" or "gpu" (as resolved or guessed)


def resolve(options: FeatureOptions, device: str = "auto", *, gpu: bool | None = None) -> FeatureConfig:
    """Weights, device, precision and the fingerprint, without loading the framework.

    ``precision="auto"`` means float32 on a CPU and mixed_bfloat16 on a GPU; with
    ``device="auto"`` the GPU is guessed here and confirmed once a model is built.
    ``keep`` enters the fingerprint only when it is not ``both``, so stores made
    before ``--keep`` keep their id (:mod:`xrayfeat.store.fingerprint`).
    """
    options.validate()
    spec = get_spec(options.backbone)
    weights = resolve_weights(spec, options.weights, options.seed)
    if device == "auto":
        device = "gpu" if (gpu if gpu is not None else gpu_likely()) else "cpu"
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
