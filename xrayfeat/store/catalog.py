"""The stores of a cache folder: every folder under it that holds a ``fingerprint.json``.

``cache ls``, ``cache verify`` and ``cache gc`` walk this list.
"""

from __future__ import annotations

import os
from pathlib import Path

from xrayfeat.store.feature_store import FeatureStore

__all__ = ["list_stores"]


def list_stores(cache_dir: str | os.PathLike) -> list[FeatureStore]:
    """Every store under ``cache_dir`` (folders that hold a fingerprint.json)."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    return [FeatureStore.at(p.parent) for p in sorted(root.glob("*/fingerprint.json"))]
