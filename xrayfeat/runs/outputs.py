"""Where a command may write what its user names: never over what a run recorded, never inside a run or a cache.

A run folder is a study's evidence: its record and every file the record
checksums. A feature cache is the evidence's source: its stores (shards, index,
fingerprint) and its hash memory. ``predict --out``, ``explain --out``,
``embed --out``, ``report --out``, ``export --out`` and ``cache export --out``
(and the library calls behind them) write where they are told, so each asks
:func:`check_output` first, before anything is read, computed or created
(``fit-head --out`` and ``demo --out``, which make a folder of their own, ask
:func:`check_new_folder`):

* the path is resolved (:func:`os.path.realpath`: links, ``..``, a trailing
  slash, a path relative to a folder inside the run) before anything is decided;
* then the path and each folder above it, innermost first, is recognised by its
  own markers: a run folder (:func:`is_run_folder`: fit-head's ``INCOMPLETE``
  claim, a file only fit-head writes, or a ``config.json`` that is a run
  record), a feature store (its ``fingerprint.json``) or a cache folder (its
  hash memory, or a store in it: :mod:`xrayfeat.store.catalog`);
* the first one found decides: inside a store or a cache folder, refused; inside a
  run folder, refused unless the path lies in the place this command owns in
  its own run (:data:`OWNED`: ``evaluate`` owns ``external/<name>/``,
  ``embed --from-run`` owns ``embed-<method>.png``). Such a command writes there
  under the run's lock (:mod:`xrayfeat.runs.lock`).

A refusal is one :class:`OutputError` line (exit 2): the path as given, what it
is (the run's recorded file, the run folder itself, the store or cache folder
that holds it) and the fix: another ``--out`` (``out=`` from Python: :func:`~xrayfeat.errors.out_words`).
"""

from __future__ import annotations

import json
import os
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from xrayfeat.errors import XrayfeatError, another_out, out_words
from xrayfeat.fileio import check_name_lengths, check_writable
from xrayfeat.runs.folder import MARKER, RUN_FILES
from xrayfeat.store.catalog import is_cache_folder, is_store_folder

__all__ = ["OWNED", "FOLDER_OUTPUTS", "OutputError", "check_new_folder", "check_output", "is_run_folder"]

#: The commands whose ``--out`` is a folder (the others write one file).
FOLDER_OUTPUTS = frozenset({"report", "explain", "export", "evaluate", "fit-head", "demo"})

#: The place each command owns in the run it works on, relative to the run folder, and who writes there: a
#: pattern ending in ``/`` is a folder (it and everything in it), any other one file directly in the run folder.
#: ``{name}``: the evaluation's name; ``{run}``: the run folder.
OWNED = {
    "evaluate": ("external/{name}/", "`evaluate --name {name}` records its result"),
    "embed": ("embed-*.png", "`embed --from-run {run}` draws its maps"),
}

#: The largest ``config.json`` read to tell whether it is a run record (a record is a few kB).
_RECORD_READ_MAX = 16 << 20


class OutputError(XrayfeatError):
    """An output path that would overwrite or add to a run's or a cache's files."""


def check_output(out: str | os.PathLike, command: str, *, run: str | os.PathLike | None = None,
                 name: str | None = None, cache: str | os.PathLike | None = None) -> Path | None:
    """Refuse ``out`` where ``command`` must not write; the run folder when ``out`` is the place it owns there, else None.

    ``run``: the run ``command`` works on (its owned place, :data:`OWNED`, is in
    that run only); ``name``: what fills the place's ``{name}``. A caller given
    a run folder back writes there under the run's lock. ``cache``: the cache
    folder the command will use, a cache folder even before the command makes it.
    See the module docstring.
    """
    given = os.fspath(out)
    if "\0" in str(given):
        raise OutputError(f"{given!r}: not a path (it holds a NUL byte); {another_out('pass another --out')}")
    check_name_lengths(given)  # before any folder on the way is looked at (a long name fails every stat)
    target = Path(os.path.realpath(given))
    own = Path(os.path.realpath(run)) if run is not None else None
    cache = Path(os.path.realpath(cache)) if cache is not None else None
    for folder in (target, *target.parents):
        if is_run_folder(folder):
            rel = PurePosixPath(target.relative_to(folder).as_posix())
            if folder == own and _owned(command, rel, name):
                return folder
            raise OutputError(f"{given}: {_in_run(folder, rel, command)}; {_run_fix(command, folder, own)}")
        if is_store_folder(folder):
            what = "is the feature store" if folder == target else "lies inside the feature store"
            raise OutputError(f"{given}: {what} {folder}; pass an {out_words()} outside the cache folder {folder.parent}")
        if folder == cache or is_cache_folder(folder):
            what = "is the feature cache folder" if folder == target else "lies inside the feature cache folder"
            raise OutputError(f"{given}: {what} {folder} (its stores and hash memory); pass an {out_words()} outside it")
    if command != "evaluate":  # its folder is RUN/external/<name>, which it checks itself (a link out of the run)
        check_writable(given, folder=command in FOLDER_OUTPUTS)  # a name too long, a file on the way, no permission
    return None


