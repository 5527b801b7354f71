"""The run record: one typed, versioned description of one experiment, and its folder.

``runs/<name>/`` holds

* ``config.json``: the :class:`RunRecord` (schema :data:`SCHEMA_VERSION`): every
  option, the store fingerprint, versions, weights identity, timings, warnings
  (each a :class:`RunWarning` with a kind) and the sha256 of every artifact;
* ``metrics.json``: head and each baseline on test (an artifact of the record);
* ``history.csv``, ``predictions.csv`` (every test image with each model's class
  probabilities, so metrics can be recomputed), ``splits.csv`` (every image used
  and its role: train, val or test), ``head.keras``,
  ``baselines/<name>.joblib`` and the plots: artifacts too.

``config.json`` is written last, so a folder without it is not a run. Every
file is written atomically (:mod:`xrayfeat.fileio`).

One fit-head per folder: :func:`new_run_dir` claims the folder by creating the
:data:`MARKER` file ``INCOMPLETE`` first (atomically and only if absent; it
names the process: pid, host, start time) and :func:`write_record` removes it
after ``config.json`` is written. A second fit-head into the same ``--out``
finds the marker (or a finished run) and stops in one line instead of
interleaving its files with the first. A folder that still holds the marker is
a run being written (its process is alive) or an incomplete one (killed, or
failed: :func:`abandon_run_dir` records why); every reader refuses it in one
line that says which, as it refuses a folder of run files without
``config.json``.

Reading goes through :func:`read_record` and :meth:`RunRecord.verified`, the
one place where an artifact's sha256 is checked before anything parses,
unpickles or deserialises it. ``config.json`` itself is untrusted input too:
:func:`check_record` checks its types, required keys and file names (each
inside the run folder) against one table before anything is built from it, so
a damaged or hostile record is one :class:`~xrayfeat.errors.RunError` line.

Runs written before the schema existed (the first ``config.json`` layout) are
read and upgraded in memory; their warnings have no recorded kind and are
shown as ``other``. Their head and baselines carry the sha256 that layout
recorded; their tables (metrics, history, predictions) had none and get none:
they are read as they are, with a warning saying they were
:data:`UNVERIFIED_NOTE` (:attr:`RunRecord.verified_artifacts` is False).
"""

from __future__ import annotations

import json
import logging
import os
from itertools import zip_longest
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from xrayfeat.errors import RunError
from xrayfeat.fileio import atomic_write, csv_rows, csv_text, file_digest, fsync_dir, write_json
from xrayfeat.options.constraints import Choice, option, validate
from xrayfeat.options.settings import current_keys
from xrayfeat.runs.folder import MARKER, UNFINISHED, unfinished_state

log = logging.getLogger("xrayfeat")

#: Version of the config.json layout written by this xrayfeat.
SCHEMA_VERSION = 2



#: Warning kinds, most serious first, with the heading a report gives them.
WARNING_KINDS: dict[str, str] = {
    "random_weights": "Random weights",
    "leakage": "Leakage",
    "shortcut": "Shortcut sentinel",
    "source_gap": "Source gap",
    "small_test": "Small test set",
    "overlap": "External data overlaps training",
    "missing_class": "Classes missing from external data",
    "device": "Device",
    "imbalance": "Class imbalance",
    "subsample": "Baselines on a sample",
    "other": "Other",
}



@dataclass(frozen=True)
class RunWarning:
    """One warning a study raised: its kind (a key of :data:`WARNING_KINDS`) and the sentence shown."""

    kind: str = option(check=Choice(tuple(WARNING_KINDS)), help="What the warning is about; the report groups by it.")
    message: str

    def __post_init__(self):
        validate(self)

    def __str__(self) -> str:
        return self.message


#: The warning every study on random backbone weights carries (fit-head, evaluate, and report for older runs).
RANDOM_WEIGHTS_WARNING = RunWarning("random_weights", "RANDOM backbone weights (--weights none): results say nothing "
                                                      "about ImageNet transfer")


@dataclass(frozen=True)
class Artifact:
    """A file of the run (path relative to the run folder) and the sha256 it had when written.

    ``sha256`` is None only for the tables of a run written before checksums
    (:data:`UNCHECKSUMMED`): read as they are, and said so (:data:`UNVERIFIED_NOTE`).
    """

    file: str
    sha256: str | None


#: What a reader says of a file whose run recorded no sha256 for it.
UNVERIFIED_NOTE = "written before checksums; not verified"

