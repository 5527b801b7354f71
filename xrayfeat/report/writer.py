"""The comparison report: run records in, one Markdown file and one self-contained HTML file out.

:func:`write_report` reads each run folder through :func:`xrayfeat.runs.record.read_record`
(the typed, versioned record; ``metrics.json`` and ``history.csv`` are read only
after their sha256 matches the record) and renders

* the seed's comparison table, one per task (runs grouped by the record's task
  and class list, since accuracies on different label sets do not compare):
  backbone, cut layer, weights (RANDOM flagged), parameters, time per epoch,
  head and extraction time, test loss, accuracy with its bootstrap interval,
  the head's accuracy across seeds when it was trained under several
  (``fit-head --repeats``: mean ± SD and [min–max] beside the one run's
  interval), balanced accuracy, ROC-AUC and the test accuracy of every baseline;
* when a run was scored on another site's data (``xrayfeat evaluate``), an
  "External validation" table: every (run, external dataset) with the head's
  accuracy and ROC-AUC internal → external, the change, n and the images left
  out, and a sentence for each result that does not carry;
* a "Warnings" section that gathers every run's warnings and those of its
  external evaluations, de-duplicated, grouped by their recorded kind (most
  serious first, headed as in :data:`xrayfeat.runs.record.WARNING_KINDS`) and attributed
  to the runs that raised them (``run (external: name)`` for an evaluation);
* per run: a configuration summary (for a run written before checksums, that
  its tables are :data:`~xrayfeat.runs.record.UNVERIFIED_NOTE`), each model's test results, the head's
  spread across seeds (with a sentence when it is wider than the bootstrap
  interval), the operating points (each class's threshold chosen on validation
  and the argmax, with sensitivity, specificity, PPV, NPV and F1 on test),
  calibration (Brier score and ECE), "Internal vs external" when the run has
  external results (each model's accuracy and ROC-AUC on its own test split
  beside each external dataset, with the change, then each dataset's operating
  points under the run's own thresholds, figures and warnings), per-class and
  per-source tables, the training history, the figures, the Grad-CAM grid and
  the run's warnings.

A section whose data a run lacks (runs written before operating points,
calibration, repeats or Grad-CAM existed) is left out, not shown empty.

Internal accuracy in this field is often a source shortcut that another
hospital's X-rays expose, so the external figures are shown beside the internal
ones and never in their place. A run without external results renders as it
did before they existed.

The document model and its Markdown and HTML renderers live in
:mod:`xrayfeat.report.document`; this module decides what the report says. The
Markdown refers to copies of the figures under ``OUT/figures/`` by relative
path (the folder can be moved or zipped); the HTML embeds every figure and
carries its own CSS, so it is one file that opens offline. Every string taken
from a run record is escaped by the renderers.

Only the standard library is used; no model is loaded.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from xrayfeat import __version__
from xrayfeat.backbones import REGISTRY
from xrayfeat.errors import XrayfeatError
from xrayfeat.fileio import atomic_write, writing_to
from xrayfeat.runtime import library_call
from xrayfeat.store.fingerprint import is_imported
from xrayfeat.models.head import steady_epoch_seconds
from xrayfeat.provenance import utc_timestamp
from xrayfeat.report import crossval, findings
from xrayfeat.report.cells import DASH, difference, duration, number, signed_number, whole, with_ci
from xrayfeat.report.document import (
    Figure,
    Figures,
    Folded,
    Heading,
    List,
    Para,
    Span,
    Table,
    png_size,
    render_html,
    render_markdown,
)
from xrayfeat.runs.record import (
    RANDOM_WEIGHTS_WARNING,
    UNVERIFIED_NOTE,
    WARNING_KINDS,
    RunRecord,
    RunWarning,
    finite_float,
    read_record,
)
from xrayfeat.runs.outputs import check_output

__all__ = ["write_report", "FIGURE_CAPTIONS", "GRADCAM"]

log = logging.getLogger("xrayfeat")

#: The fixed figures of a run, in the order they are shown; ``embed-*.png`` follow.
FIGURE_CAPTIONS = (("curves.png", "training curves"), ("confusion.png", "confusion matrix (head, test)"),
           ("roc.png", "ROC curves (head, test)"),
           ("calibration.png", "reliability diagram (test, one curve per model)"))
#: The Grad-CAM grid fit-head draws for the seed's head: shown in a section of its own, with what it shows.
GRADCAM = "gradcam.png"

_PRESENT = "\u2020"  # marks an AUC averaged over the classes present (the macro AUC is undefined)
#: A head whose external accuracy falls more than this below its internal one does not carry.
DROP_LIMIT = 0.1
_SEVERITY = {kind: i for i, kind in enumerate(WARNING_KINDS)}  # WARNING_KINDS is ordered most serious first
#: The rates of an operating point, in the order the tables show them.
_RATES = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("ppv", "PPV"), ("npv", "NPV"), ("f1", "F1"))
#: The head's metrics that ``fit-head --repeats`` spreads over seeds.
_SPREAD = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC-AUC"))


# --------------------------------------------------------------------------- loading


class _Scores:
    """The head's and the baselines' metrics of a ``metrics.json`` (``self.metrics``)."""

    metrics: dict

    @property
    def head(self) -> dict:
        return self.metrics["head"]

    @property
    def baselines(self) -> dict:
        return self.metrics["baselines"]


@dataclass
class _External(_Scores):
    """One external evaluation of a run (``xrayfeat evaluate``): its record entry, checked metrics and warnings."""

    name: str
    slug: str  # safe in file names and HTML ids
    anchor: str
    info: dict  # the record's external[name]: data, created, n, excluded, classes, warnings
    metrics: dict
    warnings: list[RunWarning]


@dataclass
class _Run(_Scores):
    """One run record, its checked metrics and history, and the names the report gives it."""

    record: RunRecord
    name: str
    slug: str  # safe in file names and HTML ids
    metrics: dict
    history: list
    warnings: list[RunWarning]
    external: list[_External] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.record.path

    @property
    def anchor(self) -> str:
        return f"run-{self.slug}"


def _warnings(record: RunRecord) -> list[RunWarning]:
    """The record's warnings in order, with a random-weights one first when a random run lacks it."""
    found = list(record.warnings)
    if record.random_weights and not any(w.kind == "random_weights" for w in found):
        # a legacy record holds the same sentence as kind "other": the recorded kind replaces it
        found = [RANDOM_WEIGHTS_WARNING] + [w for w in found if w.message != RANDOM_WEIGHTS_WARNING.message]
    return list(dict.fromkeys(found))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "run"


def _external_metrics(record: RunRecord, name: str) -> dict:
    """``{"head": {...}, "baselines": {...}}`` of ``external/<name>/metrics``, read after its sha256 and schema check."""
    metrics = record.external_metrics(name)  # RunError (one line) when not recorded, missing, changed or damaged
    return {"head": metrics["head"], "baselines": metrics["baselines"]}


