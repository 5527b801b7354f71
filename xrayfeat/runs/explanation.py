"""Grad-CAM overlays for a trained run's predictions on any images, from the cached spatial maps.

:func:`explain` takes the same inputs as :func:`xrayfeat.runs.prediction.predict`
(image files, folders, CSVs with a ``path`` column) and, for each image, draws
where the run's head looks: Grad-CAM of the predicted class (or of one chosen
class) at the run's cut layer. The map comes from the image's cached spatial
features and the head's arrays alone (:mod:`xrayfeat.analysis.gradcam`), so an image
already in the cache costs no backbone and no deep-learning framework; an image
that is not is extracted first, into the same cache as ``predict`` uses.

Written to ``OUT/``: ``<stem>.png`` (the map on the X-ray, with the predicted
class and its probability in the title), ``<stem>.npz`` (the raw map at the cut
layer's resolution, the explained class, the probabilities, the layer and the
image's sha256) and ``explain.csv`` (one row per image). Two inputs with the
same file stem get ``<stem>-2``, ``<stem>-3``... in input order.

The map's resolution is the cut layer's: 7×7 for VGG16 ``block5_pool`` at
224 px. A run trained at an earlier cut gives a finer one. Runs whose head is
not the plain seed head (``--train-tail``) are refused: their map would feed
backbone layers that the head's arrays do not describe; so are runs whose head
reads pooled vectors (``--head-input pooled``): a vector has no spatial layout
to weigh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrayfeat.errors import DatasetError, XrayfeatError
from xrayfeat.fileio import atomic_path, atomic_write, bounded_name, csv_text, sibling, writing_to
from xrayfeat.analysis.gradcam import grad_cam, plot_overlay
from xrayfeat.data.images import read_image
from xrayfeat.data.labels import positive_names
from xrayfeat.runs.outputs import check_output
from xrayfeat.store.fingerprint import drawing_size
from xrayfeat.analysis.calibrators import apply_calibrator
from xrayfeat.runs.prediction import cache_dir_of, finding_thresholds, gather_inputs, run_features

#: Images whose maps are computed and drawn together (bounds memory on large inputs).
CHUNK = 64


@dataclass
class ExplainResult:
    """What :func:`explain` wrote: one overlay and one map per image, and the table of them."""

    out: str
    csv: str
    images: int
    extracted: int
    reused: int
    layer: str  # e.g. "vgg16:block5_pool"
    map_size: tuple[int, int]  # (H, W) of every map
    target_class: str | None  # the class every map explains, or None: each image's predicted class
    rows: list[dict] = field(default_factory=list)  # per image: path, sha256, predicted, probability, explained, png, npz

    def as_json(self) -> dict:
        return {"out": self.out, "csv": self.csv, "images": self.images, "extracted": self.extracted,
                "reused": self.reused, "layer": self.layer, "map": list(self.map_size), "class": self.target_class,
                "explained": self.rows}

    def __repr__(self) -> str:
        from xrayfeat.runs.display import explain_repr

        return explain_repr(self)

    def _repr_html_(self) -> str:
        """In a notebook: the first overlays as thumbnails and each image's predicted and explained class."""
        from xrayfeat.runs.display import explain_html

        return explain_html(self)


def explain(run, inputs, out, *, target_class: str | None = None, cache_dir=None, device: str = "auto",
            batch_size: int = 32, workers: int | None = None, cluster: str | None = None,
            progress: bool = False) -> ExplainResult:
    """Grad-CAM overlays of ``run``'s head on ``inputs``, written to the folder ``out``; see the module docstring.

    ``run``: a loaded :class:`~xrayfeat.runs.loaded.Run`. ``target_class``: a class
    of the run every map explains (default: each image's predicted class).
    Features come from the run's cache (or ``cache_dir``), computed there first
    for images it lacks. ``out`` is never inside a run or a cache folder
    (:func:`~xrayfeat.runs.outputs.check_output`, checked before anything else).
    """
    check_output(out, "explain", cache=cache_dir_of(run, cache_dir))
    target = _target_index(run, target_class)
    head = _head_arrays(run)
    dataset, folder = gather_inputs(run, inputs, cache_dir)
    result, store = run_features(run, dataset, cache_dir=folder, device=device, batch_size=batch_size,
                                 workers=workers, cluster=cluster, progress=progress, need=("spatial",),
                                 purpose="explain (Grad-CAM)")
    out = Path(out)
    layer = f"{run.backbone}:{store.fingerprint.get('layer', 'imported')}"  # imported maps: no layer is known
    size = drawing_size(store.fingerprint)
    stems = _stems(dataset.items)
    thresholds = finding_thresholds(run, ["head"])["head"] if run.record.multilabel else None
    calibrator = ((run.metrics.get("calibrated") or {}).get("models") or {}).get("head")  # fit-head --calibrate
    rows, map_size = [], (0, 0)
    with writing_to(out, option="--out"):  # a full disk: one line naming the folder
        out.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(dataset), CHUNK):
            items = dataset.items[start:start + CHUNK]
            spatial = store.read([item.sha256 for item in items], ("spatial",))["spatial"]
            map_size = spatial.shape[1:3]
            cams = grad_cam(spatial, head, target)
            for i, item in enumerate(items):
                rows.append(_write_image(run, item, cams, i, out / stems[start + i], layer=layer, size=size,
                                         thresholds=thresholds, calibrator=calibrator))
        table = out / "explain.csv"
        _write_table(table, rows)
    return ExplainResult(out=str(out), csv=str(table), images=len(dataset), extracted=result.extracted,
                         reused=result.reused, layer=layer, map_size=tuple(int(s) for s in map_size),
                         target_class=target_class, rows=rows)


