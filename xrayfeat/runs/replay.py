"""A study run again from its record: ``fit-head --config RUN/config.json`` (``xf.fit_head(config=...)``).

A run folder records what its study was made of: the data (``data``: the
folder, or the manifest), the feature options that select its store, every
head and study option (seeds, repeats, cross-validation, thresholds,
baselines, the uncertain policy, the memory budget), how it ran (device, the
backbone's batch, the cache, ``on_error``), the versions of the libraries, and
in ``splits.csv`` the path, sha256, role and label of every image it used.
:func:`replay` rebuilds the options from that typed record
(:func:`replay_options`) and runs :func:`~xrayfeat.runs.fit.fit_head` again:

1. the run is read as every reader reads it (:func:`~xrayfeat.runs.record.read_record`:
   the schema, then the artifacts' sha256), so a damaged or foreign ``config.json``
   stops here, in one line (exit 2);
2. the versions it recorded are compared with those installed here
   (:func:`version_differences`): the differences are said in one warning before
   anything is computed, and the study still runs;
3. the data is discovered where the record says (or where the caller says it is
   now: a copy elsewhere) and held against ``splits.csv`` (:func:`check_data`):
   images whose bytes changed, missing, added, relabelled or in another split
   stop the replay in one line with the counts, before any extraction;
4. the study runs into a new folder. Its record says which run it repeats
   (``replay_of``: the folder, name, creation time, xrayfeat version and the
   sha256 of its ``config.json``) and lists what differed, each also a warning of
   kind ``replay``: the versions, a features store with another fingerprint, the
   head's backend or device, a validation split drawn otherwise.

The same code, data, versions and machine give the same ``metrics.json`` and
the same head, bit for bit: the validation split, the head's initialisation and
batches, the baselines' searches and the bootstrap all follow the recorded seed
(tests/test_replay.py). Beside the record, a replay takes only where it reads and
writes and how it runs (:data:`HOW_TO_RUN`), never what it computes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from xrayfeat.data.datasets import Dataset, discover
from xrayfeat.errors import DatasetError, RunError
from xrayfeat.fileio import file_digest
from xrayfeat.options.settings import FeatureOptions, HeadOptions, RunOptions
from xrayfeat.runs.record import RunRecord, RunWarning, read_record

log = logging.getLogger("xrayfeat")

#: What a replay takes beside the record (``fit-head --config`` and ``xf.fit_head(config=...)``): where the data is
#: now, where the new run and the features go, and how extraction runs. None of them changes a figure.
HOW_TO_RUN: tuple[str, ...] = ("data", "out", "cache_dir", "workers", "cluster", "chunk_images")

#: How many differing paths a refusal names.
_SHOWN = 3


def run_of(config: str | os.PathLike) -> RunRecord:
    """The record of the run ``config`` names: its ``config.json``, or its folder.

    Read and checked by :func:`~xrayfeat.runs.record.read_record`; a file that is not a
    run's ``config.json`` is refused in one line.
    """
    path = Path(config)
    if path.name == "config.json" and not path.is_dir():
        return read_record(path.parent)
    if path.is_dir():
        return read_record(path)
    if path.exists():
        raise RunError(f"{path}: not a run's config.json; pass RUN/config.json (or RUN) of a folder made by fit-head")
    raise RunError(f"{path}: no such file; pass RUN/config.json (or RUN) of a folder made by fit-head")


def replay_options(record: RunRecord, *, cache_dir=None, workers: int | None = None, cluster: str | None = None,
                   chunk_images: int | None = None, progress: bool = True
                   ) -> tuple[FeatureOptions, HeadOptions, RunOptions]:
    """The options of the study ``record`` describes, as fit-head takes them; the rest as given (:data:`HOW_TO_RUN`).

    * ``validation_steps`` is recorded resolved: null was 0 (the whole validation set), never the default;
    * a null that a record written before a default existed holds is that default, as those runs ran;
    * a record written before ``head_step`` existed trained its head with Keras' own step: replayed so;
    * a run whose baselines were fitted on a sample (kind ``subsample``) under the default memory budget
      (half the memory then available) is replayed with the budget it resolved, in bytes, so that the
      same sample is drawn;
    * ``on_error``: recorded since this release; before, ``skip`` when the run left files out, else ``fail``;
    * the Dask cluster is where extraction ran, not part of the study: only a ``cluster`` given here is used.
    """
    features = _options(FeatureOptions, record.features)
    values = dict(record.head)
    if values.get("validation_steps", 0) is None:
        values["validation_steps"] = 0
    if values.get("baselines") is not None:
        values["baselines"] = tuple(values["baselines"])
    if "head_step" not in values:  # recorded before the fused step existed: those heads trained with Keras' own step
        values["head_step"] = "keras"
    if values.get("memory_budget") is None and any(w.kind == "subsample" for w in record.warnings):
        values["memory_budget"] = record.training.get("memory_budget_bytes")
        log.info("replaying with the memory budget the run resolved (%s bytes): its baselines were fitted on a "
                 "sample", values["memory_budget"])
    head = _options(HeadOptions, values)
    recorded = record.run
    on_error = recorded.get("on_error") or ("skip" if record.skipped_files or record.counts.get("skipped") else "fail")
    run = _options(RunOptions, {"device": recorded.get("device"), "batch_size": recorded.get("batch_size"),
                                "cache_dir": cache_dir if cache_dir is not None else recorded.get("cache_dir"),
                                "on_error": on_error, "workers": workers, "cluster": cluster,
                                "chunk_images": chunk_images, "progress": progress})
    for options in (features, head, run):
        options.validate()
    return features, head, run


def _options(cls, values: dict):
    """``cls(**values)``, a null where the field takes none read as the field's default (older records)."""
    declared = {f.name: f for f in fields(cls)}
    kept = {name: value for name, value in values.items()
            if name in declared and (value is not None or declared[name].metadata.get("none", False))}
    return cls(**kept)