def _external_warnings(info: dict) -> list[RunWarning]:
    """The warnings ``evaluate`` recorded, as :class:`RunWarning`; a kind this xrayfeat does not know is ``other``."""
    found = []
    for w in info.get("warnings") or []:
        kind, message = (w.get("kind"), w.get("message")) if isinstance(w, dict) else ("other", w)
        found.append(RunWarning(kind if kind in WARNING_KINDS else "other", str(message)))
    return list(dict.fromkeys(found))


def _load_external(record: RunRecord, anchor: str) -> list[_External]:
    """The run's external evaluations in the order the record holds them, their metrics checked."""
    found = []
    for name, info in (record.external or {}).items():  # each entry checked against the record's schema
        slug = _slug(str(name))
        found.append(_External(name=str(name), slug=slug, anchor=f"{anchor}-external-{slug}", info=info,
                               metrics=_external_metrics(record, name), warnings=_external_warnings(info)))
    return found


def _load_runs(paths) -> list[_Run]:
    """Read each run folder; :class:`~xrayfeat.errors.RunError` (one line) for anything that is not a sound run."""
    loaded: list[_Run] = []
    seen: set[Path] = set()
    slugs: set[str] = set()
    for raw in paths:
        path = Path(os.fspath(raw))
        record = read_record(path)
        resolved = path.resolve()
        if resolved in seen:
            log.info("%s: given twice; reported once", path)
            continue
        seen.add(resolved)
        name = resolved.name or str(path)
        slug = _slug(name)
        if slug in slugs:  # two runs named alike in different folders: add the parent's name
            name = f"{resolved.parent.name}-{name}"
            slug = _slug(name)
        base, k = slug, 2
        while slug in slugs:
            slug, k = f"{base}-{k}", k + 1
        if slug != _slug(name):
            name = slug
        slugs.add(slug)
        history = record.history() if "history" in record.artifacts else []
        loaded.append(_Run(record=record, name=name, slug=slug, metrics=record.metrics(), history=history,
                           warnings=_warnings(record), external=_load_external(record, f"run-{slug}")))
    return loaded


# --------------------------------------------------------------------------- values


def _auc(m: dict | None) -> tuple[float | None, bool]:
    """The macro ROC-AUC or, when a class is absent (macro undefined), the mean over the classes present; and which."""
    if m is None:
        return None, False
    macro = finite_float(m.get("macro_roc_auc" if findings.is_multilabel(m) else "roc_auc"))
    if macro is not None:
        return macro, False
    present = finite_float(m.get("roc_auc_present"))
    return present, present is not None


def _marked(x, present: bool, signed: bool = False) -> str:
    text = signed_number(x) if signed else number(x)
    return text + _PRESENT if present and text != DASH else text


def _ci_level(runs) -> str:
    levels = {finite_float(r.head["ci_level"]) for r in runs} - {None}
    return f"{100 * levels.pop():g}%" if len(levels) == 1 else "95%"


def _baseline_order(runs) -> list[str]:
    """The union of baseline names in order of first appearance, the pixels sentinel last."""
    names = list(dict.fromkeys(name for r in runs for name in r.baselines))
    return [n for n in names if n != "pixels"] + [n for n in names if n == "pixels"]


def _warning_label(kind: str) -> Span:
    return Span(WARNING_KINDS[kind] + ": ", "strong")


def _model_label(name: str) -> str:
    return name + (" (sentinel)" if name == "pixels" else "")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


# --------------------------------------------------------------------------- content


def _groups(runs) -> list[tuple[str, list[str], list[_Run]]]:
    """Runs grouped by (task, class list), in order of first appearance."""
    groups: dict[tuple, list[_Run]] = {}
    for r in runs:
        groups.setdefault((r.record.task, tuple(r.record.classes)), []).append(r)
    return [(task, list(classes), members) for (task, classes), members in groups.items()]


def _weights_cell(r: _Run) -> list:
    weights = r.record.weights
    if r.record.random_weights:
        return [Span("RANDOM", "flag")]
    if weights["kind"] == "file" and weights["path"]:
        return [f"file {Path(str(weights['path'])).name}"]
    return [str(weights["kind"])]


def _layer_text(r: _Run) -> str:
    layer = r.record.store["fingerprint"].get("layer", "imported")  # imported features: no layer is known
    return f"{layer} + trained tail" if r.record.head.get("train_tail") else str(layer)


def _backbone_cell(r: _Run) -> list:
    fp = r.record.store["fingerprint"]
    if is_imported(fp):
        return [r.record.backbone, Span(" (imported)", "sub")]
    spec = REGISTRY.get(r.record.backbone)
    size = f"{spec.params / 1e6:.1f}M frozen params, " if spec is not None and spec.params else ""
    return [r.record.backbone, Span(f" ({size}{fp['image_size']} px)", "sub")]


#: The comparison table's columns that say what a run is and what it cost, before its figures.
_RUN_COLUMNS = ("Run", "Backbone", "Layer", "Weights", "Params", "s / epoch", "Head s", "Extraction s")


def _run_cells(r: _Run) -> list:
    """A run's cells of :data:`_RUN_COLUMNS`."""
    params, timings = r.record.params, r.record.timings
    extracted = timings.get("extracted_images")
    extraction = [duration(timings.get("extraction_seconds"))]
    if extracted is not None:
        extraction.append(Span(" (all cached)" if extracted == 0 else f" ({whole(extracted)} new)", "sub"))
    return [Span(r.name, "link", r.anchor), _backbone_cell(r), _layer_text(r), _weights_cell(r),
            [whole(params["total"]), Span(f" ({whole(params['trainable'])} trainable)", "sub")],
            duration(timings.get("seconds_per_epoch")), duration(timings.get("head_seconds")), extraction]


