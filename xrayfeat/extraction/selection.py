"""Choosing the store a command reads: the existing store of these features that keeps the parts it needs.

Stores of the same features that differ only in what they keep (``--keep``)
serve the same values, so a command that reads pooled vectors uses a
pooled-only store where one exists instead of extracting a second, full one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from xrayfeat.errors import StoreError
from xrayfeat.extraction.config import resolve
from xrayfeat.options.settings import KEEPS, FeatureOptions
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.store.fingerprint import keep_error, missing_parts, store_dirname

__all__ = ["open_store", "store_for"]


def store_for(options: FeatureOptions, cache_dir, need, purpose: str, device: str = "auto") -> FeatureOptions:
    """The feature options of the store a command that reads the parts ``need`` should use.

    Stores of the same features that differ only in what they keep serve the
    same values, so: the store ``options.keep`` names if it exists and holds
    ``need``, else any existing one that does (``both`` first); when none
    exists, ``options`` itself (extraction then makes its store). When stores
    of these features exist but none holds ``need``, or ``options.keep`` itself
    cannot hold it, :class:`~xrayfeat.store.fingerprint.KeepError` names the store,
    what it keeps, what ``purpose`` needs and the fix.
    """
    config = resolve(options, device, cache_dir=cache_dir)
    fingerprint = config.fingerprint
    if config.options.imported:  # one store per name: what it holds is what there is
        if missing_parts(fingerprint, need):
            raise keep_error(Path(cache_dir) / store_dirname(fingerprint), fingerprint, need, purpose)
        return config.options
    lacking = None
    for keep in (options.keep, *(k for k in KEEPS if k != options.keep)):
        variant = {**fingerprint, "keep": keep}
        path = Path(cache_dir) / store_dirname(variant)
        if path.is_dir() and not missing_parts(variant, need):
            return replace(options, keep=keep)
        if path.is_dir() and lacking is None:
            lacking = (path, variant)
    if lacking is None and not missing_parts(fingerprint, need):
        return options
    where, variant = lacking or (Path(cache_dir) / store_dirname(fingerprint), fingerprint)
    raise keep_error(where, variant, need, purpose)


def open_store(options: FeatureOptions, cache_dir, device: str = "auto", *, need=(),
               purpose: str = "this command") -> FeatureStore:
    """The existing store for these feature options that holds the parts ``need`` (see :func:`store_for`).

    A clear error says what to run when there is none.
    """
    options = store_for(options, cache_dir, need, purpose, device)
    config = resolve(options, device, cache_dir=cache_dir)
    if not (Path(cache_dir) / store_dirname(config.fingerprint)).is_dir():
        raise StoreError(
            f"no features for {options.backbone} ({config.fingerprint['layer']}, {config.fingerprint['precision']}, "
            f"weights {config.weights.identity}) in {cache_dir}; run `xrayfeat extract DATA --backbone {options.backbone}` "
            f"with the same feature options first"
        )
    return FeatureStore.open(cache_dir, config.fingerprint)  # a damaged or foreign store says so itself
