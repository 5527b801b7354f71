"""xrayfeat: chest X-ray transfer learning on a content-addressed HDF5 feature cache.

``import xrayfeat as xf`` is the library's face::

    ds = xf.discover("data/")                              # labelled images
    X, y, meta = xf.features("data/", "vgg16", weights="none", image_size=64)
    run = xf.fit_head("data/", "vgg16", weights="none", epochs=40)
    run.summary(); run.predictions(); run.figures          # or xf.load_run("runs/...")

Names are imported on first use, so ``import xrayfeat`` loads no deep-learning
framework (nor scikit-learn, h5py or pandas). See ``docs/python-api.md``.
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

# a library's logger: records go where the application says; a call shows its warnings where it says nothing
# (xrayfeat.runtime.library_logging)
logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Public name → module that defines it.
_EXPORTS = {
    "discover": "xrayfeat.api", "extract": "xrayfeat.api", "features": "xrayfeat.api", "fit_head": "xrayfeat.api", "embed": "xrayfeat.api",
    "predict": "xrayfeat.api", "evaluate": "xrayfeat.api", "explain": "xrayfeat.api",
    "inspect": "xrayfeat.api", "describe": "xrayfeat.api", "export": "xrayfeat.api",
    "cache_ls": "xrayfeat.api", "cache_verify": "xrayfeat.api", "cache_gc": "xrayfeat.api", "import_features": "xrayfeat.api", "convert_manifest": "xrayfeat.api",
    "CachedFeatures": "xrayfeat.extraction.transformer",
    "load_run": "xrayfeat.runs.loaded", "Run": "xrayfeat.runs.loaded",
    "RunRecord": "xrayfeat.runs.record", "RunWarning": "xrayfeat.runs.record",
    "FeatureStore": "xrayfeat.store.feature_store", "list_stores": "xrayfeat.store.catalog",
    "Dataset": "xrayfeat.data.datasets", "Item": "xrayfeat.data.datasets",
    "FeatureOptions": "xrayfeat.options.settings", "RunOptions": "xrayfeat.options.settings", "HeadOptions": "xrayfeat.options.settings", "EmbedOptions": "xrayfeat.options.settings",
    "write_report": "xrayfeat.report.writer", "write_phantoms": "xrayfeat.data.phantoms", "run_demo": "xrayfeat.demo",
    "XrayfeatError": "xrayfeat.errors", "DatasetError": "xrayfeat.errors", "ImageReadError": "xrayfeat.errors", "StoreError": "xrayfeat.errors",
    "WeightsError": "xrayfeat.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xrayfeat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(__all__)
