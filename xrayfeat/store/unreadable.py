"""The files a store knows it cannot read: decode failures remembered by content hash and decoder version.

With ``--on-error skip`` a file that cannot be decoded gets no row, so without
a memory of it every rerun of ``extract`` would load the framework, build the
backbone and decode the file again, only to skip it again. ``unreadable.json``,
beside the index, maps the SHA-256 of each such file's bytes to why it cannot
be decoded, for one *decoder version* (the decoding rules and the versions of
the decoders that ran them, :func:`xrayfeat.extraction.decoding.decoder_version`):
under another version every file is tried again.

The record is untrusted until checked: it is written atomically by the process
that holds the store's write lock, sealed by the SHA-256 of its content, and a
damaged, foreign or unknown-format record reads as empty (the files are then
simply tried again, and the next writer replaces it). Nothing here decodes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from xrayfeat.fileio import atomic_write
from xrayfeat.store.locks import writing

__all__ = ["UNREADABLE_FILE", "load_unreadable", "save_unreadable"]

#: The record's file name in the store folder.
UNREADABLE_FILE = "unreadable.json"
_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def load_unreadable(folder: Path, decoder: str) -> dict[str, str]:
    """sha256 → reason of each file known unreadable under ``decoder``; empty when none is known for it.

    A missing, damaged or foreign record, or one written under another decoder
    version, is empty: it only spares work, so the files are tried again.
    """
    try:
        record = json.loads((Path(folder) / UNREADABLE_FILE).read_text(encoding="utf-8"))
        body = {k: record[k] for k in ("format", "decoder", "files")}
        sound = (record.get("sha256") == _digest(body) and body["format"] == _FORMAT and isinstance(body["files"], dict)
                 and all(isinstance(h, str) and _SHA256.fullmatch(h) and isinstance(r, str)
                         for h, r in body["files"].items()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
    return dict(body["files"]) if sound and body["decoder"] == decoder else {}


def save_unreadable(folder: Path, decoder: str, files: dict[str, str]) -> None:
    """Remember ``files`` (sha256 → reason) as unreadable under ``decoder``, replacing the record.

    The caller holds the store's write lock and passes every failure to keep
    (those of another decoder version are dropped: they are to be tried again).
    """
    body = {"format": _FORMAT, "decoder": decoder, "files": dict(sorted(files.items()))}
    target = Path(folder) / UNREADABLE_FILE
    with writing(target):
        atomic_write(target, json.dumps({**body, "sha256": _digest(body)}, indent=1))
