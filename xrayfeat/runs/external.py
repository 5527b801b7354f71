"""External validation: a trained run scored on another site's labelled X-rays.

Internal accuracy in chest X-ray classification is mostly a source shortcut: a
model that scores 0.8 on its own test split can score chance on another
hospital's images. :func:`evaluate` scores every model of a run on a labelled
dataset in any supported layout, treating all of its images as test data, with
the same metrics, bootstrap intervals, per-source breakdown and warnings as
``fit-head``, and records the result in the run (``RUN/external/<name>/`` and the
run record's ``external``), where ``report`` puts it beside the internal one.

The data is discovered here, with the same arguments for ``Run.evaluate`` and
the CLI (the hash memory of the cache folder, ``classes``, ``on_error``), so
both make one call. Images whose sha256 is among the run's training or
validation images are left out and counted (their scores would not be external). A class the run does not
know is an error; a class of the run missing from the data is a warning (its
per-class figures are then undefined). Data that is not another site's is
said: images that are the run's own test images (``not_external``: the internal
result again), and sources the run's own data has (``shared_source``: the
manifest's source column against the run's per-source breakdown). Every
warning is in the result and logged (the CLI prints it as fit-head's).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from xrayfeat.runs import record as runs
from xrayfeat.analysis import metrics
from xrayfeat.analysis import plots
from xrayfeat.data.datasets import Dataset, discover, printable
from xrayfeat.data.labels import targets
from xrayfeat.errors import DatasetError
from xrayfeat.options.constraints import OptionError
from xrayfeat.fileio import write_json
from xrayfeat.provenance import utc_timestamp
from xrayfeat.store.catalog import hash_memory
from xrayfeat.runs.lock import updating_record
from xrayfeat.runs.outputs import OutputError, check_output
from xrayfeat.runs.prediction import run_cache_dir, score_images
from xrayfeat.runs.record import RunWarning
from xrayfeat.analysis.scoring import evaluate_models, headline
from xrayfeat.analysis.multilabel import few_positives_warning
from xrayfeat.analysis.subgroups import GROUP_GAP, group_gap_warnings

log = logging.getLogger("xrayfeat")


@dataclass
class EvaluateResult:
    """What :func:`evaluate` found: the headline figures per model, beside the run's internal ones."""

    run: str
    name: str
    folder: str
    n: int
    excluded: int
    external: dict  # model -> brief metrics on the external data
    internal: dict  # model -> brief metrics on the run's own test split
    warnings: list[RunWarning] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # "path: reason" per file left out (on_error="skip")

    def as_json(self) -> dict:
        return {"run": self.run, "name": self.name, "folder": self.folder, "n": self.n, "excluded": self.excluded,
                "external": self.external, "internal": self.internal,
                "warnings": [{"kind": w.kind, "message": w.message} for w in self.warnings],
                "skipped_files": self.skipped_files}

    def __repr__(self) -> str:
        from xrayfeat.runs.display import evaluate_repr

        return evaluate_repr(self)

    def _repr_html_(self) -> str:
        """In a notebook: the warnings first, then each model's external figures beside its internal ones."""
        from xrayfeat.runs.display import evaluate_html

        return evaluate_html(self)


def default_evaluation_name(dataset: Dataset) -> str:
    """A folder-safe name for the external dataset: its folder (or manifest) name."""
    base = dataset.root.name if dataset.layout != "manifest" else dataset.root.name or "external"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-") or "external"


def _check_classes(run, dataset: Dataset) -> list[RunWarning]:
    if dataset.multilabel != run.record.multilabel:
        has, needs = (("findings", "one label per image") if dataset.multilabel else
                      ("one label per image", "findings (a manifest with a column per finding, or a labels column)"))
        raise DatasetError(f"{dataset.root}: has {has}, but {run.path} was trained on {needs}; pass data of the "
                           f"run's task")
    if run.record.multilabel:
        return _check_findings(run, dataset)
    unknown = sorted(set(dataset.classes) - set(run.classes))
    if unknown:
        raise DatasetError(f"{dataset.root}: class{'es' if len(unknown) > 1 else ''} {', '.join(unknown)} unknown to "
                           f"{run.path} (trained on {', '.join(run.classes)}); pass --classes to keep the known ones")
    missing = [c for c in run.classes if c not in dataset.classes]
    if not missing:
        return []
    return [RunWarning("missing_class", f"{', '.join(missing)} absent from {dataset.root}: per-class figures for "
                                        f"{'them' if len(missing) > 1 else 'it'} and the macro ROC-AUC are undefined")]