def _comparison(task: str, classes: list[str], runs: list[_Run]) -> list:
    """One task's table (the seed's comparison) and the notes that make it readable."""
    baselines = _baseline_order(runs)
    level = _ci_level(runs)
    seeds = any(_spread(r, "accuracy") for r in runs)  # the column only where a run was trained under several seeds
    cv = any(r.metrics.get("cv") for r in runs)  # the column only where a run was cross-validated
    multilabel = findings.is_multilabel(runs[0].head)
    header = list(_RUN_COLUMNS)
    if multilabel:
        header += findings.comparison_columns(level, baselines)
    else:
        header += ["Test loss", f"Accuracy [{level} CI]"]
        header += ["Accuracy over seeds (mean ± SD)"] if seeds else []
        header += ["CV accuracy (mean ± SD)"] if cv else []
        header += ["Balanced acc.", "ROC-AUC"]
        header += [f"{name} acc." + (" (sentinel)" if name == "pixels" else "") for name in baselines]
    rows = []
    for r in runs:
        head = r.head
        row = _run_cells(r)
        if multilabel:
            rows.append(row + findings.comparison_cells(r, baselines))
            continue
        row += [number(head["loss"]), with_ci(head["accuracy"], head["ci"]["accuracy"], "sub")]
        row += [_spread_cell(r)] if seeds else []
        row += [crossval.comparison_cell(r.metrics)] if cv else []
        row += [number(head["balanced_accuracy"]), number(head["roc_auc"])]
        row += [number(r.baselines[name]["accuracy"]) if name in r.baselines else DASH for name in baselines]
        rows.append(row)
    numeric = set(range(5, len(header)))
    blocks: list = [
        Heading(3, f"Task {task}: {', '.join(classes) or '(no classes recorded)'}"
                   f" ({len(runs)} run{'s' if len(runs) != 1 else ''})"),
        Table(header, rows, numeric, cls="compare"),
    ]
    wider = [[Span(r.name, "link", r.anchor), ": ", note] for r in runs
             for note in [_wider_than_interval(r, "accuracy", "accuracy")] if note]
    if wider:
        blocks.append(List(wider))
    if multilabel:
        blocks.append(Para(findings.MULTILABEL_NOTE, cls="note"))
    tested_on = {(r.record.data, r.record.counts["test"]) for r in runs}
    if len(tested_on) > 1:
        blocks.append(Para("These runs were tested on different data or test sets: compare them with care.",
                           cls="note"))
    return blocks


def _comparison_note(runs: list[_Run]) -> Para:
    """What the comparison columns mean, said once under all the tables."""
    methods = sorted({str(r.head["ci_method"]) for r in runs})
    text = (f"All figures are on the test split. Accuracy intervals: {_ci_level(runs)}, "
            f"{'; '.join(methods) or 'method not recorded'}. Test loss is the mean log-loss of the true class. "
            "Params count the trained model (the head, and the backbone tail when it is trained); beside each "
            "backbone, its own frozen parameters as Keras counts them. "
            "s / epoch is the mean over epochs, the first of which includes compilation; extraction time "
            "covers only the features the cache lacked.")
    if any(_spread(r, "accuracy") for r in runs):
        text += (" Accuracy over seeds: the head trained again under the next seeds on the same features and split "
                 "(baselines do not depend on the seed), mean ± SD and [min–max]; the bootstrap interval beside it "
                 "resamples one run's test images and says nothing of the seed.")
    if any("pixels" in r.baselines for r in runs):
        text += (" The pixels sentinel is a logistic regression on 32×32 grayscale pixels: a deep result "
                 "close to it says the data, not the model, does the work.")
    return Para(text, cls="note")


# --------------------------------------------------------------------------- seeds


def _spread(r: _Run, metric: str) -> dict | None:
    """The head's ``metric`` across seeds (mean, sd, min, max, values) from ``repeats``; None for a single seed."""
    repeats = r.metrics.get("repeats")
    spread = repeats.get("head", {}).get(metric) if isinstance(repeats, dict) else None
    return spread if isinstance(spread, dict) and finite_float(spread.get("mean")) is not None else None


def _n_seeds(r: _Run, spread: dict) -> int:
    return len(spread.get("values") or r.metrics["repeats"].get("seeds") or [])


def _spread_cell(r: _Run) -> list:
    """``0.660 ± 0.083``, then ``[0.560–0.760]`` and ``(4 seeds)`` under it; a dash for a run under one seed."""
    spread = _spread(r, "accuracy")
    if spread is None:
        return [DASH]
    return [f"{number(spread['mean'])} ± {number(spread['sd'])}",
            Span(f" [{number(spread['min'])}–{number(spread['max'])}]", "sub"),
            Span(f" ({_plural(_n_seeds(r, spread), 'seed')})", "sub")]


def _wider_than_interval(r: _Run, metric: str, label: str) -> str | None:
    """A sentence when the seeds' range of the head's ``metric`` is wider than one run's bootstrap interval."""
    spread = _spread(r, metric)
    ci = r.head["ci"].get(metric)
    low, high = (finite_float(spread.get(k)) for k in ("min", "max")) if spread else (None, None)
    if low is None or high is None or ci is None or round((high - low) - (ci[1] - ci[0]), 9) <= 0:
        return None
    return (f"head {label} over {_plural(_n_seeds(r, spread), 'seed')} ranged from {low:.3f} to {high:.3f}, a spread "
            f"of {high - low:.3f} that the {_ci_level([r])} bootstrap interval of one run [{ci[0]:.3f}, {ci[1]:.3f}] "
            f"(width {ci[1] - ci[0]:.3f}) does not show: the interval resamples the test images, not the training, "
            "so differences between runs within the seed range are not evidence.")


def _seeds_section(r: _Run) -> list:
    """The head's accuracy, balanced accuracy and ROC-AUC across seeds, and what the bootstrap interval misses."""
    rows = [[_capital(label), number(s["mean"]), number(s["sd"]), number(s["min"]), number(s["max"]), str(_n_seeds(r, s))]
            for metric, label in _SPREAD for s in [_spread(r, metric)] if s]
    if not rows:
        return []
    seeds = r.metrics["repeats"].get("seeds") or []
    blocks: list = [Heading(3, "Seed variance (head)"),
                    Table(["Metric", "Mean", "SD", "Min", "Max", "Seeds"], rows, {1, 2, 3, 4, 5}),
                    Para(f"The head trained under seeds {', '.join(map(str, seeds)) or DASH} on the same features "
                         "and split, scored on the same test images (SD with ddof 1); the Test results above are the "
                         "first seed's. Baselines are fitted once: they do not depend on the head's seed.", cls="note")]
    blocks += [Para(_capital(note)) for note in (_wider_than_interval(r, metric, label) for metric, label in _SPREAD)
               if note]
    return blocks


def _gathered_warnings(runs: list[_Run]) -> list[tuple[str, str, list[tuple[_Run, _External | None]]]]:
    """(kind, message, owners) for each distinct message, most serious kind first (stable within a kind).

    An owner is ``(run, None)`` for the run's own warning and ``(run, external)``
    for one its evaluation on external data recorded. A message recorded with
    several kinds (an old run's ``other`` and a new run's kind) is shown once,
    under the most serious of them.
    """
    by_text: dict[str, tuple[str, list]] = {}
    for r in runs:
        sources = [(None, r.warnings)] + [(e, e.warnings) for e in r.external]
        for ext, warnings in sources:
            for w in warnings:
                kind, owners = by_text.get(w.message, (w.kind, []))
                if not any(o is r and e is ext for o, e in owners):
                    owners.append((r, ext))
                by_text[w.message] = (min(kind, w.kind, key=_SEVERITY.__getitem__), owners)
    gathered = [(kind, text, owners) for text, (kind, owners) in by_text.items()]
    return sorted(gathered, key=lambda item: _SEVERITY[item[0]])


