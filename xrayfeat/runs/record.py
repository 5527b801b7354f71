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
unpickles or deserialises it. The record's own files are untrusted input too:
``config.json`` is parsed strictly (no duplicate key, no NaN, no number beyond
64 bits) and held by :func:`check_record` against its schema version's declared
schema (:mod:`xrayfeat.runs.schema`: types, required and unexpected fields, file
names inside the run folder, classes against the task and the head's settings)
before anything is built from it; then :meth:`RunRecord.check_files` holds
``metrics.json``, each evaluation's metrics and the predictions tables' headers
against their schemas and the run's classes. So a damaged or hostile record is
refused when the run is loaded, by every command alike, in one
:class:`~xrayfeat.runs.schema.Damaged` line (a :class:`~xrayfeat.errors.RunError`,
exit 2): ``FILE: run record damaged: FIELD: expected ..., got ...; re-run fit-head``.

Runs written before the schema existed (the first ``config.json`` layout) are
read and upgraded in memory; their warnings have no recorded kind and are
shown as ``other``. Their head and baselines carry the sha256 that layout
recorded; their tables (metrics, history, predictions) had none and get none:
they are read as they are, with a warning saying they were
:data:`UNVERIFIED_NOTE` (:attr:`RunRecord.verified_artifacts` is False).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from xrayfeat.errors import RunError
from xrayfeat.fileio import atomic_write, csv_text, csv_value, file_digest, fsync_dir, write_json
from xrayfeat.options.constraints import Choice, option, validate
from xrayfeat.options.settings import current_keys
from xrayfeat.runs import schema as schemas
from xrayfeat.runs.folder import MARKER, UNFINISHED, unfinished_state
from xrayfeat.runs.schema import UNCHECKSUMMED

log = logging.getLogger("xrayfeat")

#: Version of the config.json layout written by this xrayfeat.
SCHEMA_VERSION = 2



#: Warning kinds, most serious first, with the heading a report gives them.
WARNING_KINDS: dict[str, str] = {
    "random_weights": "Random weights",
    "leakage": "Leakage",
    "shortcut": "Shortcut sentinel",
    "source_gap": "Source gap",
    "group_gap": "Subgroup gap",
    "small_test": "Small test set",
    "overlap": "External data overlaps training",
    "not_external": "External data is the run's own test data",
    "shared_source": "External data shares the run's sources",
    "missing_class": "Classes missing from external data",
    "device": "Device",
    "imbalance": "Class imbalance",
    "subsample": "Baselines on a sample",
    "replay": "Replay differs from the run it repeats",
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


@dataclass(frozen=True)
class UsedImage:
    """An image a study used (a row of ``splits.csv``): its file's sha256, its role (train, val, test) and label."""

    sha256: str
    role: str
    label: str


_SHA256 = re.compile(r"[0-9a-f]{64}")

#: What a reader says of a file whose run recorded no sha256 for it.
UNVERIFIED_NOTE = "written before checksums; not verified"


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
    multilabel: bool = False  # classes are findings, each a sigmoid of its own (data.labels)
    # a replay (fit-head --config): the run it repeats (path, name, created, config_sha256, xrayfeat) and what differed
    replay_of: dict | None = None
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

    def read_bytes(self, name: str, *, say_unverified: bool = True) -> bytes:
        """An artifact's bytes, read once and checked against its recorded sha256: what is checked is what is used.

        ``say_unverified``: whether reading a table of a run written before checksums logs that it is
        not verified (the check :func:`read_record` makes when loading stays quiet; the reader says it).
        """
        import hashlib

        target, entry = self._locate(name)
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise RunError(f"{target}: cannot be read ({exc.strerror or type(exc).__name__}); check its permissions "
                           f"or re-run {_writer_of(name)}") from None
        self._check(name, target, hashlib.sha256(data).hexdigest(), entry, say_unverified)
        return data

    def _locate(self, name: str) -> tuple[Path, Artifact]:
        if self.path is None:
            raise ValueError("this RunRecord has no folder (path is None)")
        entry = self.artifacts.get(name)
        if entry is None:
            raise RunError(f"{self.path}: the run records no artifact {name!r} (it has: {', '.join(self.artifacts)})")
        target = self.path / entry.file
        try:
            inside = target.resolve().is_relative_to(self.path.resolve())
        except (OSError, RuntimeError):  # a link loop
            inside = False
        if not inside:  # a link out of the folder (or in a loop), or a record made so
            raise RunError(f"{target}: lies outside the run folder {self.path}; refusing to read it "
                           f"(restore the file or re-run {_writer_of(name)})")
        if not target.is_file():
            raise RunError(f"{target}: missing; the run folder is incomplete (re-run {_writer_of(name)})")
        return target, entry

    def _check(self, name: str, target: Path, digest: str, entry: Artifact, say_unverified: bool = True) -> None:
        if entry.sha256 is None:  # a table of a run written before checksums: used as it is, and said once
            said = self.__dict__.setdefault("_said_unverified", set())
            if say_unverified and name not in said:
                said.add(name)
                log.warning("%s: %s (a run of the first config.json layout); re-run fit-head for a run whose files "
                            "are checked", target, UNVERIFIED_NOTE)
            return
        if digest != entry.sha256:
            raise RunError(f"{target}: sha256 differs from the one recorded in config.json; refusing to read it "
                           f"(restore the file or re-run {_writer_of(name)})")

    def metrics(self) -> dict:
        """``{"head": {...}, "baselines": {name: {...}}}`` from the checked ``metrics.json``."""
        return self._metrics("metrics")

    def external_metrics(self, name: str) -> dict:
        """``{"head": {...}, "baselines": {...}}`` of evaluation ``name`` (``external/<name>/metrics.json``), checked."""
        return self._metrics(f"external/{name}/metrics")

    def _metrics(self, name: str, say_unverified: bool = True) -> dict:
        """A metrics artifact: its sha256, then :func:`~xrayfeat.runs.schema.metrics_schema` against this run's classes."""
        target = self._locate(name)[0]
        data = schemas.parse(self._small(name, say_unverified), target, schemas.metrics_schema(),
                             fix=f"re-run {_writer_of(name)}",
                             ctx={"classes": list(self.classes), "multilabel": self.multilabel})
        data.setdefault("baselines", {})
        return data

    def _small(self, name: str, say_unverified: bool = True) -> bytes:
        """:meth:`read_bytes` of an artifact a record reads whole (JSON, a table), refused beyond its size bound."""
        target = self._locate(name)[0]
        size = target.stat().st_size
        if size > schemas.MAX_BYTES:
            raise schemas.Damaged.of(target, f"{size} bytes, more than any record holds ({schemas.MAX_BYTES})",
                                     f"re-run {_writer_of(name)}")
        return self.read_bytes(name, say_unverified=say_unverified)

    def _table(self, name: str, required: tuple = (), say_unverified: bool = True) -> tuple[list[str], list[dict]]:
        """(header, rows) of a CSV artifact; :class:`~xrayfeat.runs.schema.Damaged` when it is not UTF-8 CSV
        holding the columns ``required``."""
        target = self._locate(name)[0]
        fix = f"re-run {_writer_of(name)}"
        try:
            reader = csv.DictReader(io.StringIO(self._small(name, say_unverified).decode("utf-8")))
            header = [csv_value(column) for column in reader.fieldnames or []]  # names as csv_text protected them
            reader.fieldnames = header
            rows = [{k: csv_value(v) if isinstance(v, str) else v for k, v in row.items()} for row in reader]
        except UnicodeDecodeError as exc:
            raise schemas.Damaged.of(target, f"not UTF-8 text ({exc.reason} at byte {exc.start})", fix) from None
        except csv.Error as exc:
            raise schemas.Damaged.of(target, f"not a CSV table ({exc})", fix) from None
        missing = [c for c in required if c not in header]
        if missing:
            raise schemas.Damaged.of(target, f"header: has no column {schemas.show(missing[0])}", fix)
        if len(set(header)) != len(header):
            twice = next(c for c in header if header.count(c) > 1)
            raise schemas.Damaged.of(target, f"header: the column {schemas.show(twice)} appears twice", fix)
        return header, rows

    def history(self) -> list[dict]:
        """``history.csv`` as rows of {column: float or None}, one per epoch (``epoch`` 1, 2, ...)."""
        target = self._locate("history")[0]
        _, rows = self._table("history", ("epoch",))
        for i, row in enumerate(rows):
            if row["epoch"] is None or not row["epoch"].isdigit() or None in row:
                raise schemas.Damaged.of(target, f"row {i + 1}: expected an epoch number and one value per column",
                                         f"re-run {_writer_of('history')}")
        return [{k: finite_float(v) for k, v in row.items() if k} for row in rows]

    def predictions_csv(self) -> str:
        """``predictions.csv`` (its header checked against :data:`PREDICTION_COLUMNS` and the classes) as text."""
        self.check_predictions("predictions")
        return self.read_bytes("predictions").decode("utf-8")

    def check_predictions(self, name: str, say_unverified: bool = True) -> None:
        """A predictions table's header: :data:`PREDICTION_COLUMNS`, then ``<model>:<class>`` for every class.

        Between them, a multi-label run's table has a ``true:<finding>`` column
        per finding, in order, and any table may have ``group:<name>`` columns.
        """
        from xrayfeat.options.settings import BASELINES

        target = self._locate(name)[0]
        header, _ = self._table(name, PREDICTION_COLUMNS, say_unverified)
        rest = header[len(PREDICTION_COLUMNS):]
        truth = [f"{TRUTH_PREFIX}{c}" for c in self.classes] if self.multilabel else []
        if rest[:len(truth)] != truth:
            raise schemas.Damaged.of(target, f"header: expected the columns {', '.join(map(schemas.show, truth))} "
                                     f"after {PREDICTION_COLUMNS[-1]}", f"re-run {_writer_of(name)}")
        rest = rest[len(truth):]
        while rest and rest[0].startswith("group:"):
            rest = rest[1:]
        if name == "predictions_oof":  # the held-out fold, then (with --repeats) the repeat
            if not rest or rest[0] != "fold":
                raise schemas.Damaged.of(target, "header: expected the column \"fold\" before the models' columns",
                                         f"re-run {_writer_of(name)}")
            rest = rest[2:] if rest[1:2] == ["repeat"] else rest[1:]
        models: dict[str, list[str]] = {}
        for column in rest:
            model, _, cls = column.partition(":")
            if column in PREDICTION_COLUMNS or model not in ("head", *BASELINES) or cls not in self.classes:
                raise schemas.Damaged.of(target, f"header: {schemas.show(column)} is not a <model>:<class> column of "
                                         f"this run (classes {', '.join(map(schemas.show, self.classes))})",
                                         f"re-run {_writer_of(name)}")
            models.setdefault(model, []).append(cls)
        for model, seen in models.items():
            if seen != list(self.classes):  # one per class, in the classes' order: a swap shows
                raise schemas.Damaged.of(target, f"header: the {model} columns ({', '.join(map(schemas.show, seen))}) "
                                         f"are not one per class of this run, in its order "
                                         f"({', '.join(map(schemas.show, self.classes))})",
                                         f"re-run {_writer_of(name)}")

    def split_hashes(self) -> dict[str, str] | None:
        """sha256 → role (train, val, test) of every image the study used; None for runs that did not record it."""
        rows = self._split_rows(("sha256", "split"))
        return None if rows is None else {row["sha256"]: row["split"] for row in rows}

    def used_images(self) -> dict[str, UsedImage] | None:
        """Path (relative to the data, as the run saw it) → :class:`UsedImage` of every image the study used.

        From ``splits.csv``; None for runs that did not record it. A path listed twice is damage.
        """
        rows = self._split_rows(("sha256", "split", "label", "path"))
        if rows is None:
            return None
        used: dict[str, UsedImage] = {}
        for i, row in enumerate(rows):
            if not row["path"] or row["path"] in used or not _SHA256.fullmatch(row["sha256"] or ""):
                what = "no path" if not row["path"] else ("a path listed twice" if row["path"] in used else "no sha256")
                raise schemas.Damaged.of(self._locate("splits")[0], f"row {i + 1}: {what}", "re-run fit-head")
            used[row["path"]] = UsedImage(row["sha256"], row["split"], row["label"] or "")
        return used

    def _split_rows(self, required: tuple) -> list[dict] | None:
        """``splits.csv``'s rows, each role checked; None for a run that did not record it."""
        if "splits" not in self.artifacts:
            return None
        target = self._locate("splits")[0]
        _, rows = self._table("splits", required)
        for i, row in enumerate(rows):
            if row["split"] not in ("train", "val", "test"):
                raise schemas.Damaged.of(target, f"row {i + 1}: split: expected train, val or test, got "
                                         f"{schemas.show(row['split'])}", "re-run fit-head")
        return rows

    def check_files(self) -> None:
        """Hold every JSON artifact against its schema, and each predictions table's header against the classes.

        Done by :func:`read_record`, so that a damaged record is refused when a run is loaded, by every
        command alike, not by whichever reader happens to open the damaged file later.
        """
        names = [n for n in self.artifacts if n == "metrics" or (n.startswith("external/") and n.endswith("/metrics"))]
        for name in names:
            self._metrics(name, say_unverified=False)
        for name in ("predictions", "predictions_val", "predictions_oof"):
            if name in self.artifacts:
                self.check_predictions(name, say_unverified=False)

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> dict:
        """``config.json``'s contents; a float that is not finite (a timing never measured) is written as null.

        JSON has no NaN: the schema refuses the ``NaN`` literal Python's encoder would write.
        """
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        data["artifacts"] = {k: asdict(v) for k, v in self.artifacts.items()}
        data["warnings"] = [asdict(w) for w in self.warnings]
        if data["replay_of"] is None:  # only a replay says what it repeats
            del data["replay_of"]
        return _finite_or_null({"schema": self.schema, **{k: v for k, v in data.items() if k != "schema"}})

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


def _finite_or_null(value):
    """``value`` with every float that is not finite (numpy's too) replaced by None, containers copied."""
    import math

    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: The first columns of every predictions table (``predictions.csv``, ``predictions-val.csv``, an evaluation's).
PREDICTION_COLUMNS = ("path", "sha256", "patient_id", "source", "label", "y_true")
#: A multi-label predictions table's ``true:<finding>`` columns hold the data's value of each finding.
TRUTH_PREFIX = "true:"
#: ``predictions-oof.csv``'s columns after the groups: the image's held-out fold, and the repeat (``--repeats``).
FOLD_COLUMNS = ("fold", "repeat")


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
    data.setdefault("external", {})
    data.setdefault("skipped_files", [])
    return data


# --------------------------------------------------------------------------- the schema
#
# config.json is read as untrusted input: its schema, one per version, is declared in
# xrayfeat.runs.schema, and check_record holds it against the record before anything is built from it.

#: What to do about a damaged config.json.
_FIX_RECORD = "restore config.json or re-run fit-head"


def check_record(data, where) -> int:
    """The schema version of config.json ``data`` (1: the first layout, or 2); :class:`Damaged` naming ``where``.

    Types, required and unexpected keys, artifact file names (inside the run folder) and what fields say
    about one another (the classes against the task and the head's settings) are checked against
    :func:`~xrayfeat.runs.schema.config_schema` of the record's version; a record of the first layout is
    checked as it is, then as the schema-2 record it is read as. So every way a record can be wrong is
    one line, never a ``TypeError`` or ``KeyError`` from a reader further on.
    """
    if not isinstance(data, dict):
        raise schemas.Damaged.of(where, f"expected an object, got {schemas.show(data)}", _FIX_RECORD)
    version = data.get("schema", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise schemas.Damaged.of(where, f"schema: expected a positive integer, got {schemas.show(version)}", _FIX_RECORD)
    if version > SCHEMA_VERSION:
        raise RunError(f"{where}: run record schema {version} is newer than this xrayfeat reads ({SCHEMA_VERSION}); "
                       f"upgrade xrayfeat")
    try:
        schemas.check(data, schemas.config_schema(version))
        if version < SCHEMA_VERSION:
            schemas.check(_upgrade_v1(data), schemas.config_schema(SCHEMA_VERSION))
    except schemas.Problem as problem:
        raise schemas.Damaged.of(where, str(problem), _FIX_RECORD) from None
    return version


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
    config = path / "config.json"
    if not os.path.lexists(config):
        raise RunError(f"{path}: not a run folder (no config.json); pass a folder made by fit-head")
    data = schemas.read_json(config, fix=_FIX_RECORD)
    legacy = isinstance(data, dict) and "schema" not in data
    record = RunRecord.from_json(data, path)
    if legacy:  # the first layout did not checksum its tables: they are recorded with none, never with today's
        for name, file in zip(UNCHECKSUMMED, ("metrics.json", "history.csv", "predictions.csv")):
            if (path / file).is_file():
                record.artifacts.setdefault(name, Artifact(file, None))
    record.check_files()
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


def write_predictions(path: Path, items, y_true, classes, probabilities: dict, *, multilabel: bool = False,
                      extra: dict | None = None) -> None:
    """One row per image: path, sha256, patient, source, true label, then P(class) per model.

    A multi-label table leaves ``y_true`` empty and gives each finding's value as
    the data gave it (1, 0, -1 uncertain, empty) in a ``true:<finding>`` column;
    ``label`` then names the positive findings. Images in patient groups add a
    ``group:<name>`` column per group, so every figure of the run, the subgroup
    ones too, can be recomputed from the table. ``extra`` ({column: value per
    row}, among :data:`FOLD_COLUMNS`) come next, before the models' columns
    (``predictions-oof.csv``'s ``fold`` and ``repeat``).
    """
    extra = extra or {}
    if set(extra) - set(FOLD_COLUMNS):
        raise ValueError(f"extra columns must be among {', '.join(FOLD_COLUMNS)}; got {', '.join(extra)}")
    groups = sorted({name for item in items for name, _ in item.groups})
    header = [*PREDICTION_COLUMNS, *([f"{TRUTH_PREFIX}{c}" for c in classes] if multilabel else ()),
              *(f"group:{g}" for g in groups), *extra]
    for model in probabilities:
        header += [f"{model}:{c}" for c in classes]
    rows = [header]
    for i, item in enumerate(items):
        row = [item.relpath, item.sha256, item.patient_id or "", item.source or "", item.label,
               "" if multilabel else int(y_true[i])]
        if multilabel:
            row += [_finding_text(v) for v in item.findings]
        row += [item.group(g) or "" for g in groups]
        row += [values[i] for values in extra.values()]
        for proba in probabilities.values():
            row += [f"{p:.6g}" for p in proba[i]]
        rows.append(row)
    atomic_write(path, csv_text(rows))


def _finding_text(value: float) -> str:
    """A finding's value as a manifest writes it: ``1``, ``0``, ``-1``, or empty for blank."""
    return "" if value != value else str(int(value))