def _check_findings(run, dataset: Dataset) -> list[RunWarning]:
    """Findings the run does not know are left out (said in the log); findings it knows but the data lacks warn."""
    unknown = [c for c in dataset.classes if c not in run.classes]
    if unknown:
        log.info("%s: finding%s %s unknown to %s, left out", dataset.root, "s" if len(unknown) > 1 else "",
                 ", ".join(unknown), run.path)
    missing = [c for c in run.classes if c not in dataset.classes]
    if len(missing) == len(run.classes):
        raise DatasetError(f"{dataset.root}: none of the run's findings ({', '.join(run.classes)}) is among its "
                           f"columns ({', '.join(dataset.classes)}); pass data labelled with them")
    if not missing:
        return []
    return [RunWarning("missing_class", f"{', '.join(missing)} absent from {dataset.root}: figures for "
                                        f"{'them' if len(missing) > 1 else 'it'} are undefined")]


def _exclude_training(run, dataset: Dataset) -> tuple[Dataset, int, list[RunWarning]]:
    """The dataset without the run's training and validation images, how many were dropped, and what to say."""
    roles = run.record.split_hashes()
    if roles is None:
        return dataset, 0, [RunWarning("overlap", f"{run.path} does not record its training images (written by an "
                                                  f"earlier xrayfeat): overlap with them is not checked; re-run fit-head to check it")]
    kept = tuple(item for item in dataset.items if roles.get(item.sha256) not in ("train", "val"))
    dropped = len(dataset) - len(kept)
    found = []
    if dropped:
        found.append(RunWarning("overlap", f"{dropped} of {len(dataset)} images of {dataset.root} are byte-identical "
                                           f"to the run's training or validation images and were left out"))
    if not kept:
        raise DatasetError(f"{dataset.root}: every image is one the run trained or validated on; "
                           f"pass data the run has not seen")
    return replace(dataset, items=kept, skipped=()), dropped, found


def _not_another_site(run, dataset: Dataset) -> list[RunWarning]:
    """Warnings for data that is not another site's: the run's own test images, or the run's own sources."""
    found = []
    roles = run.record.split_hashes() or {}
    own = sum(1 for item in dataset.items if roles.get(item.sha256) == "test")
    if own == len(dataset):
        found.append(RunWarning("not_external", f"all {own} images of {dataset.root} are the run's own test images "
                                                f"(byte-identical): these are its internal results again, not an "
                                                f"external validation; pass another site's images"))
    elif own:
        found.append(RunWarning("not_external", f"{own} of {len(dataset)} images of {dataset.root} are the run's own "
                                                f"test images (byte-identical): they are not external, and pull the "
                                                f"external figures toward the internal ones"))
    theirs = set((run.metrics.get("head") or {}).get("by_source") or {})
    shared = sorted({item.source for item in dataset.items if item.source} & theirs)
    if shared:
        which = f"{shared[0]}, a source" if len(shared) == 1 else f"{', '.join(shared)}, sources"
        found.append(RunWarning("shared_source", f"images of {dataset.root} come from {which} the run's own test data "
                                                 f"has too: they are not another site's, and a shortcut the run "
                                                 f"learned there still works on them"))
    return found


