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

__version__ = "0.1.0"

#: Public name → module that defines it.
_EXPORTS = {
    "discover": "api", "extract": "api", "features": "api", "fit_head": "api", "embed": "api",
    "predict": "api", "evaluate": "api", "explain": "api",
    "load_run": "trained", "Run": "trained",
    "RunRecord": "runs", "RunWarning": "runs",
    "FeatureStore": "store", "list_stores": "store",
    "Dataset": "datasets", "Item": "datasets",
    "FeatureOptions": "options", "RunOptions": "options", "HeadOptions": "options", "EmbedOptions": "options",
    "write_report": "report", "write_phantoms": "phantoms", "run_demo": "demo",
    "XrayfeatError": "errors", "DatasetError": "errors", "ImageReadError": "errors", "StoreError": "errors",
    "WeightsError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xrayfeat' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(__all__)
