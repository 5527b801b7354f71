"""A trained run, loaded: what a notebook user holds after ``xf.load_run(path)`` or ``xf.fit_head(...)``.

:class:`Run` wraps a :class:`~xrayfeat.runs.record.RunRecord` with what a user does
with a run: its test metrics as a table, the per-image test predictions, the
training history, the figures, the head and baseline models (each loaded only
after its sha256 matches the record, checked before the library that loads it
is imported; the head's arrays and the baselines are loaded from the very bytes
checked), and the feature options that select the run's store. Loading a run
reads its record and holds it against its schema (:func:`~xrayfeat.runs.record.read_record`);
models and tables are loaded when asked for, the head and each baseline checked
against the record's classes then.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

from xrayfeat.errors import first_line
from xrayfeat.fileio import csv_value
from xrayfeat.options.settings import FeatureOptions
from xrayfeat.runs import tables
from xrayfeat.runs.record import RunRecord, read_record
from xrayfeat.runs.schema import Damaged
from xrayfeat.runtime import library_call

#: The figures fit-head draws, by name.
FIGURES = ("curves", "confusion", "roc", "calibration", "gradcam")


class _Metrics(dict):
    """The metrics dict as recorded; a missing key says where a baseline's figures are."""

    def __missing__(self, key):
        baselines = self.get("baselines") or {}
        hint = (f"; a baseline's figures are run.metrics['baselines'][{key!r}]" if key in baselines else
                f"; it holds {', '.join(map(repr, self))} (baselines: {', '.join(baselines) or 'none'})")
        raise KeyError(f"{key!r}{hint}")