def evaluate(run, data, *, name: str | None = None, classes=None, cache_dir=None, on_error: str = "fail",
             device: str = "auto", batch_size: int = 32, workers: int | None = None, cluster: str | None = None,
             progress: bool = False) -> EvaluateResult:
    """Score ``run`` (a loaded :class:`~xrayfeat.runs.loaded.Run`) on the labelled ``data`` (all of it test data).

    The one call behind ``Run.evaluate``, ``xf.evaluate`` and ``xrayfeat evaluate``.
    ``data`` is a folder or manifest, discovered here as every command
    discovers: only ``classes`` kept, file hashes remembered in the cache folder
    (``cache_dir``, default the folder holding the run's store, where the
    features are computed too), and files that cannot be images stopping the
    call (``on_error="fail"``) or left out and listed (``"skip"``); or a
    :class:`~xrayfeat.data.datasets.Dataset` already discovered. Files found but
    not decodable are met at extraction and handled by ``on_error`` the same
    way (as fit-head does). The result is recorded under ``RUN/external/<name>/``
    and in the run record, both written under the run's lock with the record
    read again under it (:func:`~xrayfeat.runs.lock.updating_record`): what
    another evaluate added meanwhile is kept. Re-evaluating under an existing
    name replaces that result.
    """
    folder = run_cache_dir(run, cache_dir)
    if isinstance(data, Dataset):
        dataset = data.select_classes(classes) if classes else data
    else:
        dataset = discover(data, classes=[classes] if isinstance(classes, str) else classes,
                           hash_cache=hash_memory(folder), on_error=on_error)
    skipped = [printable(f"{s.path}: {s.reason}") for s in dataset.skipped]
    dataset = replace(dataset, skipped=())  # listed here and in the record; extraction gets the images only
    name = name or default_evaluation_name(dataset)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise OptionError(f"The 'name' of an external evaluation must be a plain folder name. Got {name!r} instead.")
    _check_place(run, name)
    run.record = runs.read_record(run.path)  # the record as it is now; _write reads it again under the run's lock
    found = _check_classes(run, dataset)
    scored_classes = [c for c in run.classes if c in dataset.classes]  # a class the run lacks is not scored
    if run.record.multilabel:  # the run's findings, in its order: one the data lacks is blank (counts nowhere)
        dataset = dataset.with_findings(run.classes)
    dataset, excluded, overlap = _exclude_training(run, dataset)
    found += overlap + _not_another_site(run, dataset)
    scored = score_images(run, dataset, cache_dir=folder, device=device, batch_size=batch_size, workers=workers,
                          cluster=cluster, progress=progress, on_error=on_error)
    if scored.skipped_files:  # files found but not decodable, left out as discovery leaves out the rest
        skipped = sorted([*skipped, *scored.skipped_files])
        dataset = scored.dataset
    y, mask = _truth(run, dataset)
    if mask is not None and not mask.any():
        raise DatasetError(f"{dataset.root}: no entry of the run's findings counts (every one is blank, or uncertain "
                           f"under the run's --uncertain {run.record.head.get('uncertain', 'ignore')}); pass data "
                           f"labelled 1 or 0 for them")
    thresholds, rule = run_thresholds(run.metrics)
    results = evaluate_models(scored.probabilities, y, run.classes, dataset.items,
                              n_boot=run.record.head.get("n_bootstrap", 1000), seed=run.record.head.get("seed", 0),
                              thresholds=thresholds, rule=rule, multilabel=mask is not None, mask=mask)
    if mask is None:
        results = {model: _with_present_auc(result) for model, result in results.items()}
    found += _warnings(run, dataset, results)
    for warning in found:
        log.warning("%s", warning.message)
    written = _write(run, name, dataset, scored_classes, (y, mask), scored, results, excluded, found, skipped)
    internal = run.metrics
    return EvaluateResult(
        run=str(run.path), name=name, folder=str(written), n=len(dataset), excluded=excluded,
        external={m: headline(r) for m, r in results.items()},
        internal={"head": headline(internal["head"]), **{m: headline(r) for m, r in internal["baselines"].items()}},
        warnings=found, skipped_files=skipped,
    )