def _target_index(run, target_class: str | None) -> int | None:
    if target_class is None:
        return None
    if target_class not in run.classes:
        raise DatasetError(f"--class {target_class!r} is not a class of {run.path}; "
                           f"its classes are {', '.join(run.classes)}")
    return run.classes.index(target_class)


def _head_arrays(run) -> dict:
    """The plain seed head's arrays, read from bytes whose sha256 matches the record; one line when there are none."""
    if run.record.head_input != "spatial":
        raise XrayfeatError(f"{run.path}: cannot explain this run: its head reads {run.record.head_input} vectors "
                            f"(fit-head --head-input {run.record.head_input}), which have no spatial layout for "
                            f"Grad-CAM; re-run fit-head with --head-input spatial on a store that keeps spatial maps")
    run.record.verified("head")  # a changed head.keras means a changed run, even when its arrays are what runs
    arrays = run.head_arrays()  # loaded from the bytes whose sha256 was checked
    if arrays is None:
        why = ("its head has a trained backbone tail (fit-head --train-tail), which the cut-layer map would have "
               "to pass through; explain needs the plain seed head: re-run fit-head without --train-tail"
               if run.record.head.get("train_tail") else
               "it has no head.npz (written by an earlier xrayfeat); re-run fit-head")
        raise XrayfeatError(f"{run.path}: cannot explain this run: {why}")
    return arrays.arrays


def _stems(items) -> list[str]:
    """One output name per image: its file stem, then ``-2``, ``-3``... for stems already taken (case-insensitive).

    Each name leaves room for ``.png`` and ``.npz`` within the file system's name limit
    (:func:`~xrayfeat.fileio.bounded_name`: a long stem is shortened and ends with its digest).
    """
    taken: set[str] = set()
    names = []
    for item in items:
        stem = Path(item.path).stem

        def fitting(tail: str) -> str:
            return bounded_name(stem, tail + ".png")[:-len(".png")]

        name, n = fitting(""), 2
        while name.lower() in taken:
            name, n = fitting(f"-{n}"), n + 1
        taken.add(name.lower())
        names.append(name)
    return names


def _write_image(run, item, cams, i: int, base: Path, *, layer: str, size: int, thresholds=None,
                 calibrator=None) -> dict:
    """``base.png`` (the overlay) and ``base.npz`` (the raw map and what it explains) for one image; its table row.

    A multi-label run (``thresholds``: the head's per finding) explains one
    finding (the most probable, or the chosen one); ``predicted`` then names
    every finding called at its threshold. The probabilities shown are the
    head's through the run's ``calibrator`` (``fit-head --calibrate``), as predict's.
    """
    classes = run.classes
    proba = apply_calibrator(calibrator, cams.proba[i][None, :], classes, multilabel=run.record.multilabel)[0]
    predicted, explained = int(proba.argmax()), int(cams.target[i])
    cam = cams.maps[i]
    called = None if thresholds is None else positive_names(proba >= thresholds, classes)
    npz = sibling(base, ".npz")
    with atomic_path(npz, suffix=".npz") as tmp:
        np.savez(tmp, cam=cam, channel_weights=cams.weights[i], explained=np.array(classes[explained]),
                 explained_index=np.int64(explained), predicted=np.array(classes[predicted]),
                 probabilities=proba, classes=np.array(classes), layer=np.array(layer),
                 **({} if called is None else {"called": np.array(called)}),
                 image_size=np.int64(size), sha256=np.array(item.sha256), path=np.array(str(item.path)))
    title = f"predicted: {classes[predicted]} (p = {proba[predicted]:.3f})"
    if called is not None:
        title = f"Grad-CAM of {classes[explained]} (p = {proba[explained]:.3f})\nfindings called: {called or 'none'}"
    elif explained != predicted:
        title += f"\nGrad-CAM of {classes[explained]} (p = {proba[explained]:.3f})"
    note = f"{cam.shape[0]}×{cam.shape[1]} map at {layer}, upsampled to {size} px · {item.relpath}"
    png = plot_overlay(read_image(item.path, size), cam, sibling(base, ".png"), title=title, note=note)
    multilabel = called is not None
    return {"path": str(item.path), "sha256": item.sha256, "predicted": called if multilabel else classes[predicted],
            "probability": round(float(proba[explained if multilabel else predicted]), 6), "explained": classes[explained],
            "png": str(png), "npz": str(npz)}


def _write_table(path: Path, rows: list[dict]) -> None:
    """``explain.csv``: one row per image, names neutralised for spreadsheets (:func:`~xrayfeat.fileio.csv_text`)."""
    columns = ["path", "sha256", "predicted", "probability", "explained", "png", "npz"]
    atomic_write(path, csv_text([columns, *([row[c] for c in columns] for row in rows)]))