def version_differences(recorded: dict, now: dict) -> list[str]:
    """``"name: A in the run, B here"`` for each library whose version differs (a missing one is "not installed")."""
    differences = []
    for name in dict.fromkeys((*recorded, *now)):
        then, here = recorded.get(name), now.get(name)
        if then != here:
            differences.append(f"{name} {then or 'not installed'} in the run, {here or 'not installed'} here")
    return differences


def current_versions() -> dict:
    """This xrayfeat's version and those :func:`~xrayfeat.runs.fit.study_versions` records, as a run records them."""
    from xrayfeat import __version__
    from xrayfeat.runs.fit import study_versions

    return {"xrayfeat": __version__, **study_versions()}


def check_data(record: RunRecord, dataset: Dataset, where) -> None:
    """Refuse, in one line, data that is not what the run used (``splits.csv``), before anything is extracted.

    Compared by path (relative to the data): an image whose bytes changed, one the
    run used and the data lacks, one the data has and the run did not use (but
    for those the run left out as unreadable: ``skipped_files``), one relabelled,
    and one in another split (with a val split: the same split; without one,
    train for the run's train and val images). ``where`` names the data in the
    line. A run without ``splits.csv`` cannot be checked: a warning says so.
    """
    used = record.used_images()
    if used is None:
        log.warning("%s records no splits.csv: the data cannot be checked against the run's; replaying on it anyway",
                    record.path)
        return
    now = {item.relpath: item for item in dataset.items}
    with_val = record.validation == "val split"
    changed, missing, relabelled, moved = [], [], [], []
    for path, image in used.items():
        item = now.get(path)
        if item is None:
            missing.append(path)
        elif item.sha256 != image.sha256:
            changed.append(path)
        elif item.label != image.label:
            relabelled.append(path)
        elif item.split != (image.role if with_val or image.role == "test" else "train"):
            moved.append(path)
    added = [path for path in now if path not in used and not _left_out(record, path)]
    if not (changed or missing or added or relabelled or moved):
        return
    counts = f"{len(changed)} of {len(used)} images changed, {len(missing)} missing, {len(added)} added"
    counts += f", {len(relabelled)} relabelled" if relabelled else ""
    counts += f", {len(moved)} in another split" if moved else ""
    examples = "; ".join(f"{what}: {', '.join(paths[:_SHOWN])}{', ...' if len(paths) > _SHOWN else ''}"
                         for what, paths in (("changed", changed), ("missing", missing), ("added", added),
                                             ("relabelled", relabelled), ("in another split", moved)) if paths)
    raise DatasetError(f"{where}: {counts} since the run {record.path} ({examples}); restore the data the run used, "
                       f"or run fit-head on this data without --config (a new study)")


def _left_out(record: RunRecord, path: str) -> bool:
    """Whether the run left ``path`` (relative to its data) out as unreadable (``--on-error skip``)."""
    if not record.skipped_files:
        return False
    data = Path(record.data)
    root = data.parent if data.suffix.lower() == ".csv" else data
    prefix = f"{root / path}: "
    return any(entry.startswith(prefix) for entry in record.skipped_files)