def _warnings_section(runs: list[_Run]) -> list:
    """Every run's warnings, de-duplicated, grouped by kind (most serious first), each naming its runs."""
    gathered = _gathered_warnings(runs)
    blocks: list = [Heading(2, "Warnings", "warnings")]
    if not gathered:
        blocks.append(Para("No run recorded a warning."))
        return blocks
    items = []
    for kind, text, owners in gathered:
        item: list = [_warning_label(kind), text, Span(" — ", "muted"),
                      Span("runs: " if len(owners) > 1 else "run: ", "muted")]
        for i, (r, ext) in enumerate(owners):
            if i:
                item.append(", ")
            item.append(Span(r.name, "link", r.anchor) if ext is None
                        else Span(f"{r.name} (external: {ext.name})", "link", ext.anchor))
        items.append(item)
    blocks.append(List(items, cls="warnings"))
    return blocks


# --------------------------------------------------------------------------- external validation


def _absent(r: _Run, e: _External) -> list[str]:
    """The run's classes that the external data lacks (their per-class figures and the macro AUC are undefined)."""
    present = e.info.get("classes")
    return [] if present is None else [c for c in r.record.classes if c not in present]


def _carry_note(r: _Run, e: _External) -> str | None:
    """One sentence when the head's accuracy does not carry to ``e``: chance inside the external interval, or a
    fall of more than :data:`DROP_LIMIT`; None otherwise."""
    reasons = []
    multilabel = findings.is_multilabel(r.head)
    figure, label = ("macro_roc_auc", "macro ROC-AUC") if multilabel else ("accuracy", "accuracy")
    k = len(r.record.classes)
    chance, chance_text = (0.5, "0.500") if multilabel else (1 / k if k else None, f"1/{k} = {1 / k:.3f}" if k else "")
    ci = (e.head.get("ci") or {}).get(figure)
    if chance is not None and ci is not None and ci[0] <= chance <= ci[1]:
        reasons.append(f"its {_ci_level([e])} interval [{ci[0]:.3f}, {ci[1]:.3f}] includes chance ({chance_text})")
    change = difference(r.head.get(figure), e.head.get(figure))
    if change is not None and round(-change, 9) > DROP_LIMIT:
        reasons.append(f"it is {-change:.3f} below the internal {number(r.head.get(figure))}")
    if not reasons:
        return None
    return (f"Head {label} on {e.name} is {number(e.head.get(figure))}: {' and '.join(reasons)}; "
            f"the internal result does not carry to {e.name}.")


def _present_note(marked: list[tuple[_Run, _External]]) -> Para:
    """The footnote for AUCs averaged over the classes present."""
    where = "; ".join(f"{e.name}: {', '.join(_absent(r, e)) or 'not recorded'}" for r, e in marked)
    return Para(f"{_PRESENT} Mean one-vs-rest ROC-AUC over the classes present: the macro ROC-AUC is undefined "
                f"when a class is absent (absent from {where}).", cls="note")


def _auc_cells(inside: dict | None, outside: dict | None) -> tuple[str, str, str, bool]:
    """Internal AUC, external AUC and their change as text, and whether any is marked as over the classes present."""
    int_auc, int_present = _auc(inside)
    ext_auc, ext_present = _auc(outside)
    present = int_present or ext_present
    return (_marked(int_auc, int_present), _marked(ext_auc, ext_present),
            _marked(difference(int_auc, ext_auc), present, signed=True), present)


def _external_overview(runs: list[_Run]) -> list:
    """The cross-run "External validation" table: every (run, external dataset), head internal → external."""
    pairs = [(r, e) for r in runs for e in r.external]
    if not pairs:
        return []
    header = ["Run", "External data", "n", "Excluded", "Head acc. internal → external", "Δ acc.",
              "Head ROC-AUC internal → external", "Δ AUC"]
    rows, marked, notes = [], [], []
    for r, e in pairs:
        int_auc, ext_auc, auc_change, present = _auc_cells(r.head, e.head)
        ext_ci = (e.head.get("ci") or {}).get("accuracy")
        rows.append([
            Span(r.name, "link", r.anchor), Span(e.name, "link", e.anchor),
            whole(e.info.get("n", e.head.get("n"))), whole(e.info.get("excluded")),
            [f"{number(r.head.get('accuracy'))} → ", *with_ci(e.head.get("accuracy"), ext_ci, "sub")],
            signed_number(difference(r.head.get("accuracy"), e.head.get("accuracy"))),
            f"{int_auc} → {ext_auc}", auc_change,
        ])
        if present:
            marked.append((r, e))
        note = _carry_note(r, e)
        if note:
            notes.append([Span(r.name, "link", r.anchor), ": ", note])
    blocks: list = [Heading(2, "External validation", "external"), Table(header, rows, set(range(2, len(header))))]
    if notes:
        blocks.append(List(notes))
    blocks.append(Para("Each run scored on another site's labelled X-rays (xrayfeat evaluate), all of them test data. "
                       "Δ is external − internal: negative means worse on the external data. Excluded counts images "
                       "byte-identical to the run's training or validation images, left out. A model that learned its "
                       "sources rather than the disease scores well internally and near chance elsewhere.", cls="note"))
    if marked:
        blocks.append(_present_note(marked))
    return blocks


def _external_table(r: _Run) -> tuple[Table, bool]:
    """Per model (head, then baselines): internal accuracy and AUC beside each external dataset's, and the change."""
    level = _ci_level([r])
    models = ["head", *r.baselines]
    models += [m for e in r.external for m in e.baselines if m not in models]
    header = ["Model", f"Internal acc. [{level} CI]"]
    for e in r.external:
        header += [f"{e.name} acc. [{level} CI]", f"{e.name} Δ acc."]
    header.append("Internal ROC-AUC")
    for e in r.external:
        header += [f"{e.name} ROC-AUC", f"{e.name} Δ AUC"]
    rows, any_present = [], False
    for model in models:
        inside = r.head if model == "head" else r.baselines.get(model)
        outside = [e.head if model == "head" else e.baselines.get(model) for e in r.external]
        row: list = [_model_label(model)]
        row.append(with_ci(inside["accuracy"], inside["ci"]["accuracy"]) if inside else DASH)
        for m in outside:
            row.append(with_ci(m.get("accuracy"), (m.get("ci") or {}).get("accuracy")) if m else DASH)
            row.append(signed_number(difference(inside and inside["accuracy"], m and m.get("accuracy"))))
        aucs = [_auc_cells(inside, m) for m in outside]
        row.append(aucs[0][0])
        for _, ext_auc, auc_change, present in aucs:
            row += [ext_auc, auc_change]
            any_present = any_present or present
        rows.append(row)
    return Table(header, rows, set(range(1, len(header)))), any_present