#: The artifacts the first config.json layout did not checksum: the only ones whose sha256 may be null.
UNCHECKSUMMED = ("metrics", "history", "predictions")


@dataclass
class RunRecord:
    """What ``fit-head`` did and produced; see the module docstring for the folder it describes."""

    xrayfeat: str
    created: str
    data: str
    task: str
    classes: list[str]
    counts: dict
    validation: str
    features: dict  # FeatureOptions as a dict
    head: dict  # HeadOptions as a dict, validation_steps resolved
    run: dict
    store: dict  # path, fingerprint, fingerprint_id
    weights: dict  # kind, identity, path, random
    params: dict
    training: dict
    timings: dict
    baselines: dict  # each baseline's summary (search grid, best parameters)
    versions: dict
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    warnings: list[RunWarning] = field(default_factory=list)
    external: dict = field(default_factory=dict)  # name -> what `evaluate` found on another site's data
    skipped_files: list[str] = field(default_factory=list)  # "path: reason" per image left out (--on-error skip)
    schema: int = SCHEMA_VERSION
    path: Path | None = None  # the folder it was read from or written to; not stored

    def __post_init__(self):
        # runs written before the head options' renames (lr, n_boot, batch_size, backend) read under today's names
        self.head = current_keys("HeadOptions", self.head)

    # ------------------------------------------------------------------ views

    @property
    def name(self) -> str:
        return self.path.name if self.path else ""

    @property
    def random_weights(self) -> bool:
        return bool(self.weights.get("random")) or str(self.store.get("fingerprint", {}).get("weights", "")).startswith("none")

    @property
    def backbone(self) -> str:
        return self.features["backbone"]

    @property
    def head_input(self) -> str:
        """The feature part the head reads: ``spatial`` (the seed's, and every run before ``--head-input``) or ``pooled``."""
        return self.head.get("head_input", "spatial")

    @property
    def baseline_names(self) -> list[str]:
        return [name.split("/", 1)[1] for name in self.artifacts if name.startswith("baseline/")]

    @property
    def verified_artifacts(self) -> bool:
        """Whether every artifact has a recorded sha256: False for a run written before checksums."""
        return not self.unverified_artifacts

    @property
    def unverified_artifacts(self) -> list[str]:
        """The artifacts recorded without a sha256 (:data:`UNCHECKSUMMED` of a run of the first layout)."""
        return [name for name, entry in self.artifacts.items() if entry.sha256 is None]

    # ------------------------------------------------------------------ artifacts

    def verified(self, name: str) -> Path:
        """The path of artifact ``name`` after checking its sha256; :class:`RunError` when it differs.

        For readers that need a path (Keras loads a file); the others use
        :meth:`read_bytes`. Names: ``head``, ``head_arrays``, ``metrics``,
        ``history``, ``predictions``, ``splits``, ``baseline/<name>``, the figures
        (``curves``, ``confusion``, ``roc``) and ``external/<name>/<part>``.
        """
        target, entry = self._locate(name)
        self._check(name, target, file_digest(target), entry)
        return target

    def read_bytes(self, name: str) -> bytes:
        """An artifact's bytes, read once and checked against its recorded sha256: what is checked is what is used."""
        import hashlib

        target, entry = self._locate(name)
        data = target.read_bytes()
        self._check(name, target, hashlib.sha256(data).hexdigest(), entry)
        return data

    def _locate(self, name: str) -> tuple[Path, Artifact]:
        if self.path is None:
            raise ValueError("this RunRecord has no folder (path is None)")
        entry = self.artifacts.get(name)
        if entry is None:
            raise RunError(f"{self.path}: the run records no artifact {name!r} (it has: {', '.join(self.artifacts)})")
        target = self.path / entry.file
        if not target.resolve().is_relative_to(self.path.resolve()):  # a link out of the folder, or a record made so
            raise RunError(f"{target}: lies outside the run folder {self.path}; refusing to read it "
                           f"(restore the file or re-run {_writer_of(name)})")
        if not target.is_file():
            raise RunError(f"{target}: missing; the run folder is incomplete (re-run {_writer_of(name)})")
        return target, entry

    def _check(self, name: str, target: Path, digest: str, entry: Artifact) -> None:
        if entry.sha256 is None:  # a table of a run written before checksums: used as it is, and said once
            said = self.__dict__.setdefault("_said_unverified", set())
            if name not in said:
                said.add(name)
                log.warning("%s: %s (a run of the first config.json layout); re-run fit-head for a run whose files "
                            "are checked", target, UNVERIFIED_NOTE)
            return
        if digest != entry.sha256:
            raise RunError(f"{target}: sha256 differs from the one recorded in config.json; refusing to read it "
                           f"(restore the file or re-run {_writer_of(name)})")

    def metrics(self) -> dict:
        """``{"head": {...}, "baselines": {name: {...}}}`` from the checked ``metrics.json``."""
        try:
            data = json.loads(self.read_bytes("metrics"))
        except ValueError as exc:
            raise RunError(f"{self.path / 'metrics.json'}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("head"), dict):
            raise RunError(f"{self.path / 'metrics.json'}: has no head metrics; re-run fit-head")
        data.setdefault("baselines", {})
        return data

    def history(self) -> list[dict]:
        """``history.csv`` as rows of {column: float or None}."""
        header, *rows = csv_rows(self.read_bytes("history").decode()) or [[]]
        return [{k: finite_float(v) for k, v in zip_longest(header, row) if k} for row in rows]

    def predictions_csv(self) -> str:
        return self.read_bytes("predictions").decode()

    def split_hashes(self) -> dict[str, str] | None:
        """sha256 → role (train, val, test) of every image the study used; None for runs that did not record it."""
        if "splits" not in self.artifacts:
            return None
        header, *rows = csv_rows(self.read_bytes("splits").decode()) or [[]]
        return {entry["sha256"]: entry["split"] for entry in (dict(zip_longest(header, row)) for row in rows)}

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        data["artifacts"] = {k: asdict(v) for k, v in self.artifacts.items()}
        data["warnings"] = [asdict(w) for w in self.warnings]
        return {"schema": self.schema, **{k: v for k, v in data.items() if k != "schema"}}

    @classmethod
    def from_json(cls, data: dict, path: Path | None = None) -> RunRecord:
        """The record ``data`` (config.json, either layout) describes, after :func:`check_record` found it sound."""
        where = path / "config.json" if path is not None else "run record"
        schema = check_record(data, where)
        data = _upgrade_v1(data) if schema == 1 else dict(data)
        known = {f.name for f in fields(cls)} - {"path", "artifacts", "warnings"}
        record = cls(**{k: v for k, v in data.items() if k in known}, path=path)
        record.artifacts = {k: Artifact(v["file"], v["sha256"]) for k, v in (data.get("artifacts") or {}).items()}
        # a kind a newer xrayfeat added reads as "other": the sentence is kept, the heading is the generic one
        record.warnings = [RunWarning(w["kind"] if w["kind"] in WARNING_KINDS else "other", w["message"])
                           for w in data.get("warnings") or []]
        return record


def _writer_of(artifact: str) -> str:
    """The command that writes an artifact (what to re-run when it is missing or changed)."""
    return "xrayfeat evaluate" if artifact.startswith("external/") else "fit-head"


def _upgrade_v1(data: dict) -> dict:
    """The first config.json layout (no schema; warnings as strings; files.head/files.baselines), checked, as schema 2.

    Its ``files`` hold the head's and the baselines' sha256; its tables had
    none, and get none here (:func:`read_record` records them unverified).
    """
    data = dict(data)
    files = data.pop("files", None) or {}
    artifacts = {}
    if files.get("head"):
        artifacts["head"] = files["head"]
    for name, entry in (files.get("baselines") or {}).items():
        artifacts[f"baseline/{name}"] = entry
    data["artifacts"] = artifacts
    data["warnings"] = [{"kind": "other", "message": w} for w in data.get("warnings") or []]
    data["schema"] = SCHEMA_VERSION
    data.setdefault("baselines", {})
    return data


# --------------------------------------------------------------------------- the schema
#
# config.json is read as untrusted input: one table says what each key must
# hold, and check_record walks it before anything is built from the record.


def _json_value(value) -> str:
    """A JSON value as an error message shows it: its type for containers, a short repr otherwise."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


@dataclass(frozen=True)
class _Is:
    """A JSON scalar or container of one of ``types`` (true and false are not integers)."""

    types: tuple
    what: str

    def problem(self, value, where: str) -> str | None:
        if isinstance(value, self.types) and (bool in self.types or not isinstance(value, bool)):
            return None
        return f"{where} must be {self.what}; got {_json_value(value)}"


@dataclass(frozen=True)
class _ListOf:
    item: object
    what: str
    at_least: int = 0

    def problem(self, value, where: str) -> str | None:
        if not isinstance(value, list):
            return f"{where} must be {self.what}; got {_json_value(value)}"
        if len(value) < self.at_least:
            return f"{where} must be {self.what}; got {len(value)}"
        return next(filter(None, (self.item.problem(v, f"{where}[{i}]") for i, v in enumerate(value))), None)


@dataclass(frozen=True)
class _MapOf:
    value: object

    def problem(self, value, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} must be an object; got {_json_value(value)}"
        return next(filter(None, (self.value.problem(v, _at(where, k)) for k, v in value.items())), None)


@dataclass(frozen=True)
class _Object:
    """An object with these keys (others are allowed: a newer writer's), ``required`` among them."""

    keys: dict
    required: tuple = ()

    def problem(self, value, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} must be an object; got {_json_value(value)}"
        for key in self.required:
            if key not in value:
                return f"{_at(where, key)} is missing"
        return next(filter(None, (shape.problem(value[key], _at(where, key))
                                  for key, shape in self.keys.items() if key in value)), None)


@dataclass(frozen=True)
class _Optional:
    """``shape``, or null."""

    shape: object

    def problem(self, value, where: str) -> str | None:
        return None if value is None else self.shape.problem(value, where)


@dataclass(frozen=True)
class _RelativePath:
    """A file name inside the run folder: relative, no ``..``, no control characters."""

    def problem(self, value, where: str) -> str | None:
        from pathlib import PurePosixPath

        if (isinstance(value, str) and value and value.isprintable() and "\\" not in value
                and not PurePosixPath(value).is_absolute() and ".." not in PurePosixPath(value).parts):
            return None
        return f"{where} must be a relative path inside the run folder; got {_json_value(value)}"


@dataclass(frozen=True)
class _Digest:
    """A sha256 in hex; null too where ``nullable`` (a table of a run written before checksums)."""

    nullable: bool = False

    def problem(self, value, where: str) -> str | None:
        if value is None and self.nullable:
            return None
        if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            return None
        return f"{where} must be a sha256 (64 hex digits); got {_json_value(value)}"


@dataclass(frozen=True)
class _Artifacts:
    """Artifact name → {file, sha256}; the sha256 may be null only for :data:`UNCHECKSUMMED` names."""

    def problem(self, value, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} must be an object; got {_json_value(value)}"
        for name, entry in value.items():
            shape = _Object({"file": _RelativePath(), "sha256": _Digest(nullable=name in UNCHECKSUMMED)},
                            required=("file", "sha256"))
            found = shape.problem(entry, _at(where, name))
            if found:
                return found
        return None


_TEXT = _Is((str,), "a string")
_OBJECT = _Is((dict,), "an object")
_ARTIFACT = _Object({"file": _RelativePath(), "sha256": _Digest()}, required=("file", "sha256"))

#: What each key of a schema-2 record holds (every field of :class:`RunRecord` but ``path``).
_RECORD = {
    "xrayfeat": _TEXT, "created": _TEXT, "data": _TEXT, "task": _TEXT, "validation": _TEXT,
    "classes": _ListOf(_TEXT, "a list of at least 2 class names", at_least=2),
    "counts": _MapOf(_Is((int,), "an integer")),
    "features": _Object({"backbone": _TEXT}, required=("backbone",)),
    "head": _Object({"head_input": _TEXT}),
    "run": _OBJECT,
    "store": _Object({"path": _TEXT, "fingerprint": _OBJECT, "fingerprint_id": _TEXT}, required=("path", "fingerprint")),
    "weights": _OBJECT, "params": _OBJECT, "training": _OBJECT, "timings": _OBJECT, "baselines": _OBJECT,
    "versions": _OBJECT,
    "artifacts": _Artifacts(),
    "warnings": _ListOf(_Object({"kind": _TEXT, "message": _TEXT}, required=("kind", "message")),
                        "a list of {kind, message} objects"),
    "external": _MapOf(_OBJECT),
    "skipped_files": _ListOf(_TEXT, "a list of strings"),
    "schema": _Is((int,), "an integer"),
}

#: The first layout's own keys, checked before it is upgraded.
_RECORD_V1 = {
    "files": _Optional(_Object({"head": _Optional(_ARTIFACT), "baselines": _Optional(_MapOf(_ARTIFACT))})),
    "warnings": _Optional(_ListOf(_TEXT, "a list of strings")),
}


def check_record(data, where) -> int:
    """The schema of config.json ``data`` (1: the first layout, or 2); :class:`RunError` naming ``where`` when damaged.

    Types, required keys and artifact file names (inside the run folder) are
    checked against one table (:data:`_RECORD`, and :data:`_RECORD_V1` for the
    first layout), so every way a record can be wrong is one line, never a
    ``TypeError`` or ``KeyError`` from a reader further on.
    """
    def damaged(problem: str) -> RunError:
        return RunError(f"{where}: run record is damaged ({problem}); restore config.json or re-run fit-head")

    if not isinstance(data, dict):
        raise damaged(f"not a JSON object but {_json_value(data)}")
    schema = data.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise damaged(f"schema must be a positive integer; got {_json_value(schema)}")
    if schema > SCHEMA_VERSION:
        raise RunError(f"{where}: run record schema {schema} is newer than this xrayfeat reads ({SCHEMA_VERSION}); "
                       f"upgrade xrayfeat")
    if schema == 1:
        problem = _Object({k: v for k, v in _RECORD_V1.items() if k in data}).problem(data, "")
        if problem:
            raise damaged(problem)
        data = _upgrade_v1(data)
    required = tuple(f.name for f in fields(RunRecord) if f.default is MISSING and f.default_factory is MISSING)
    problem = _Object(_RECORD, required=required).problem(data, "")
    if problem:
        raise damaged(problem)
    return schema


def finite_float(value) -> float | None:
    """``float(value)`` when that is a finite number, else None (how history cells and report values are read)."""
    import math

    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- reading


def read_record(path: str | os.PathLike) -> RunRecord:
    """The run record of a folder; one clear line when the folder is not a run or its record is damaged."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file"
        raise RunError(f"{path}: not a run folder ({what}); pass a folder made by fit-head")
    unfinished = unfinished_state(path)
    if unfinished:
        state, detail = unfinished
        what, fix = UNFINISHED[state]
        raise RunError(f"{path}: {what} ({detail}); {fix}")
    try:
        data = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not a run folder (no config.json); pass a folder made by fit-head") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"{path / 'config.json'}: run record is damaged ({exc}); re-run fit-head") from None
    legacy = isinstance(data, dict) and "schema" not in data
    record = RunRecord.from_json(data, path)
    if legacy:  # the first layout did not checksum its tables: they are recorded with none, never with today's
        for name, file in zip(UNCHECKSUMMED, ("metrics.json", "history.csv", "predictions.csv")):
            if (path / file).is_file():
                record.artifacts.setdefault(name, Artifact(file, None))
    return record


# --------------------------------------------------------------------------- writing



def artifact(run_dir: Path, name: str, file: str) -> tuple[str, Artifact]:
    """``(name, Artifact)`` for a file already written in ``run_dir``, with its sha256."""
    return name, Artifact(file, file_digest(run_dir / file))


def write_record(record: RunRecord, run_dir: Path) -> Path:
    """Write ``config.json`` last, then remove the folder's marker: a record without a marker is a complete run."""
    target = Path(run_dir) / "config.json"
    write_json(target, record.to_json())
    (Path(run_dir) / MARKER).unlink(missing_ok=True)
    fsync_dir(run_dir)
    record.path = Path(run_dir)
    return target


def write_history(path: Path, history: dict, epoch_seconds) -> None:
    """One row per epoch: every logged metric, then the epoch's seconds."""
    keys = list(history)
    rows = [["epoch", *keys, "seconds"]]
    n = max((len(v) for v in history.values()), default=0)
    for i in range(n):
        values = [f"{history[k][i]:.6g}" if i < len(history[k]) else "" for k in keys]
        seconds = f"{epoch_seconds[i]:.4f}" if i < len(epoch_seconds) else ""
        rows.append([i + 1, *values, seconds])
    atomic_write(path, csv_text(rows, lineterminator="\n"))


def write_splits(path: Path, used) -> None:
    """Every image the study used and its role (train, val, test): what ``evaluate`` must not count as external."""
    rows = [["sha256", "split", "label", "path"], *([item.sha256, role, item.label, item.relpath] for item, role in used)]
    atomic_write(path, csv_text(rows))


def write_predictions(path: Path, items, y_true, classes, probabilities: dict) -> None:
    """One row per test image: path, sha256, patient, source, true label, then P(class) per model."""
    header = ["path", "sha256", "patient_id", "source", "label", "y_true"]
    for model in probabilities:
        header += [f"{model}:{c}" for c in classes]
    rows = [header]
    for i, item in enumerate(items):
        row = [item.relpath, item.sha256, item.patient_id or "", item.source or "", item.label, int(y_true[i])]
        for proba in probabilities.values():
            row += [f"{p:.6g}" for p in proba[i]]
        rows.append(row)
    atomic_write(path, csv_text(rows))