@dataclass
class Replay:
    """The run a study repeats, and what differs from it (what :func:`~xrayfeat.runs.fit.fit_head` records).

    ``told``: the warnings said before the study ran (the versions), which fit-head does not say again.
    """

    record: RunRecord
    config_sha256: str
    told: list[RunWarning] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    def say_versions(self, now: dict) -> None:
        """Warn, in one line, about each version that differs from the run's; the study still runs."""
        recorded = {"xrayfeat": self.record.xrayfeat, **self.record.versions}
        found = version_differences(recorded, now)
        if found:
            warning = RunWarning("replay", f"replaying {self.record.path} with other versions than it recorded: "
                                           f"{'; '.join(found)}; its figures may differ")
            log.warning("%s", warning.message)
            self.told.append(warning)
            self.differences += found

    def warnings(self, fingerprint: dict, training: dict, used) -> list[RunWarning]:
        """The warnings of kind ``replay``: the versions (said already), then what the study found otherwise.

        ``fingerprint``: the store's the study read; ``training``: the head's settings
        (``backend``, ``device``); ``used``: (item, role) of every image it used.
        """
        found = list(self.told)
        then = self.record.store.get("fingerprint", {})
        if fingerprint != then:
            keys = [k for k in dict.fromkeys((*then, *fingerprint)) if then.get(k) != fingerprint.get(k)]
            text = "features from another store than the run's (" + ", ".join(
                f"{k} {then.get(k)} in the run, {fingerprint.get(k)} here" for k in keys) + ")"
            found.append(self._found(text))
        for key in ("backend", "device"):
            was, now = self.record.training.get(key), training.get(key)
            if was is not None and now is not None and was != now:
                found.append(self._found(f"the head trained with {key} {now}, the run's with {key} {was}"))
        recorded = self.record.used_images() or {}
        roles = [item.relpath for item, role in used if item.relpath in recorded and recorded[item.relpath].role != role]
        if roles:
            found.append(self._found(f"{len(roles)} images have another role (train, val) than in the run, e.g. "
                                     f"{roles[0]}: the validation split was drawn otherwise (patients or groups "
                                     f"changed?)"))
        return found

    def _found(self, text: str) -> RunWarning:
        self.differences.append(text)
        return RunWarning("replay", f"replaying {self.record.path}: {text}; its figures may differ")

    def provenance(self) -> dict:
        """The new record's ``replay_of``: the run repeated and what differed."""
        record = self.record
        return {"path": os.path.abspath(record.path), "name": record.name, "created": record.created,
                "config_sha256": self.config_sha256, "xrayfeat": record.xrayfeat, "differences": list(self.differences)}


def replay(config: str | os.PathLike, *, data=None, out=None, cache_dir=None, workers: int | None = None,
           cluster: str | None = None, chunk_images: int | None = None, progress: bool = True,
           runs_root="runs", overwrite: bool = False):
    """Run the study of ``config`` (``RUN/config.json`` or ``RUN``) again; its :class:`~xrayfeat.runs.fit.FitResult`.

    ``data``: where the run's data is now (a folder, a manifest or a
    :class:`~xrayfeat.data.datasets.Dataset`; default: where the record says).
    See the module docstring for what is checked, in which order.
    """
    from xrayfeat.runs.fit import fit_head
    from xrayfeat.runs.outputs import check_new_folder
    from xrayfeat.store.catalog import hash_memory

    record = run_of(config)
    features, head, run = replay_options(record, cache_dir=cache_dir, workers=workers, cluster=cluster,
                                         chunk_images=chunk_images, progress=progress)
    check_new_folder(out if out else runs_root, "fit-head", cache=run.cache_dir)  # before the data is read
    repeat = Replay(record, file_digest(record.path / "config.json"))
    repeat.say_versions(current_versions())
    if isinstance(data, Dataset):
        dataset = data if list(data.classes) == list(record.classes) else _select(data, record)
        where = data.data_path
    else:
        where = record.data if data is None else os.fspath(data)
        if data is None and not os.path.exists(where):
            raise DatasetError(f"{record.path}: the run's data {where} is not there; pass the folder or manifest "
                               f"where it is now (fit-head DATA --config RUN/config.json)")
        dataset = discover(where, classes=list(record.classes), hash_cache=hash_memory(run.cache_dir),
                           on_error=run.on_error)
    check_data(record, dataset, where)
    log.info("replaying %s (%s of %s)", record.path, record.task, record.data)
    return fit_head(dataset, features, head, run, out=out, runs_root=runs_root, overwrite=overwrite, replay=repeat)


def _select(dataset: Dataset, record: RunRecord) -> Dataset:
    """``dataset`` with the run's classes (findings in the run's order)."""
    return dataset.with_findings(record.classes) if dataset.multilabel else dataset.select_classes(record.classes)


__all__ = ["HOW_TO_RUN", "Replay", "check_data", "current_versions", "replay", "replay_options", "run_of",
           "version_differences"]