def _external_section(r: _Run, out: Path) -> list:
    """"Internal vs external" in a run's section: the table, what does not carry, then each dataset's details."""
    if not r.external:
        return []
    multilabel = findings.is_multilabel(r.head)
    table, present = (findings.external_findings_table(r), False) if multilabel else _external_table(r)
    blocks: list = [Heading(3, "Internal vs external"), table]
    blocks += [Para(note) for note in (_carry_note(r, e) for e in r.external) if note]
    blocks.append(Para("Internal: the run's own test split. Δ is external − internal: negative means worse on the "
                       "external data.", cls="note"))
    if present:
        blocks.append(_present_note([(r, e) for e in r.external if _auc(e.head)[1]
                                     or any(_auc(m)[1] for m in e.baselines.values())]))
    for e in r.external:
        info = e.info
        parts = [f"{whole(info.get('n', e.head.get('n')))} images scored as test data"]
        if info.get("excluded") is not None:
            parts.append(f"{whole(info['excluded'])} left out as byte-identical to training or validation images")
        if info.get("classes") is not None:
            parts.append("classes " + (", ".join(info["classes"]) or DASH))
        if _absent(r, e):
            parts.append("absent: " + ", ".join(_absent(r, e)))
        if info.get("created"):
            parts.append(f"evaluated {info['created']}")
        blocks += [Heading(4, f"External: {e.name}", e.anchor),
                   Para(["Data ", Span(str(info.get("data", DASH)), "code"), " · " + " · ".join(parts)], cls="note")]
        blocks += [] if multilabel else _external_points(e)
        blocks += findings.group_tables(e.head, _ci_level([e]), f"external: {e.name}", depth=5)
        figures = _external_figures(r, e, out)
        if figures:
            blocks.append(Figures(figures))
        ranked = sorted(e.warnings, key=lambda w: _SEVERITY[w.kind])
        blocks.append(List([[_warning_label(w.kind), w.message] for w in ranked], cls="warnings") if ranked
                      else Para("No warnings.", cls="note"))
    return blocks


# --------------------------------------------------------------------------- operating points and calibration


def _operating_points(m: dict | None) -> dict | None:
    """A model's ``operating_points`` (thresholds chosen on validation); None for runs written before them."""
    points = (m or {}).get("operating_points")
    return points if isinstance(points, dict) and points.get("classes") else None


def _decision(point: dict, rule) -> list:
    """The threshold row's label: ``P ≥ 0.312`` and its rule, or why the class has no threshold."""
    threshold = finite_float(point.get("threshold"))
    if threshold is None:
        return ["no threshold", Span(f" ({point.get('note') or 'none chosen'})", "sub")]
    return [f"P ≥ {threshold:.3f}"] + ([Span(f" ({rule})", "sub")] if rule else [])


def _point_cells(p: dict | None) -> list:
    """Each rate with its interval (its own line in HTML), then the counts; dashes when there is no such point."""
    if not p:
        return [DASH] * (len(_RATES) + 1)
    ci = p.get("ci") or {}
    counts = " · ".join(whole(p.get(k)) for k in ("tp", "fp", "tn", "fn"))
    return [with_ci(p.get(key), ci.get(key), "sub") for key, _ in _RATES] + [counts]


def _head_points_table(points: dict) -> Table:
    """Per class: the argmax, then the validation threshold, each with its rates on the data scored."""
    header = ["Class", "Decision", *(label for _, label in _RATES), "TP · FP · TN · FN"]
    rows = []
    for cls, point in points["classes"].items():
        rows.append([str(cls), "argmax", *_point_cells(point.get("argmax"))])
        rows.append([str(cls), _decision(point, points.get("rule")), *_point_cells(point.get("at_threshold"))])
    return Table(header, rows, set(range(2, len(header))))


def _baseline_points_table(baselines: dict) -> Table | None:
    """Per baseline and class, compact: the threshold, and each rate at the argmax → at the threshold."""
    rows = []
    for name, m in baselines.items():
        points = _operating_points(m)
        for cls, point in (points["classes"] if points else {}).items():
            argmax, at = point.get("argmax") or {}, point.get("at_threshold") or {}
            rows.append([_model_label(name), str(cls), number(point.get("threshold")),
                         *(f"{number(argmax.get(key))} → {number(at.get(key))}" for key, _ in _RATES)])
    if not rows:
        return None
    return Table(["Model", "Class", "Threshold", *(f"{label} argmax → thr." for _, label in _RATES)], rows,
                 set(range(2, len(_RATES) + 3)))


def _points_blocks(scores: _Scores, note: str) -> list:
    """``note``, the head's operating points in full and the baselines' folded in brief; nothing for older runs."""
    points = _operating_points(scores.head)
    baselines = _baseline_points_table(scores.baselines)
    if not points and not baselines:
        return []
    blocks: list = [Para(note, cls="note")]
    if points:
        blocks.append(_head_points_table(points))
    if baselines:
        blocks.append(Folded("Baselines, each at its own validation threshold (argmax → threshold, without "
                             "intervals)", [baselines]))
    return blocks


def _points_section(r: _Run) -> list:
    points = _operating_points(r.head) or {}
    rule, positive = points.get("rule") or r.metrics.get("threshold_rule"), r.metrics.get("positive")
    note = (f"Thresholds chosen on the {points.get('chosen_on') or 'validation'} split"
            f"{f' by the rule {rule}' if rule else ''}, never on the test split, then applied unchanged to the test "
            "images. " + (f"Positive class: {positive}. " if positive is not None else "Each class against the rest. ")
            + "argmax calls a class when it has the highest probability; P ≥ t when the class's probability reaches "
            f"its threshold. {_ci_level([r])} intervals from the bootstrap of the other figures, the thresholds held "
            "fixed.")
    blocks = _points_blocks(r, note)
    return [Heading(3, "Operating points"), *blocks] if blocks else []


def _external_points(e: _External) -> list:
    """The run's operating points on ``e``: whether a threshold chosen on the run's validation data carries."""
    blocks = _points_blocks(e, f"The run's thresholds, chosen on its own validation split, applied unchanged to "
                               f"{e.name}: beside the run's Operating points they show whether each one carries. "
                               f"{_ci_level([e])} intervals.")
    return [Heading(5, f"Operating points on {e.name}"), *blocks] if blocks else []


def _calibration_cells(m: dict | None) -> list:
    found = (m or {}).get("calibration") or {}
    return [number(found.get("brier")), number(found.get("ece"))]