def check_new_folder(out: str | os.PathLike, command: str, *, cache: str | os.PathLike | None = None) -> None:
    """Refuse a folder ``command`` will make and fill (fit-head's run, the demo's study) inside a run, store or cache.

    A run folder is left to the command's own refusal, which says what the run
    holds (:func:`~xrayfeat.runs.folder.new_run_dir`: a run, or any folder
    holding files, is never written over); anything else is judged as
    :func:`check_output` judges an output.
    """
    if not is_run_folder(out):
        check_output(out, command, cache=cache)


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run folder, finished or not: fit-head's claim, a file only fit-head writes, or a run record.

    A ``config.json`` alone counts only when it reads as a run record (a JSON
    object with ``artifacts``, or the first layout's ``classes`` and ``features``):
    many other tools name a file so.
    """
    folder = Path(path)
    if (folder / MARKER).exists() or any((folder / name).exists() for name in RUN_FILES):
        return True
    data = _record_json(folder)
    return isinstance(data, dict) and ("artifacts" in data or {"classes", "features"} <= data.keys())


def _record_json(folder: Path):
    """``folder/config.json`` parsed, or None when it is absent, too large to be a record, or not JSON."""
    config = folder / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > _RECORD_READ_MAX:
            return None
        return json.loads(config.read_bytes())
    except (OSError, ValueError):
        return None


def _owned(command: str, rel: PurePosixPath, name: str | None) -> bool:
    """Whether ``rel`` (relative to the command's run folder) lies in the place ``command`` owns there."""
    if command not in OWNED or (name is None and "{name}" in OWNED[command][0]):
        return False
    return _match(rel, OWNED[command][0].replace("{name}", name or "")) is not None


def _match(rel: PurePosixPath, pattern: str) -> dict | None:
    """The ``{name}`` a path relative to a run folder gives an :data:`OWNED` pattern (``{}`` without one); None: no match."""
    folder = pattern.endswith("/")
    parts = PurePosixPath(pattern).parts
    if len(rel.parts) < len(parts) or (not folder and len(rel.parts) != len(parts)):
        return None
    found = {}
    for have, want in zip(rel.parts, parts):
        if want == "{name}":
            found["name"] = have
        elif not fnmatchcase(have, want):
            return None
    return found


def _recorded_files(folder: Path) -> set[str]:
    """The files the run's record names (its artifacts; the first layout's head and baselines), best effort."""
    data = _record_json(folder)
    if not isinstance(data, dict):
        return set()
    entries = list((data.get("artifacts") or {}).values()) if isinstance(data.get("artifacts"), dict) else []
    files = data.get("files") if isinstance(data.get("files"), dict) else {}
    entries += [files.get("head"), *((files.get("baselines") or {}).values() if isinstance(files.get("baselines"), dict) else ())]
    return {e["file"] for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)}


def _in_run(folder: Path, rel: PurePosixPath, command: str) -> str:
    """What a path at ``rel`` in run folder ``folder`` is, as a refusal says it."""
    if not rel.parts:
        return f"is the run folder {folder}"
    if str(rel) in _recorded_files(folder) or str(rel) in ("config.json", MARKER):
        return f"is {rel}, a file the run {folder} recorded; writing there would overwrite it"
    for pattern, who in OWNED.values():
        found = _match(rel, pattern)
        if found is None:
            continue
        if pattern.endswith("/"):
            return f"lies in {folder.joinpath(*rel.parts[:len(PurePosixPath(pattern).parts)])}, where {who.format(run=folder, **found)}"
        return f"is {rel} in the run folder {folder}, where only {who.format(run=folder, **found)}"
    return f"lies inside the run folder {folder}, where {command} must not write"


def _run_fix(command: str, folder: Path, own: Path | None) -> str:
    """The fix of a refusal inside a run folder: another --out, or the file the command may write there."""
    pattern = OWNED.get(command, ("{name}",))[0]
    if folder == own and "{name}" not in pattern:
        return f"pass an {out_words()} outside the run folder, or {folder / pattern}"
    return f"pass an {out_words()} outside the run folder"
