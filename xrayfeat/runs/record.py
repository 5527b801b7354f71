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
unpickles or deserialises it. Runs written before the schema existed (the
first ``config.json`` layout) are read and upgraded in memory; their warnings
have no recorded kind and are shown as ``other``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from xrayfeat.errors import RunError
from xrayfeat.fileio import atomic_write, file_digest, fsync_dir, write_json
from xrayfeat.runs.folder import MARKER, UNFINISHED, unfinished_state

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

    kind: str
    message: str

    def __post_init__(self):
        if self.kind not in WARNING_KINDS:
            raise ValueError(f"The 'kind' of RunWarning must be one of {sorted(WARNING_KINDS)}. Got {self.kind!r} instead.")

    def __str__(self) -> str:
        return self.message


#: The warning every study on random backbone weights carries (fit-head, evaluate, and report for older runs).
RANDOM_WEIGHTS_WARNING = RunWarning("random_weights", "RANDOM backbone weights (--weights none): results say nothing "
                                                      "about ImageNet transfer")


@dataclass(frozen=True)
class Artifact:
    """A file of the run (path relative to the run folder) and the sha256 it had when written."""

    file: str
    sha256: str


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
        if not target.is_file():
            raise RunError(f"{target}: missing; the run folder is incomplete (re-run {_writer_of(name)})")
        return target, entry

    @staticmethod
    def _check(name: str, target: Path, digest: str, entry: Artifact) -> None:
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
        rows = list(csv.DictReader(io.StringIO(self.read_bytes("history").decode())))
        return [{k: finite_float(v) for k, v in row.items() if k} for row in rows]

    def predictions_csv(self) -> str:
        return self.read_bytes("predictions").decode()

    def split_hashes(self) -> dict[str, str] | None:
        """sha256 → role (train, val, test) of every image the study used; None for runs that did not record it."""
        if "splits" not in self.artifacts:
            return None
        rows = csv.DictReader(io.StringIO(self.read_bytes("splits").decode()))
        return {row["sha256"]: row["split"] for row in rows}

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        data["artifacts"] = {k: asdict(v) for k, v in self.artifacts.items()}
        data["warnings"] = [asdict(w) for w in self.warnings]
        return {"schema": self.schema, **{k: v for k, v in data.items() if k != "schema"}}

    @classmethod
    def from_json(cls, data: dict, path: Path | None = None) -> RunRecord:
        data = dict(data)
        schema = data.get("schema", 1)
        if schema == 1:
            data = _upgrade_v1(data)
        elif schema != SCHEMA_VERSION:
            raise RunError(f"{path}: run record schema {schema} is newer than this xrayfeat reads ({SCHEMA_VERSION}); "
                           f"upgrade xrayfeat")
        known = {f.name for f in fields(cls)} - {"path"}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise RunError(f"{path}: run record lacks {', '.join(missing)}; re-run fit-head")
        record = cls(**{k: v for k, v in data.items() if k in known}, path=path)
        record.artifacts = {k: Artifact(**v) for k, v in (data.get("artifacts") or {}).items()}
        record.warnings = [RunWarning(**w) for w in data.get("warnings") or []]
        return record


def _writer_of(artifact: str) -> str:
    """The command that writes an artifact (what to re-run when it is missing or changed)."""
    return "xrayfeat evaluate" if artifact.startswith("external/") else "fit-head"


def _upgrade_v1(data: dict) -> dict:
    """The first config.json layout (no schema; warnings as strings; files.head/files.baselines)."""
    files = data.pop("files", {}) or {}
    artifacts = {}
    if files.get("head"):
        artifacts["head"] = files["head"]
    for name, entry in (files.get("baselines") or {}).items():
        artifacts[f"baseline/{name}"] = entry
    data["artifacts"] = artifacts
    data["warnings"] = [{"kind": "other", "message": str(w)} for w in data.get("warnings") or []]
    data["schema"] = SCHEMA_VERSION
    data.setdefault("baselines", {})
    return data


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
    if not isinstance(data, dict):
        raise RunError(f"{path / 'config.json'}: run record is damaged (not a JSON object); re-run fit-head")
    legacy = data.get("schema") is None
    record = RunRecord.from_json(data, path)
    if legacy and (path / "metrics.json").is_file():  # the first layout did not checksum its metrics
        record.artifacts.setdefault("metrics", Artifact("metrics.json", file_digest(path / "metrics.json")))
        for name, file in (("history", "history.csv"), ("predictions", "predictions.csv")):
            if (path / file).is_file():
                record.artifacts.setdefault(name, Artifact(file, file_digest(path / file)))
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
    rows = ["epoch," + ",".join(keys) + ",seconds"]
    n = max((len(v) for v in history.values()), default=0)
    for i in range(n):
        values = [f"{history[k][i]:.6g}" if i < len(history[k]) else "" for k in keys]
        seconds = f"{epoch_seconds[i]:.4f}" if i < len(epoch_seconds) else ""
        rows.append(",".join([str(i + 1), *values, seconds]))
    atomic_write(path, "\n".join(rows) + "\n")


def write_splits(path: Path, used) -> None:
    """Every image the study used and its role (train, val, test): what ``evaluate`` must not count as external."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sha256", "split", "label", "path"])
    for item, role in used:
        writer.writerow([item.sha256, role, item.label, item.relpath])
    atomic_write(path, out.getvalue())


def write_predictions(path: Path, items, y_true, classes, probabilities: dict) -> None:
    """One row per test image: path, sha256, patient, source, true label, then P(class) per model."""
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["path", "sha256", "patient_id", "source", "label", "y_true"]
    for model in probabilities:
        header += [f"{model}:{c}" for c in classes]
    writer.writerow(header)
    for i, item in enumerate(items):
        row = [item.relpath, item.sha256, item.patient_id or "", item.source or "", item.label, int(y_true[i])]
        for proba in probabilities.values():
            row += [f"{p:.6g}" for p in proba[i]]
        writer.writerow(row)
    atomic_write(path, out.getvalue())
