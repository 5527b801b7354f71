"""``fit-head --cv K``: patient-grouped, stratified folds of the training images, and what is recorded of them.

The folds are drawn on every image that is not in the test split (train, and
val where the dataset has one), by scikit-learn's ``StratifiedGroupKFold``:
grouped by patient (an image without a patient id is its own patient, keyed by
its sha256, so the same file in two folders stays in one fold) and stratified
by class (a multi-label image by the stratum its validation split uses,
:func:`~xrayfeat.runs.fit.finding_strata`). Each repeat of ``--repeats`` draws
its folds with its own seed (``seed + r``). In each fold the head and the
baselines train on the other K-1 folds, less a validation part carved out of
them exactly as the main fit carves it out of train, and predict the held-out
fold; the test split is never read.

:func:`check_folds` refuses, in one line, a K that some fold could not honour;
:func:`assign_folds` draws one repeat's folds; :func:`cv_summary` is the
``cv`` part of ``metrics.json`` (:func:`~xrayfeat.runs.schema.metrics_schema`).
"""

from __future__ import annotations

import warnings

import numpy as np

from xrayfeat.analysis.scoring import spread_of
from xrayfeat.errors import DatasetError

#: Patients of every class a fold's training part needs: to carve out its validation split by patient
#: (:func:`~xrayfeat.runs.fit.split_validation`: one for validation, one to train on), and with baselines, whose
#: grid searches cross-validate by patient, one more (two to train on).
REST_PATIENTS = {False: 2, True: 3}


def fold_groups(items) -> tuple[np.ndarray, bool]:
    """Each image's patient (``image:<sha256>`` where it has none), and whether any patient id was known."""
    known = any(item.patient_id for item in items)
    return np.array([item.patient_id or f"image:{item.sha256}" for item in items]), known


def check_folds(k: int, strata, groups, root, *, class_names: dict | None = None, known: bool = True,
                baselines: bool = False) -> None:
    """Refuse ``--cv k`` in one line when the training images hold fewer than ``k`` patients, or some class does.

    ``class_names`` ({stratum: class name}, single-label tasks) adds the check
    per class: every fold holds a patient of every class, and the other folds
    hold :data:`REST_PATIENTS` of it (``baselines``: whether baselines are fitted)
    when the fold is held out (if the folds share the class's patients evenly:
    ``p - ceil(p / k)``), so each fold can carve out its validation split as the
    main fit does, and leave the baselines two patients of it to train on. A multi-label task's
    strata are stratified as far as they go (rare findings join the images
    without one, :func:`~xrayfeat.runs.fit.finding_strata`), so only the
    patient count is a limit there. ``known``: whether the dataset has patient
    ids (else each image counts as its own patient, and the message says so).
    """
    unit = "patients" if known else "images (no patient ids: each image is its own patient)"
    strata, groups = np.asarray(strata), np.asarray(groups)
    n_patients = len(set(groups))
    if k > n_patients:
        raise DatasetError(f"{root}: --cv {k} needs at least {k} training patients, but the training images come from "
                           f"{n_patients} {unit}; use --cv {n_patients} or fewer, or add training images")
    if class_names is None:
        return
    per_class = {name: len(set(groups[strata == stratum])) for stratum, name in class_names.items()}
    smallest = min(per_class, key=per_class.get)
    p, rest = per_class[smallest], REST_PATIENTS[bool(baselines)]
    if k <= p and p - -(-p // k) >= rest:
        return
    fits = [j for j in range(2, p + 1) if p - -(-p // j) >= rest]
    fix = (f"use --cv {fits[0]}" + (f" to {fits[-1]}" if len(fits) > 1 else "") if fits
           else f"add training images of {smallest}")
    why = "their validation split and the baselines" if baselines else "their validation split"
    raise DatasetError(f"{root}: --cv {k} needs a patient of every class in each fold and {rest} more in the other "
                       f"folds (for {why}), but class {smallest} has training images from only {p} {unit}; {fix}")


def assign_folds(strata, groups, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of every row: ``StratifiedGroupKFold(k, shuffle=True, random_state=seed)``.

    A multi-label stratum smaller than ``k`` (the images without a counted
    finding, say) is split as evenly as it goes; scikit-learn's warning about
    it is not shown (stratification is best effort there, and documented).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.full(len(strata), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for f, (_, out) in enumerate(splitter.split(np.zeros(len(strata)), np.asarray(strata), np.asarray(groups))):
            fold[out] = f
    assert (fold >= 0).all(), "StratifiedGroupKFold left a row out of every fold"
    return fold


def cv_summary(k: int, seeds: list[int], folds: list[dict], figures: dict[str, list[dict]], *, grouped: bool,
               validation: str) -> dict:
    """The ``cv`` part of ``metrics.json``.

    ``folds``: one entry per trained fold, repeat-major (``repeat``, ``seed``,
    ``fold``, ``n_fit``, ``n_val``, ``n_out``, ``n_patients_out``); ``figures``:
    each model's figures per fold, in the same order (keys: the figures of
    :func:`~xrayfeat.analysis.scoring.fold_figures`).
    """
    models = {}
    for name, per_fold in figures.items():
        keys = list(per_fold[0]) if per_fold else []
        models[name] = {key: spread_of([f[key] for f in per_fold]) for key in keys}
    return {"k": k, "seeds": list(seeds), "grouped_by": "patient" if grouped else "image", "validation": validation,
            "folds": folds, "models": models}