def _calibration_section(r: _Run) -> list:
    """Brier score and ECE per model on test, and on each external dataset; nothing for runs without them."""
    models = [("head", r.head), *r.baselines.items()]
    bins = {m["calibration"].get("n_bins") for _, m in models if isinstance(m.get("calibration"), dict)}
    if not bins:
        return []
    header = ["Model", "Brier", "ECE"]
    for e in r.external:
        header += [f"{e.name} Brier", f"{e.name} ECE"]
    rows = []
    for name, m in models:
        row = [_model_label(name), *_calibration_cells(m)]
        for e in r.external:
            row += _calibration_cells(e.head if name == "head" else e.baselines.get(name))
        rows.append(row)
    n_bins = " or ".join(str(b) for b in sorted(bins, key=str))
    return [Heading(3, "Calibration"), Table(header, rows, set(range(1, len(header)))),
            Para("Brier score: the mean squared gap between the predicted probabilities and the true labels (one-hot "
                 "when there are more than two classes); 0 is perfect. ECE: the top label's expected calibration "
                 f"error, |accuracy − confidence| over {n_bins} equal-width confidence bins weighted by their "
                 "images; 0 means that predictions made with 0.8 are right 8 times in 10. The reliability diagram "
                 "is under Figures.", cls="note"), *_calibrated_blocks(r)]


def _change(figures: dict, figure: str) -> str:
    """``before → after`` of one figure of a calibrator's record."""
    return f"{number(figures['before'].get(figure))} → {number(figures['after'].get(figure))}"


def _calibrated_blocks(r: _Run) -> list:
    """The calibration fit-head fitted on validation (``--calibrate``): Brier and ECE before → after; none without it."""
    calibrated = r.metrics.get("calibrated")
    if not calibrated:
        return []
    rows = []
    for name, model in calibrated["models"].items():
        fitted = (f"T = {model['temperature']:.3g}" if "temperature" in model else
                  f"isotonic, {sum(1 for m in model['isotonic'].values() if m)} map(s)")
        rows.append([_model_label(name), fitted, _change(model["validation"], "brier"),
                     _change(model["validation"], "ece"), _change(model["test"], "brier"), _change(model["test"], "ece")])
    mean = " (means over findings)" if r.record.multilabel else ""
    return [Heading(4, f"Calibrated on validation ({calibrated['method']})"),
            Table(["Model", "Calibrator", "Brier val", "ECE val", "Brier test", "ECE test"], rows, set(range(2, 6))),
            Para(f"fit-head --calibrate {calibrated['method']} fitted each model's calibrator on the "
                 f"{calibrated['n']} validation images only, and its probabilities are read through it everywhere "
                 f"after: the thresholds were chosen on the calibrated validation probabilities, and the test "
                 f"figures above, predict and evaluate use the calibrated ones. Brier and ECE{mean} before → after; "
                 f"the test change is the honest one.", cls="note")]


def _features_line(record, fp: dict) -> str:
    """What computed the features: the backbone's fields, or, imported, the name, the file and the declared provenance."""
    if is_imported(fp):
        declared = ", ".join(f"{k.replace('_', ' ')} {fp[k]}" for k in ("model", "source_url", "description") if fp.get(k))
        return (f"imported as {record.backbone} (no backbone ran here) from a file with sha256 {fp['file_sha256']}"
                f"{'; declared: ' + declared if declared else '; no provenance declared'}, stored {fp['store_dtype']}")
    return ", ".join(f"{k} {fp[k]}" for k in ("backbone", "layer", "image_size", "preprocess", "precision",
                                              "store_dtype") if k in fp)


def _config_rows(r: _Run) -> list:
    record = r.record
    head, fp = record.head, record.store["fingerprint"]
    rows = [
        ("Data", [Span(record.data, "code")]),
        ("Classes", f"{', '.join(record.classes) or DASH} (task {record.task})"),
        ("Images", " · ".join(f"{k} {whole(v)}" for k, v in record.counts.items()) or DASH),
        ("Validation", record.validation),
        ("Features", _features_line(record, fp)),
    ]
    weights = [str(record.weights["identity"])]
    if record.weights["path"]:
        weights.append(f" from {record.weights['path']}")
    if record.random_weights:
        weights = [Span("RANDOM", "flag"), " ", *weights]
    rows.append(("Weights", weights))
    keys = (("epochs", "epochs"), ("head_batch_size", "batch"), ("steps_per_epoch", "steps/epoch"),
            ("validation_steps", "validation steps"), ("learning_rate", "lr"), ("units", "units"),
            ("dropout", "dropout"), ("l2", "l2"), ("class_weight", "class weight"), ("restore_best", "restore best"),
            ("repeats", "repeats"), ("threshold", "threshold"), ("positive", "positive class"))
    head_text = " · ".join(f"{label} {head[k]}" for k, label in keys if head.get(k) is not None)
    if head["train_tail"]:
        head_text += " · trains the backbone tail"
    rows.append(("Head", head_text or DASH))
    rows.append(("Baselines", ", ".join(head["baselines"]) or "none"))
    rows.append(("Seed", str(head["seed"])))
    rows.append(("Store fingerprint", [Span(record.store["fingerprint_id"], "code"),
                                       Span(f" {record.store['path']}", "muted")]))
    device, backend = record.run.get("device"), record.training.get("backend")
    if device or backend:
        rows.append(("Device", " · ".join(x for x in (f"device {device}" if device else "",
                                                     f"backend {backend}" if backend else "") if x)))
    timings = record.timings
    if timings:
        rows.append(("Timings", " · ".join(
            f"{label} {duration(timings[k])} s" for k, label in (
                ("extraction_seconds", "extraction"), ("head_seconds", "head"),
                ("baselines_seconds", "baselines"), ("total_seconds", "total")) if timings.get(k) is not None)
            or DASH))
    rows.append(("Intervals", f"{_ci_level([r])} {r.head['ci_method']}"))
    shown = [f"xrayfeat {record.xrayfeat}"] + [
        f"{k} {v}" for k, v in record.versions.items() if k != "keras_backend"]
    rows.append(("Versions", " · ".join(shown)))
    rows.append(("Created", record.created))
    if not record.verified_artifacts:  # a run of the first config.json layout: its tables had no sha256
        rows.append(("Checksums", [Span(UNVERIFIED_NOTE, "strong"),
                                   f" ({', '.join(record.unverified_artifacts)}: read as they are)"]))
    return [[Span(k, "strong"), v] for k, v in rows]


