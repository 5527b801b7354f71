"""When and with what a record was made: UTC timestamps and library versions.

Every record xrayfeat writes says when it was made (a shard's ``created``, a run
record's ``created``, a run folder's claim, an export's manifest, an external
evaluation, a report's footer): :func:`utc_timestamp`, in UTC, by default as
ISO 8601 (``2026-11-26T07:15:02Z``). The libraries that made it (a run record's
``versions``, a map's coordinates file, the store fingerprint's Keras, the
decoder version) come from :func:`library_versions`, which reads installed
package metadata and imports none of them.
"""

from __future__ import annotations

import time
from typing import Iterable

__all__ = ["ISO_UTC", "library_versions", "utc_timestamp"]

#: The format of every ``created``/``started`` field: ISO 8601 in UTC, to the second.
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"


def utc_timestamp(fmt: str = ISO_UTC) -> str:
    """The current UTC time in ``fmt`` (a :func:`time.strftime` format; default :data:`ISO_UTC`)."""
    return time.strftime(fmt, time.gmtime())


def library_versions(names: Iterable[str], *, keep_missing: bool = False) -> dict[str, str | None]:
    """``{distribution name: installed version}`` for ``names``, in their order, from package metadata.

    A name that is not installed is left out, or maps to None with ``keep_missing``.
    Nothing is imported, so asking costs no framework start-up (and importing
    this module does not load :mod:`importlib.metadata`: the first ask does).
    """
    import importlib.metadata

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if keep_missing:
                found[name] = None
    return found
