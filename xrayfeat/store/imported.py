"""Features computed elsewhere, made a store: ``xrayfeat cache import FILE --name NAME``.

Embeddings from another model (torchxrayvision's DenseNet features, Google's CXR
Foundation embeddings, any model's features a user holds in a file) become a
store like any other, keyed by each image file's SHA-256, and ``NAME`` selects
it wherever a backbone name does (``-b NAME``; ``xf.features(data, NAME)``).

The file (:func:`read_embeddings`):

* ``.npz``: a feature matrix ``features`` (n, c) (or ``pooled``, as ``cache export``
  writes it), a key array ``sha256`` or ``path`` (n,), and optionally ``spatial``
  (n, h, w, c) maps; other arrays are ignored.
* ``.csv``: a header, a key column ``sha256`` or ``path``, and every other column
  a feature (a number in every row).
* ``.parquet``: as a CSV (numeric columns), or one column ``features`` holding a
  vector per row; reading it needs pandas and pyarrow.

Keys: ``sha256`` is the hex SHA-256 of the image file's bytes, as xrayfeat
computes it (``xf.discover(...).hashes``). A ``path`` is hashed at import, so
the store stays content-addressed and a dataset finds its rows wherever its
images lie: relative paths are read under ``root`` (default: the file's
folder) and every one must exist then. When the file has both columns,
``sha256`` is the key and the paths are not read.

Values: float32 and float16 are stored as given, so ``cache export`` gives back
the same matrix bit for bit (float16 read back as float32, exactly). Other
numbers (float64, integers) are stored as float32, and the result says when
that changed a value (by how much at most); a CSV's numbers are read as the
nearest float32, so a CSV written from float32 values with enough digits
(numpy's shortest repr, or ``%.9g``) gives them back bit for bit.

The store's fingerprint (:data:`~xrayfeat.store.fingerprint.IMPORTED_FIELDS`)
is the file's SHA-256 and the provenance declared at import (``model``,
``source_url``, ``description``), so the same file with the same declarations
makes the same store, and a changed file another. It claims no backbone,
weights, input size, preprocessing or layer. ``NAME`` is not part of it: the
cache folder's ``imports.json`` maps each name to its store
(:func:`imported_names`), and a name already given to other features is
refused unless ``replace`` (``--replace``) points it at the new ones.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from xrayfeat.errors import XrayfeatError, one_line
from xrayfeat.fileio import atomic_write, file_digest
from xrayfeat.options.settings import BACKBONES, IMPORTED_WEIGHTS, FeatureOptions, check_import_name
from xrayfeat.provenance import utc_timestamp
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.store.fingerprint import IMPORTED, fingerprint_id, is_imported, store_dirname
from xrayfeat.store.locks import flock, writing

__all__ = ["IMPORTS_FILE", "FILE_FORMATS", "ImportRefused", "ImportResult", "Embeddings", "import_features",
           "read_embeddings", "imported_names", "imported_entry", "imported_options"]

#: The cache folder's map from each import name to its store.
IMPORTS_FILE = "imports.json"
#: File formats by extension.
FILE_FORMATS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_KEYS = ("sha256", "path")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ROWS_PER_SHARD = 4096


class ImportRefused(XrayfeatError):
    """A file that cannot be imported as given, or a name that cannot be given to it (exit 2)."""


@dataclass
class Embeddings:
    """What an embeddings file holds: the image hashes, the pooled matrix, the spatial maps (or None)."""

    hashes: list[str]
    pooled: np.ndarray
    spatial: np.ndarray | None
    format: str
    key: str  # the key column used: sha256 or path
    dtype: str  # the store dtype: float32, or float16 when the file's values are float16
    converted: str | None = None  # what changed on the way to float32, or None


@dataclass
class ImportResult:
    """What ``cache import`` made: the name, its store, the rows and their shapes, the file and its digest."""

    name: str
    store: str
    fingerprint_id: str
    file: str
    file_sha256: str
    format: str
    key: str
    rows: int
    written: int  # rows written now (0: the same file and declarations were imported before)
    pooled: list
    spatial: list | None
    store_dtype: str
    converted: str | None = None
    replaced: str | None = None  # the store the name pointed at before --replace (left in the cache)
    provenance: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- reading the file


def read_embeddings(file, *, root=None, hash_cache=None) -> Embeddings:
    """The keys, the feature matrix and the spatial maps of ``file``; one :class:`ImportRefused` line when it is wrong.

    Refused: a missing or empty file, an unknown extension, a missing key column,
    ragged rows, a value that is not a finite number, duplicate keys, a path
    that is not found (relative ones under ``root``, default the file's folder).
    ``hash_cache`` (a path) remembers the hashes of path keys.
    """
    path = Path(file)
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImportRefused(f"{path}: not an embeddings file xrayfeat reads (by its extension): give a .npz, .csv or "
                            f".parquet file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImportRefused(f"{path}: no such file: check the path") from None
    if not path.is_file():
        raise ImportRefused(f"{path}: not a file: give an embeddings file (.npz, .csv or .parquet)")
    if size == 0:
        raise ImportRefused(f"{path}: empty file: nothing to import")
    reader = {"npz": _read_npz, "csv": _read_csv, "parquet": _read_parquet}[fmt]
    keys, key, pooled, spatial = reader(path)
    if len(keys) == 0:
        raise ImportRefused(f"{path}: no rows: nothing to import")
    if pooled.ndim != 2 or pooled.shape[1] == 0:
        raise ImportRefused(f"{path}: the feature matrix has shape {pooled.shape}, not (rows, features): give one "
                            f"row of at least one number per image")
    if pooled.shape[0] != len(keys):
        raise ImportRefused(f"{path}: {pooled.shape[0]} feature rows but {len(keys)} {key} keys: give one row per key")
    if spatial is not None and (spatial.ndim != 4 or spatial.shape[0] != len(keys) or 0 in spatial.shape):
        raise ImportRefused(f"{path}: 'spatial' has shape {spatial.shape}, not ({len(keys)}, h, w, c): give one map "
                            f"per key, or leave 'spatial' out")
    for name, values in (("features", pooled), ("spatial", spatial)):
        if values is not None:
            _check_numbers(path, name, values)
    hashes = _hashes(path, keys, key, root, hash_cache)
    _check_unique(path, hashes, keys, key)
    dtype = "float16" if pooled.dtype == np.float16 and (spatial is None or spatial.dtype == np.float16) else "float32"
    converted = []
    stored = []
    for name, values in (("features", pooled), ("spatial", spatial)):
        if values is None:
            stored.append(None)
            continue
        kept = values.astype(dtype, copy=False)
        if values.dtype != kept.dtype and fmt != "csv":  # a CSV's text has no dtype: its numbers are read to float32
            wide = values.astype(np.float64)
            gap = float(np.max(np.abs(kept.astype(np.float64) - wide))) if wide.size else 0.0
            if gap:
                converted.append(f"{name}: {values.dtype} stored as {dtype}, values changed by up to {gap:.3g}")
        stored.append(kept)
    return Embeddings(hashes=hashes, pooled=stored[0], spatial=stored[1], format=fmt, key=key, dtype=dtype,
                      converted="; ".join(converted) or None)


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            arrays = {name: data[name] for name in names & {*_KEYS, "features", "pooled", "spatial"}}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "bject arrays" in str(exc):
            raise ImportRefused(f"{path}: holds object arrays (ragged rows, or a pandas column saved as it is), "
                                f"which xrayfeat does not unpickle: save keys as strings (.astype(str)) and features "
                                f"as one numeric array") from None
        raise ImportRefused(f"{path}: not a readable .npz ({one_line(exc)}): write it with numpy.savez") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ImportRefused(f"{path}: not a readable .npz ({one_line(exc)}): write it with numpy.savez") from None
    key = next((k for k in _KEYS if k in arrays), None)
    if key is None:
        raise ImportRefused(f"{path}: no key array: name one 'sha256' (each image file's SHA-256) or 'path' "
                            f"(each image file); it has {', '.join(sorted(names)) or 'no arrays'}")
    matrix = "features" if "features" in arrays else "pooled" if "pooled" in arrays else None
    if matrix is None:
        raise ImportRefused(f"{path}: no feature matrix: name it 'features' (rows, features); it has "
                            f"{', '.join(sorted(names))}")
    keys = arrays[key]
    if keys.ndim != 1 or keys.dtype.kind not in "US":
        raise ImportRefused(f"{path}: '{key}' is not a list of strings (dtype {keys.dtype}, shape {keys.shape})")
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in keys.tolist()]
    values = []
    for name in (matrix, "spatial"):
        array = arrays.get(name)
        if array is not None and array.dtype.kind not in "fiu":
            raise ImportRefused(f"{path}: '{name}' holds {array.dtype} values, not numbers")
        values.append(array)
    return keys, key, values[0], values[1]


def _read_csv(path: Path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportRefused(f"{path}: not a readable CSV ({one_line(exc)}): write it as UTF-8 text with a header") from None
    rows = [row for row in rows if row]  # blank lines
    if not rows:
        raise ImportRefused(f"{path}: empty file: nothing to import")
    header = [name.strip() for name in rows[0]]
    key = next((k for k in _KEYS if k in header), None)
    if key is None:
        raise ImportRefused(f"{path}: no key column: name one 'sha256' (each image file's SHA-256) or 'path' (each "
                            f"image file) in the header")
    keyed = [i for i, name in enumerate(header) if name in _KEYS]
    columns = [i for i in range(len(header)) if i not in keyed]
    if not columns:
        raise ImportRefused(f"{path}: no feature columns: every column besides {'/'.join(_KEYS)} is a feature")
    matrix = np.empty((len(rows) - 1, len(columns)), dtype=np.float64)
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ImportRefused(f"{path}: line {r + 2} has {len(row)} fields, the header {len(header)} (ragged rows): "
                                f"give every row one value per column")
        try:  # numpy parses the row's text at once; a failure is then found cell by cell
            matrix[r] = np.asarray([row[i] for i in columns], dtype=np.float64)
        except ValueError:
            for i in columns:
                try:
                    float(row[i])
                except ValueError:
                    raise ImportRefused(one_line(
                        f"{path}: line {r + 2}, column {header[i]!r}: {row[i]!r} is not a number; every column "
                        f"besides {'/'.join(_KEYS)} is a feature")) from None
            raise
    keys = [row[header.index(key)].strip() for row in rows[1:]]
    return keys, key, matrix, None


def _read_parquet(path: Path):
    try:
        import pandas as pd
    except ImportError:
        pd = None
    engines = [name for name in ("pyarrow", "fastparquet") if _importable(name)]
    if pd is None or not engines:
        raise ImportRefused(f"{path}: reading parquet needs pandas and pyarrow, not installed here: pip install "
                            f"pyarrow (or save the embeddings as .npz or .csv)")
    try:
        table = pd.read_parquet(path, engine=engines[0])
    except Exception as exc:  # the engine's own error types
        raise ImportRefused(f"{path}: not a readable parquet file ({one_line(exc)})") from None
    key = next((k for k in _KEYS if k in table.columns), None)
    if key is None:
        raise ImportRefused(f"{path}: no key column: name one 'sha256' or 'path'")
    keys = [str(k) for k in table[key].tolist()]
    if "features" in table.columns and table["features"].dtype == object:
        vectors = table["features"].tolist()
        if len({np.shape(v) for v in vectors}) > 1:
            raise ImportRefused(f"{path}: the 'features' vectors differ in length (ragged rows)")
        return keys, key, np.asarray(vectors, dtype=np.float64), None
    features = table.drop(columns=[k for k in _KEYS if k in table.columns])
    bad = [c for c in features.columns if features[c].dtype.kind not in "fiu"]
    if bad:
        raise ImportRefused(f"{path}: column {bad[0]!r} is not numeric; every column besides sha256/path is a feature")
    return keys, key, features.to_numpy(), None


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _check_numbers(path: Path, name: str, values: np.ndarray) -> None:
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            raise ImportRefused(f"{path}: {int(bad.sum())} rows of '{name}' hold NaN or infinite values (first: row "
                                f"{int(np.argmax(bad))}): remove or recompute them")


def _hashes(path: Path, keys: list[str], key: str, root, hash_cache) -> list[str]:
    if key == "sha256":
        hashes = [k.strip().lower() for k in keys]
        wrong = [i for i, h in enumerate(hashes) if not _SHA256.fullmatch(h)]
        if wrong:
            raise ImportRefused(one_line(f"{path}: {len(wrong)} sha256 keys are not 64 hex digits (first: row "
                                         f"{wrong[0]}, {keys[wrong[0]]!r}): give each image file's SHA-256"))
        return hashes
    from xrayfeat.data.hashes import HashCache, hash_files

    base = Path(root) if root is not None else path.parent
    files = [os.path.abspath(k if os.path.isabs(k) else base / k) for k in keys]
    missing = [i for i, f in enumerate(files) if not os.path.isfile(f)]
    if missing:
        raise ImportRefused(one_line(
            f"{path}: {len(missing)} of {len(files)} paths are not files (first: {keys[missing[0]]!r} under {base}): "
            f"pass --root the folder the paths are relative to, or give a sha256 column"))
    cache = HashCache(hash_cache)
    problems = []

    def error(i, reason):
        problems.append(ImportRefused(one_line(f"{path}: path {keys[i]!r}: {reason}")))
        return problems[-1]

    _, digests = hash_files(files, cache, error)
    cache.save()
    return list(digests)


def _check_unique(path: Path, hashes: list[str], keys: list[str], key: str) -> None:
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h in first:
            same = "" if key == "sha256" else " (two paths, the same image bytes)"
            raise ImportRefused(one_line(f"{path}: duplicate keys: rows {first[h]} and {i} are the same image{same} "
                                         f"({keys[i]!r}); give each image one row"))
        first[h] = i


# --------------------------------------------------------------------------- the names of a cache folder


def imported_names(cache_dir) -> dict[str, dict]:
    """Each name imported into ``cache_dir`` → its entry (store folder, fingerprint id, file, format, rows, time)."""
    target = Path(cache_dir) / IMPORTS_FILE
    try:
        data = json.loads(target.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ImportRefused(f"{target}: unreadable ({type(exc).__name__}): delete it and import the files again") from None
    names = data.get("names") if isinstance(data, dict) else None
    if not isinstance(names, dict):
        raise ImportRefused(f"{target}: not a map of imported names: delete it and import the files again")
    return names


def imported_entry(cache_dir, name: str) -> tuple[dict, FeatureStore] | None:
    """(the entry, its store) of ``name`` in ``cache_dir``, or None when no features are imported under it."""
    if name in BACKBONES:
        return None
    entry = imported_names(cache_dir).get(name)
    if not isinstance(entry, dict) or not (Path(cache_dir) / str(entry.get("store", "")) / "fingerprint.json").is_file():
        return None
    store = FeatureStore.at(Path(cache_dir) / entry["store"])
    if not is_imported(store.fingerprint):
        return None
    return entry, store


def imported_options(options: FeatureOptions, cache_dir) -> FeatureOptions:
    """``options`` naming features imported into ``cache_dir`` as those of their store, else ``options`` as they are.

    The options of imported features claim nothing xrayfeat did not compute:
    ``weights="imported"``, no input size nor layer, ``precision="auto"``, the
    store's dtype and what it keeps.
    """
    if options.backbone in BACKBONES or cache_dir is None:
        return options
    found = imported_entry(cache_dir, options.backbone)
    if found is None:
        return options
    fingerprint = found[1].fingerprint
    return replace(options, weights=IMPORTED_WEIGHTS, image_size=None, layer=None, precision="auto",
                   store_dtype=fingerprint["store_dtype"], keep=fingerprint.get("keep", "both"))


def _save_name(cache_dir: Path, name: str, entry: dict, replace_name: bool) -> str | None:
    """Point ``name`` at ``entry``'s store; the store it pointed at before (None: new, or the same)."""
    with writing(cache_dir), flock(cache_dir / "imports.lock", fcntl.LOCK_EX):
        names = imported_names(cache_dir)
        before = names.get(name)
        previous = None
        if isinstance(before, dict) and before.get("fingerprint_id") != entry["fingerprint_id"] \
                and (cache_dir / str(before.get("store", ""))).is_dir():
            if not replace_name:
                raise ImportRefused(one_line(
                    f"{cache_dir}: the name {name!r} already names other imported features (store {before.get('store')},"
                    f" from {before.get('file')}): pass --replace to point it at these, or choose another --name"))
            previous = str(cache_dir / before["store"])
        names[name] = entry
        atomic_write(cache_dir / IMPORTS_FILE, json.dumps({"names": names}, indent=1, sort_keys=True))
    return previous


# --------------------------------------------------------------------------- the import


def import_features(file, name: str, *, cache_dir="data_cache", model: str = "", source_url: str = "",
                    description: str = "", root=None, replace_name: bool = False) -> ImportResult:
    """Import the embeddings of ``file`` into ``cache_dir`` under ``name``; see the module docstring.

    Refused in one line (:class:`ImportRefused`, exit 2): a name that is a
    backbone's or not a plain name, a file that cannot be read as embeddings,
    and a name that already names other features (unless ``replace_name``).
    Importing the same file with the same declarations again writes nothing.
    """
    from xrayfeat.store.catalog import check_cache_target

    check_import_name(name)
    for label, text in (("model", model), ("source_url", source_url), ("description", description)):
        if not isinstance(text, str):
            raise TypeError(f"{label} must be a str, got {type(text).__name__}")
    cache = check_cache_target(cache_dir)
    path = Path(file)
    embeddings = read_embeddings(path, root=root, hash_cache=cache / "file-hashes.json" if cache.is_dir() else None)
    digest = file_digest(path)
    fingerprint = {"kind": IMPORTED, "file_sha256": digest, "model": model.strip(), "source_url": source_url.strip(),
                   "description": description.strip(), "store_dtype": embeddings.dtype}
    if embeddings.spatial is None:
        fingerprint["keep"] = "pooled"
    taken = imported_names(cache).get(name) if (cache / IMPORTS_FILE).is_file() else None
    if isinstance(taken, dict) and taken.get("fingerprint_id") != fingerprint_id(fingerprint) and not replace_name \
            and (cache / str(taken.get("store", ""))).is_dir():
        raise ImportRefused(one_line(
            f"{cache}: the name {name!r} already names other imported features (store {taken.get('store')}, from "
            f"{taken.get('file')}): pass --replace to point it at {path}, or choose another --name"))
    provenance = {"imported_from": str(path.resolve()), "format": embeddings.format, "key": embeddings.key,
                  **({"converted": embeddings.converted} if embeddings.converted else {})}
    store = FeatureStore.open(cache, fingerprint, create=True)
    written = 0
    with store.writer(provenance) as session:
        todo = set(session.missing(embeddings.hashes))
        rows = [i for i, h in enumerate(embeddings.hashes) if h in todo]
        for start in range(0, len(rows), _ROWS_PER_SHARD):
            chunk = rows[start:start + _ROWS_PER_SHARD]
            spatial = None if embeddings.spatial is None else embeddings.spatial[chunk]
            session.append([embeddings.hashes[i] for i in chunk], spatial, embeddings.pooled[chunk])
            written += len(chunk)
    entry = {"store": store_dirname(fingerprint), "fingerprint_id": store.fingerprint_id, "file": str(path.resolve()),
             "file_sha256": digest, "format": embeddings.format, "rows": len(embeddings.hashes),
             "imported": utc_timestamp()}
    previous = _save_name(cache, name, entry, replace_name)
    return ImportResult(
        name=name, store=str(store.path), fingerprint_id=store.fingerprint_id, file=str(path), file_sha256=digest,
        format=embeddings.format, key=embeddings.key, rows=len(embeddings.hashes), written=written,
        pooled=list(embeddings.pooled.shape), spatial=None if embeddings.spatial is None else list(embeddings.spatial.shape),
        store_dtype=embeddings.dtype, converted=embeddings.converted, replaced=previous,
        provenance={k: fingerprint[k] for k in ("model", "source_url", "description")},
    )