def _results_table(r: _Run) -> Table:
    header = ["Model", "Accuracy", "Balanced acc.", "ROC-AUC", "Loss", "n", "CV accuracy (train)"]
    rows = []
    for name, m in [("head", r.head), *r.baselines.items()]:
        cv = r.record.baselines.get(name, {})  # the head has no cross-validation; old runs lack summaries
        cv_text = DASH
        if finite_float(cv.get("cv_accuracy")) is not None:
            cv_text = number(cv["cv_accuracy"])
            if finite_float(cv.get("cv_accuracy_std")) is not None:
                cv_text += f" ± {number(cv['cv_accuracy_std'])}"
        ci = m["ci"]
        rows.append([_model_label(name), with_ci(m["accuracy"], ci["accuracy"]),
                     with_ci(m["balanced_accuracy"], ci["balanced_accuracy"]),
                     with_ci(m["roc_auc"], ci["roc_auc"]), number(m["loss"]), whole(m["n"]), cv_text])
    return Table(header, rows, set(range(1, len(header))))


def _per_class_table(r: _Run) -> Table | None:
    per_class = r.head["per_class"]
    if not per_class:
        return None
    auc = r.head["roc_auc_per_class"]
    rows = [[name, number(m["precision"]), number(m["recall"]), number(m["f1"]), number(auc.get(name)), whole(m["support"])]
            for name, m in per_class.items()]
    return Table(["Class", "Precision", "Recall", "F1", "ROC-AUC (one vs rest)", "Support"], rows, {1, 2, 3, 4, 5})


def _by_source_table(r: _Run) -> Table | None:
    by_source = r.head.get("by_source")  # only when the data names a source per image
    if not by_source:
        return None
    names = [n for n in r.baselines if r.baselines[n].get("by_source")]
    header = ["Source", "n", "Head accuracy", "Head balanced acc."] + [f"{n} acc." for n in names]
    rows = []
    for source, m in by_source.items():
        row = [str(source), whole(m["n"]), with_ci(m["accuracy"], m["ci_accuracy"]), number(m["balanced_accuracy"])]
        row += [number(r.baselines[n]["by_source"][source]["accuracy"]) for n in names]
        rows.append(row)
    return Table(header, rows, set(range(1, len(header))))


def _history_text(r: _Run) -> str | None:
    rows = r.history
    if not rows:
        return None
    parts = [f"{len(rows)} epoch{'s' if len(rows) != 1 else ''}"]
    val = [(row.get("val_accuracy"), i) for i, row in enumerate(rows) if row.get("val_accuracy") is not None]
    if val:
        best, i = max(val, key=lambda t: (t[0], -t[1]))
        parts.append(f"best validation accuracy {best:.3f} at epoch {i + 1}")
    kept, monitor = r.record.training.get("best_epoch"), r.record.training.get("restore_best")
    if kept is not None:  # None: the last epoch's weights, the seed's behaviour
        parts.append(f"weights kept from epoch {kept}" + (f" (best {monitor})" if monitor else ""))
    last = rows[-1]
    if last.get("accuracy") is not None:
        parts.append(f"last training accuracy {last['accuracy']:.3f}")
    secs = [row.get("seconds") for row in rows if row.get("seconds") is not None]
    if secs:
        text = f"first epoch {duration(secs[0])} s (includes compilation)"
        if len(secs) > 1:
            text += f", later epochs median {duration(steady_epoch_seconds(secs))} s"
        parts.append(text)
    return "; ".join(parts) + "."


def _figures(r: _Run, out: Path) -> list[Figure]:
    """The run's figures, copied to ``out/figures/<run>-<file>.png`` for the Markdown.

    A figure the record lists is read only after its sha256 matches; one it does
    not list (a run from before figures were recorded, an ``embed-*.png`` that
    ``xrayfeat embed`` added later) is shown when present.
    """
    found = list(FIGURE_CAPTIONS)
    embeds = {p.name for p in r.path.glob("embed-*.png") if p.is_file()}
    embeds |= {a.file for a in r.record.artifacts.values() if a.file.startswith("embed-") and a.file.endswith(".png")}
    found += [(file, "embedding " + file[len("embed-"):-len(".png")]) for file in sorted(embeds)]
    figures = [_run_figure(r, file, caption, out) for file, caption in found]
    return [f for f in figures if f]


def _run_figure(r: _Run, file: str, caption: str, out: Path, full: bool = False) -> Figure | None:
    """The run's figure ``file``: checked when the record lists it, taken as found when not; None when absent."""
    recorded = {a.file: name for name, a in r.record.artifacts.items()}
    if file in recorded:
        data = r.record.read_bytes(recorded[file])
    elif (r.path / file).is_file():
        data = (r.path / file).read_bytes()
    else:
        return None
    return _figure(r, data, r.path / file, file, caption, out, full)


def _external_figures(r: _Run, e: _External, out: Path) -> list[Figure]:
    """The external confusion matrix, ROC curves and reliability diagram the record lists, checked, copied to
    ``out/figures/<run>-external-<name>-<part>.png``."""
    figures = []
    for part, caption in (("confusion", "confusion matrix"), ("roc", "ROC curves"),
                          ("calibration", "reliability diagram")):
        key = f"external/{e.name}/{part}"
        if key not in r.record.artifacts:
            continue
        data = r.record.read_bytes(key)
        whose = "one curve per model" if part == "calibration" else "head"
        figure = _figure(r, data, r.path / r.record.artifacts[key].file, f"external-{e.slug}-{part}.png",
                         f"{caption} ({whose}, external: {e.name})", out)
        if figure:
            figures.append(figure)
    return figures


def _figure(r: _Run, data: bytes, source: Path, file: str, caption: str, out: Path,
            full: bool = False) -> Figure | None:
    """A PNG copied to ``out/figures/<run>-<file>``; None (and a logged warning) when ``data`` is not a PNG."""
    if png_size(data) is None:
        log.warning("%s: not a PNG; left out of the report", source)
        return None
    name = f"{r.slug}-{file}"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    atomic_write(out / "figures" / name, data)
    return Figure(caption, data, f"figures/{name}", full)


def _gradcam_section(r: _Run, out: Path) -> list:
    """The Grad-CAM grid fit-head drew from the cached maps, and what it shows; nothing when the run has none.

    A head on pooled vectors (``--head-input pooled``) has none: the section says why instead.
    """
    if r.record.head_input != "spatial":
        return [Heading(3, "Grad-CAM (head, test)"),
                Para(f"None: the head reads {r.record.head_input} vectors (--head-input {r.record.head_input}), "
                     f"which have no spatial layout for a Grad-CAM map.", cls="note")]
    layer = r.record.store["fingerprint"].get("layer", "the imported maps'")
    figure = _run_figure(r, GRADCAM, f"Grad-CAM of the head on test images: per class, right and wrong predictions; "
                                     f"map resolution is the cut layer's ({layer})", out, full=True)
    if figure is None:
        return []
    return [Heading(3, "Grad-CAM (head, test)"), Figures([figure]),
            Para("Each row is a true class: test images the head got right, then ones it got wrong, the most "
                 "confident first, each with the true and predicted class. The heat map weighs the cut layer's "
                 "feature maps by the gradient of the class score, so it is as coarse as that layer's grid, "
                 "upsampled onto the image. Heat on borders, text or markers rather than the lungs is a shortcut "
                 "to look for.", cls="note")]