class Run:
    """One run folder. ``Run(path)`` or :func:`load_run`; see the module docstring."""

    def __init__(self, path: str | os.PathLike):
        self.record: RunRecord = read_record(path)
        self.path = Path(path)
        self._metrics = None

    def __repr__(self) -> str:
        """One line of bounded length: path, task, backbone, classes (at most eight named), warnings."""
        from xrayfeat.runs.display import run_repr

        return run_repr(self)

    def _repr_html_(self) -> str:
        """In a notebook: the warnings first, the test summary (and external results), thumbnails of the figures."""
        from xrayfeat.runs.display import run_html

        return run_html(self)

    # ------------------------------------------------------------------ facts

    @property
    def classes(self) -> list[str]:
        return list(self.record.classes)

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def backbone(self) -> str:
        return self.record.backbone

    @property
    def warnings(self):
        """The study's warnings, each a :class:`~xrayfeat.runs.record.RunWarning` (kind, message)."""
        return list(self.record.warnings)

    @property
    def verified_artifacts(self) -> bool:
        """Whether every file of the run is checked against a recorded sha256 before use.

        False for a run written before checksums (the first config.json layout):
        its metrics, history and predictions are read as they are, and each
        read says so once (:data:`~xrayfeat.runs.record.UNVERIFIED_NOTE`).
        """
        return self.record.verified_artifacts

    @property
    def metrics(self) -> dict:
        """``{"head": {...}, "baselines": {name: {...}}}``: every test figure fit-head computed.

        A baseline's figures are under ``metrics["baselines"][name]``; asking for
        ``metrics[name]`` is a KeyError that says so.
        """
        if self._metrics is None:
            self._metrics = _Metrics(self.record.metrics())
        return self._metrics

    @property
    def figures(self) -> dict[str, Path]:
        """The run's figures by name (``curves``, ``confusion``, ``roc``, and ``embed-*`` maps drawn later)."""
        found = {name: self.record.verified(name) for name in FIGURES if name in self.record.artifacts}
        found.update({p.stem: p for p in sorted(self.path.glob("embed-*.png"))})
        return found

    def figure_names(self, *, external: bool = True) -> list[str]:
        """The names :meth:`show` takes: the recorded figures, ``embed-*`` maps, and (``external``) each evaluation's."""
        artifacts = self.record.artifacts
        names = [name for name in FIGURES if name in artifacts]
        names += [p.stem for p in sorted(self.path.glob("embed-*.png"))]
        if external:
            names += [name for name, entry in artifacts.items()
                      if name.startswith("external/") and entry.file.endswith(".png")]
        return names

    def figure_bytes(self, name: str) -> bytes:
        """The PNG bytes of figure ``name`` (one of :meth:`figure_names`), sha256-checked when the record lists it."""
        self._check_figure(name)
        if name in self.record.artifacts:
            return self.record.read_bytes(name)
        return (self.path / f"{name}.png").read_bytes()  # an embed-* map drawn later: taken as found

    def show(self, name: str):
        """Show figure ``name`` (``"curves"``, ``"confusion"``, ``"roc"``, ``"calibration"``, ``"gradcam"``...) inline.

        Inside IPython or Jupyter the figure is displayed in the cell's output
        and None returned; elsewhere the result is a
        :class:`~xrayfeat.display.FigureImage` (its ``data`` the PNG bytes,
        its ``path`` the file; a notebook shows it as an image). No window opens.
        An unknown name is an :class:`~xrayfeat.options.constraints.OptionError`
        listing the run's figures (:meth:`figure_names`).
        """
        from xrayfeat.display import show_figure

        data = self.figure_bytes(name)
        artifact = self.record.artifacts.get(name)
        path = self.path / (artifact.file if artifact else f"{name}.png")
        return show_figure(name, path, data)

    def _check_figure(self, name) -> None:
        from xrayfeat.options.constraints import Choice, OptionError, check_value

        names = self.figure_names()
        if not names:
            raise OptionError(f"The 'name' parameter of Run.show must be a figure this run records (it records none). "
                              f"Got {name!r} instead.")
        check_value("Run.show", "name", name, Choice(tuple(names)))

    @property
    def head_input(self) -> str:
        """The feature part the head reads: ``spatial`` (the seed's) or ``pooled`` (no Grad-CAM, ``explain`` refuses it)."""
        return self.record.head_input

    def feature_options(self) -> FeatureOptions:
        """The options that select the store this run was trained on."""
        return FeatureOptions(**self.record.features)

    # ------------------------------------------------------------------ tables

    def summary(self):
        """One row per model (head, then baselines): accuracy with its CI, balanced accuracy, ROC-AUC, log-loss, n.

        A multi-label run: macro ROC-AUC with its CI, micro ROC-AUC, macro average precision, loss, n.
        """
        return tables.summary_table(self.metrics)

    def per_class(self, model: str = "head"):
        """One row per class of ``model`` (``"head"`` or a baseline): precision, recall, F1, ROC-AUC, support.

        A multi-label run: one row per finding (counted images, positives, prevalence, ROC-AUC with CI, AP).
        """
        return tables.per_class_table(self._model(model, "per_class"))

    def per_source(self, model: str = "head"):
        """One row per source of ``model``'s test images (empty when the data named no sources): n, accuracy and CI."""
        return tables.per_source_table(self._model(model, "per_source"))

    def per_group(self, model: str = "head"):
        """One row per (group, value) of ``model``'s test images (sex, age band, view...), with intervals.

        Empty when the data put no image in a group (``group:*`` manifest columns, DICOM headers).
        """
        return tables.per_group_table(self._model(model, "per_group"))

    def operating_points(self, model: str = "head"):
        """``model``'s operating points per (class, decision): the argmax and the threshold chosen on validation."""
        return tables.operating_points_table(self._model(model, "operating_points"))

    def calibration(self):
        """One row per model: Brier score and expected calibration error on test."""
        return tables.calibration_table(self.metrics)

    def external(self):
        """One row per (evaluation, model) of ``evaluate``'s recorded results, beside the internal accuracy and AUC."""
        return tables.external_table(self.record, self.metrics)

    def cv(self):
        """``fit-head --cv``: one row per (model, repeat, fold) with the held-out images and each figure, then each
        model's mean and SD across folds; empty for a run without cross-validation."""
        return tables.cv_table(self.metrics)

    def _model(self, model: str, where: str) -> dict:
        """The metrics of ``model`` (``"head"`` or a baseline the run has); an OptionError naming them otherwise."""
        from xrayfeat.options.constraints import Choice, check_value

        found = tables.models_of(self.metrics)
        check_value(f"Run.{where}", "model", model, Choice(tuple(found)))  # one message for every option
        return found[model]

    def predictions(self):
        """The test predictions: path, sha256, patient_id, source, label, y_true, then ``<model>:<class>`` probabilities."""
        import pandas as pd

        table = pd.read_csv(io.StringIO(self.record.predictions_csv()), keep_default_na=False,
                            dtype={"patient_id": str, "source": str})
        # the names as they were: the quote that kept a spreadsheet from running one as a formula is taken off
        table.columns = [csv_value(c) for c in table.columns]
        for column in table.columns:
            if not pd.api.types.is_numeric_dtype(table[column]):  # object, or pandas' own string dtype
                table[column] = table[column].map(lambda v: csv_value(v) if isinstance(v, str) else v)
        return table

    def history(self):
        """Training history: one row per epoch (loss, accuracy, val_loss, val_accuracy, seconds)."""
        import pandas as pd

        table = pd.DataFrame(self.record.history())
        return table.astype({"epoch": int}).set_index("epoch")

    # ------------------------------------------------------------------ models

    @library_call
    def head(self):
        """The trained head (:class:`~xrayfeat.models.head.TrainedHead`), loaded after its sha256 is checked.

        The check comes before Keras is imported: a changed file is refused at once.
        """
        path = self.record.verified("head")
        from xrayfeat.models.head import load_head

        try:
            head = load_head(path)
            outputs = head.model.output_shape[-1]
        except (ValueError, TypeError, KeyError, IndexError, OSError, zipfile.BadZipFile) as exc:  # its sha256 matched
            raise Damaged(f"{path}: run record damaged: not a Keras head ({first_line(exc, typed=True)}); "
                          f"re-run fit-head") from None
        self._check_outputs(path, outputs)
        return head

    def head_arrays(self):
        """The head as numpy arrays (:class:`~xrayfeat.models.head_numpy.NumpyHead`: inference without Keras), or None.

        None for runs whose head has a trained backbone tail, or that were written before heads were saved so.
        """
        if "head_arrays" not in self.record.artifacts:
            return None
        data = self.record.read_bytes("head_arrays")  # what is checked is what is loaded
        from xrayfeat.models.head_numpy import NumpyHead

        path = self.path / self.record.artifacts["head_arrays"].file
        try:
            head = NumpyHead(io.BytesIO(data))
            outputs = head.arrays["out_kernel"].shape[-1]
        except (KeyError, IndexError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise Damaged(f"{path}: run record damaged: not the arrays of a head ({first_line(exc, typed=True)}); "
                          f"re-run fit-head") from None
        self._check_outputs(path, outputs)
        return head

    @library_call
    def baseline(self, name: str):
        """A fitted baseline (``logreg``, ``svm`` or ``pixels``), unpickled only from bytes whose sha256 matches.

        The check comes before scikit-learn is imported: a changed file is refused at once.
        """
        key = f"baseline/{name}"
        if key not in self.record.artifacts:
            raise KeyError(f"{self.path} has no baseline {name!r}; it has {self.record.baseline_names}")
        data = self.record.read_bytes(key)
        from xrayfeat.models.baselines import baseline_from_bytes

        path = self.path / self.record.artifacts[key].file
        fitted = baseline_from_bytes(data, path)
        try:  # the class indices it was fitted on; columns_for puts its columns there
            known = sorted(int(k) for k in fitted.classes_)
        except Exception:  # an object that only looks like a fitted baseline
            known = []
        if not known or known[0] < 0 or known[-1] >= len(self.classes):
            raise Damaged(f"{path}: run record damaged: the baseline predicts other classes than the "
                          f"{len(self.classes)} of config.json; re-run fit-head")
        return fitted

    def _check_outputs(self, path: Path, outputs: int) -> None:
        """The head has one output per class (one sigmoid unit for two; one per finding): else the record and the head disagree."""
        k = len(self.classes)
        expected = k if self.record.multilabel or k != 2 else 1
        if outputs != expected:
            kind = "findings" if self.record.multilabel else "classes"
            raise Damaged(f"{path}: run record damaged: the head has {outputs} output{'s' if outputs != 1 else ''}, "
                          f"but config.json has {k} {kind} (a head for them has {expected}); re-run fit-head")

    # ------------------------------------------------------------------ use

    @library_call
    def predict(self, inputs, *, out=None, cache_dir=None, device: str = "auto", progress: bool = True, **options):
        """Classify new images (files, folders, CSVs of paths): a table with each model's class and probabilities.

        See :func:`xrayfeat.runs.prediction.predict`; the table is ``result.table``.
        """
        from xrayfeat.runs.prediction import predict

        return predict(self, inputs, out=out, cache_dir=cache_dir, device=device, progress=progress, **options)

    @library_call
    def explain(self, inputs, out, *, target_class: str | None = None, cache_dir=None, device: str = "auto",
                progress: bool = True, **options):
        """Grad-CAM overlays (``OUT/<image>.png``) and raw maps (``.npz``) of the head on images, from cached maps.

        Each map explains the image's predicted class, or ``target_class``. See :func:`xrayfeat.runs.explanation.explain`.
        """
        from xrayfeat.runs.explanation import explain

        return explain(self, inputs, out, target_class=target_class, cache_dir=cache_dir, device=device,
                       progress=progress, **options)

    @library_call
    def evaluate(self, data, *, name: str | None = None, classes=None, cache_dir=None, on_error: str = "fail",
                 device: str = "auto", progress: bool = True, **options):
        """Score the run on another site's labelled data (a folder or manifest), recorded under ``external/<name>``.

        ``data`` is discovered as ``xrayfeat evaluate`` discovers it (``classes``,
        the hash memory of ``cache_dir``, ``on_error``): one call, see
        :func:`xrayfeat.runs.external.evaluate`.
        """
        from xrayfeat.runs.external import evaluate

        return evaluate(self, data, name=name, classes=classes, cache_dir=cache_dir, on_error=on_error, device=device,
                        progress=progress, **options)


@library_call
def load_run(path: str | os.PathLike) -> Run:
    """The run in folder ``path`` (a :class:`Run`); one clear error when it is not a run or is damaged."""
    return Run(path)