def _truth(run, dataset: Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels, None) of a single-label dataset in the run's class order; (targets, mask) of a multi-label one.

    Multi-label values (the dataset already in the run's findings) follow the
    run's ``--uncertain`` policy, so an external table is read as the run's own was.
    """
    if not run.record.multilabel:
        index = {c: k for k, c in enumerate(run.classes)}
        return np.array([index[item.label] for item in dataset.items]), None
    return targets(dataset.targets, run.record.head.get("uncertain", "ignore"))


def run_thresholds(run_metrics: dict) -> tuple[dict, str | None]:
    """The thresholds each model's operating points use, as fit-head chose them on validation, and their rule.

    External data never moves a threshold: applying the run's own is what shows
    whether an operating point carries to another hospital. Runs written before
    operating points existed give ``({}, None)``.
    """
    models = {"head": run_metrics["head"], **run_metrics.get("baselines", {})}
    thresholds = {
        name: {cls: {"threshold": entry["threshold"], "note": entry.get("note")}
               for cls, entry in m["operating_points"]["classes"].items()}
        for name, m in models.items() if m.get("operating_points")
    }
    return thresholds, run_metrics.get("threshold_rule") if thresholds else None


def _with_present_auc(result: dict) -> dict:
    """Add ``roc_auc_present``: the mean one-vs-rest AUC over the classes present (the macro AUC needs them all)."""
    per_class = result.get("roc_auc_per_class") or {}
    values = [a for a in (per_class.values() if isinstance(per_class, dict) else per_class) if a is not None]
    result["roc_auc_present"] = result["roc_auc"] if result["roc_auc"] is not None else (
        float(np.mean(values)) if values else None)
    return result


def _warnings(run, dataset: Dataset, results: dict) -> list[RunWarning]:
    found = []
    if run.record.random_weights:
        found.append(runs.RANDOM_WEIGHTS_WARNING)
    if "per_finding" in results["head"]:  # a finding's interval is as wide as its positives are few
        few = few_positives_warning(results["head"])
        if few:
            found.append(RunWarning("small_test", few))
    else:
        tiny = metrics.tiny_test_warning(len(dataset), results["head"]["accuracy"])
        if tiny:
            found.append(RunWarning("small_test", tiny))
    if "per_finding" not in results["head"]:  # a multi-label breakdown by source has no accuracy to compare
        gap = metrics.source_gap_warning(results["head"].get("by_source"))
        if gap:
            found.append(RunWarning("source_gap", gap))
    found += [RunWarning(GROUP_GAP, text) for text in group_gap_warnings(results["head"].get("by_group"))]
    return found


def _check_place(run, name: str) -> None:
    """Refuse before any work when ``RUN/external/<name>`` leads out of the run (a link), into another run or a cache."""
    folder = run.path / "external" / name
    if check_output(folder, "evaluate", run=run.path, name=name) is None:
        raise OutputError(f"{folder}: leads outside the run folder {run.path} (a link); remove the link, then re-run")


def _write(run, name: str, dataset: Dataset, classes: list[str], truth, scored, results: dict, excluded: int, found,
           skipped) -> Path:
    """``RUN/external/<name>/`` (metrics, predictions, figures), then the run record naming them with their sha256.

    ``classes`` are the run's classes the data has (those scored); ``truth``
    is :func:`_truth`'s (labels or targets, mask). A multi-label
    evaluation has no confusion matrix: its figures are the ROC curve and the
    calibration per finding.

    All under the run's lock, the record read again under it: one writer at a time, and nobody's result lost.
    """
    folder = run.path / "external" / name
    _check_place(run, name)  # again: the folder may have changed while the images were scored
    with updating_record(run.path, "evaluate") as record:
        folder.mkdir(parents=True, exist_ok=True)
        head = results["head"]
        write_json(folder / "metrics.json", {"head": head, "baselines": {m: r for m, r in results.items() if m != "head"}})
        y, mask = truth
        multilabel = mask is not None
        runs.write_predictions(folder / "predictions.csv", dataset.items, y, run.classes, scored.probabilities,
                               multilabel=multilabel)
        title = f"{run.task} · {run.backbone} · external: {name}"
        parts = [("metrics", "metrics.json"), ("predictions", "predictions.csv"), ("roc", "roc.png"),
                 ("calibration", "calibration.png")]
        if not multilabel:
            plots.plot_confusion(head["confusion"], run.classes, folder / "confusion.png", title=title)
            parts.append(("confusion", "confusion.png"))
        plots.plot_roc(y, scored.probabilities["head"], run.classes, folder / "roc.png", title=title, mask=mask)
        plots.plot_calibration(plots.calibration_curves(results), folder / "calibration.png", title=title)
        for part, file in parts:
            key, artifact = runs.artifact(run.path, f"external/{name}/{part}", f"external/{name}/{file}")
            record.artifacts[key] = artifact
        record.external[name] = {
            "data": str(dataset.root), "created": utc_timestamp(),
            "n": len(dataset), "excluded": excluded, "classes": classes,
            "warnings": [{"kind": w.kind, "message": w.message} for w in found], "skipped_files": list(skipped),
        }
    run.record = record
    return folder