def _run_section(r: _Run, out: Path) -> list:
    blocks: list = [Heading(2, f"Run {r.name}", r.anchor, cls="run"),
                    Para([Span(str(r.path), "code")], cls="note")]
    blocks += [Heading(3, "Configuration"), Table(["Setting", "Value"], _config_rows(r), cls="kv")]
    if findings.is_multilabel(r.head):
        blocks += [Heading(3, "Test results"), findings.results_table(r, _model_label),
                   Para(findings.MULTILABEL_NOTE, cls="note"),
                   Heading(3, "Per finding (head, test)"), findings.findings_table(r.head),
                   Para(f"Each finding's threshold was chosen on the validation split by the rule "
                        f"{r.metrics.get('threshold_rule') or DASH}, never on test; sensitivity and specificity are "
                        f"those it gives on the test images.", cls="note"), *_calibrated_blocks(r)]
        blocks += crossval.section(r.metrics, _model_label)
        blocks += _external_section(r, out)
        by_source = findings.by_source_table(r.head)
    else:
        blocks += [Heading(3, "Test results"), _results_table(r)]
        blocks += _seeds_section(r)
        blocks += crossval.section(r.metrics, _model_label)
        blocks += _points_section(r)
        blocks += _calibration_section(r)
        blocks += _external_section(r, out)
        per_class = _per_class_table(r)
        if per_class:
            blocks += [Heading(3, "Per class (head)"), per_class]
        by_source = _by_source_table(r)
    if by_source:
        blocks += [Heading(3, "By source"), by_source]
    blocks += findings.group_tables(r.head, _ci_level([r]))
    history = _history_text(r)
    if history:
        blocks += [Heading(3, "Training"), Para(history)]
    figures = _figures(r, out)
    blocks += [Heading(3, "Figures"), Figures(figures) if figures else Para("No figures in the run folder.", "note")]
    blocks += _gradcam_section(r, out)
    blocks.append(Heading(3, "Warnings"))
    ranked = sorted(r.warnings, key=lambda w: _SEVERITY[w.kind])
    items = [[_warning_label(w.kind), w.message] for w in ranked]
    blocks.append(List(items, cls="warnings") if items else Para("None."))
    return blocks


def _document(runs: list[_Run], out: Path) -> tuple[list, int]:
    groups = _groups(runs)
    n_warn = len(_gathered_warnings(runs))
    n_ext = sum(len(r.external) for r in runs)
    summary = (f"{len(runs)} run{'s' if len(runs) != 1 else ''} in {len(groups)} task"
               f"{'s' if len(groups) != 1 else ''}; {n_warn} distinct warning{'s' if n_warn != 1 else ''}"
               + (f"; {n_ext} external evaluation{'s' if n_ext != 1 else ''}" if n_ext else "") + ". "
               f"Generated {utc_timestamp('%Y-%m-%d %H:%M UTC')} by xrayfeat {__version__}.")
    contents: list = [[Span("Comparison", "link", "comparison")]]
    if n_ext:
        contents.append([Span("External validation", "link", "external")])
    contents.append([Span("Warnings", "link", "warnings")])
    contents += [[Span(f"Run {r.name}", "link", r.anchor)] for r in runs]
    blocks: list = [Heading(1, "xrayfeat report"), Para(summary, cls="lead"), List(contents, cls="toc"),
                    Heading(2, "Comparison", "comparison")]
    for task, classes, members in groups:
        blocks += _comparison(task, classes, members)
    blocks.append(_comparison_note(runs))
    blocks += _external_overview(runs)
    blocks += _warnings_section(runs)
    for r in runs:
        blocks += _run_section(r, out)
    return blocks, len(groups)


# --------------------------------------------------------------------------- entry point


@dataclass
class ReportResult:
    """What :func:`write_report` wrote: the two files, and how many runs and comparison tables they hold.

    ``as_json()`` is ``xrayfeat report --json``; ``result["html"]`` (the dict it
    used to be) still works.
    """

    markdown: str
    html: str
    runs: int
    tables: int

    def as_json(self) -> dict:
        return {"markdown": self.markdown, "html": self.html, "runs": self.runs, "tables": self.tables}

    def __getitem__(self, key: str):
        return self.as_json()[key]


@library_call
def write_report(runs: list[str | os.PathLike], out: str | os.PathLike) -> ReportResult:
    """Write ``OUT/report.md`` and a self-contained ``OUT/report.html`` comparing ``runs``.

    ``runs`` are run folders written by ``fit-head``; each is read through
    :func:`xrayfeat.runs.record.read_record` (its ``metrics.json``, ``history.csv`` and
    recorded figures checked against their sha256, and so are the metrics and
    figures of each external evaluation the record lists). Runs are grouped into one
    comparison table per task (task name and class list), so runs of different
    tasks or feature fingerprints can share a report. ``OUT`` is created when
    missing; the figures are copied to ``OUT/figures/<run>-<file>.png`` for the
    Markdown and embedded in the HTML. Both files are written atomically.

    Returns a :class:`ReportResult` (``markdown`` and ``html`` paths as str,
    ``runs``, ``tables``). Raises :class:`~xrayfeat.errors.RunError` naming the folder when one is
    not a run or its record or a checked file is damaged,
    :class:`~xrayfeat.runs.outputs.OutputError` when ``OUT`` or ``OUT/figures``
    lies inside a run or a cache folder (checked first), and
    :class:`~xrayfeat.errors.XrayfeatError` when no run is given.
    """
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    paths = list(runs or [])
    if not paths:
        raise XrayfeatError("no runs given; pass one or more run folders made by fit-head (runs/<name>)")
    check_output(out, "report")
    check_output(Path(os.fspath(out)) / "figures", "report")  # a link there would put the copies into a run
    loaded = _load_runs(paths)
    out = Path(os.fspath(out))
    if out.exists() and not out.is_dir():
        raise XrayfeatError(f"{out}: exists and is not a folder; pass a folder for the report")
    with writing_to(out, option="--out"):  # a full disk: one line naming the report's folder
        out.mkdir(parents=True, exist_ok=True)
        blocks, n_tables = _document(loaded, out)
        md_path, html_path = out / "report.md", out / "report.html"
        atomic_write(md_path, render_markdown(blocks))
        title = "xrayfeat report: " + ", ".join(r.name for r in loaded[:6]) + (" …" if len(loaded) > 6 else "")
        atomic_write(html_path, render_html(blocks, title))
    log.info("report: %s and %s (%d runs, %d tables)", md_path, html_path, len(loaded), n_tables)
    return ReportResult(markdown=str(md_path), html=str(html_path), runs=len(loaded), tables=n_tables)
