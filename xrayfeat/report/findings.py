"""What the report says of multi-label runs, and of any run's patient groups.

A multi-label run (one sigmoid per finding: NIH ChestX-ray14, CheXpert,
MIMIC-CXR) is judged by its ROC-AUC per finding, as this field reports it,
not by an accuracy: :func:`comparison_columns` gives the seed's comparison
table its figures (macro and micro ROC-AUC, macro average precision, each
baseline's macro ROC-AUC), :func:`results_table` each model's,
:func:`findings_table` each finding's (prevalence, ROC-AUC and average
precision with intervals, the threshold chosen on validation and the
sensitivity and specificity it gives on test), and
`external_findings_table` the head's findings internal → external.

:func:`group_tables` shows the ``by_group`` figures of any run (sex, age
band, view...), each value's headline figure with its interval, so that a gap
between groups (the CheXclusion audit, Seyyed-Kalantari et al. 2021) is read
beside its uncertainty; the ``group_gap`` warning says where it exceeds both.

Run objects are :mod:`.writer`'s (``head``, ``baselines``, ``record``); these
functions only decide the blocks.
"""

from __future__ import annotations

from xrayfeat.report.cells import DASH, difference, number, signed_number, whole, with_ci
from xrayfeat.report.document import Heading, Para, Table

__all__ = ["is_multilabel", "comparison_columns", "results_table", "findings_table", "external_findings_table",
           "group_tables", "by_source_table", "MULTILABEL_NOTE"]

#: What a multi-label run's figures mean, said under its tables.
MULTILABEL_NOTE = ("Multi-label: one sigmoid per finding, each scored on its own. Macro ROC-AUC is the mean of the "
                   "findings' ROC-AUC; micro pools every counted (image, finding) entry. Entries the data leaves "
                   "blank, and uncertain ones under --uncertain ignore, count nowhere.")


def is_multilabel(figures: dict | None) -> bool:
    """Whether a model's figures are multi-label ones (``task: "multilabel"``)."""
    return bool(figures) and figures.get("task") == "multilabel"


def comparison_columns(level: str, baselines: list[str]) -> list[str]:
    """The figure columns of a multi-label task's comparison table (after the run's own columns)."""
    return (["Test loss", f"Macro ROC-AUC [{level} CI]", "Micro ROC-AUC", "Macro AP"]
            + [f"{name} macro AUC" + (" (sentinel)" if name == "pixels" else "") for name in baselines])


def comparison_cells(r, baselines: list[str]) -> list:
    """One run's figure cells of :func:`comparison_columns`."""
    head = r.head
    return ([number(head["loss"]), with_ci(head["macro_roc_auc"], head["ci"]["macro_roc_auc"], "sub"),
             number(head["micro_roc_auc"]), number(head["macro_average_precision"])]
            + [number(r.baselines[name]["macro_roc_auc"]) if name in r.baselines else DASH for name in baselines])


def results_table(r, label) -> Table:
    """Each model's multi-label test figures, with intervals; ``label`` names a model as the report does."""
    rows = []
    for name, m in [("head", r.head), *r.baselines.items()]:
        ci = m["ci"]
        rows.append([label(name), with_ci(m["macro_roc_auc"], ci["macro_roc_auc"]),
                     with_ci(m["micro_roc_auc"], ci["micro_roc_auc"]),
                     with_ci(m["macro_average_precision"], ci["macro_average_precision"]), number(m["loss"]),
                     whole(m["n"])])
    return Table(["Model", "Macro ROC-AUC", "Micro ROC-AUC", "Macro AP", "Loss", "Images"], rows,
                 set(range(1, 6)))


def findings_table(head: dict) -> Table:
    """Per finding (head, test): counted images, positives and prevalence, ROC-AUC and AP, the operating point."""
    points = ((head.get("operating_points") or {}).get("classes")) or {}
    rows = []
    for name, f in head["per_finding"].items():
        point = points.get(name) or {}
        at = point.get("at_threshold") or {}
        rows.append([name, whole(f["n"]), whole(f["positives"]), number(f["prevalence"]),
                     with_ci(f["roc_auc"], f["roc_auc_ci"]), with_ci(f["average_precision"], f["average_precision_ci"]),
                     number(point.get("threshold")), number(at.get("sensitivity")), number(at.get("specificity"))])
    return Table(["Finding", "Counted", "Positive", "Prevalence", "ROC-AUC", "Average precision", "Threshold",
                  "Sensitivity", "Specificity"], rows, set(range(1, 9)))


def external_findings_table(r) -> Table:
    """The head's ROC-AUC per finding on its own test split beside each external dataset's, and the change."""
    header = ["Finding", "Internal ROC-AUC"]
    for e in r.external:
        header += [f"{e.name} ROC-AUC", f"{e.name} Δ"]
    rows = []
    findings = list(r.head["per_finding"])
    for name in [*findings, None]:  # None: the macro mean, last
        inside = r.head["per_finding"][name] if name else {"roc_auc": r.head["macro_roc_auc"],
                                                           "roc_auc_ci": r.head["ci"]["macro_roc_auc"]}
        row = ["macro" if name is None else name, with_ci(inside["roc_auc"], inside["roc_auc_ci"])]
        for e in r.external:
            outside = _external_finding(e.head, name)
            row += [with_ci(outside.get("roc_auc"), outside.get("roc_auc_ci")),
                    signed_number(difference(inside["roc_auc"], outside.get("roc_auc")))]
        rows.append(row)
    return Table(header, rows, set(range(1, len(header))))


def _external_finding(figures: dict, name: str | None) -> dict:
    if not is_multilabel(figures):
        return {}
    if name is None:
        return {"roc_auc": figures["macro_roc_auc"], "roc_auc_ci": figures["ci"]["macro_roc_auc"]}
    return figures["per_finding"].get(name) or {}


def by_source_table(head: dict) -> Table | None:
    """The head's macro ROC-AUC per source of a multi-label run; None when the data names no source."""
    by_source = head.get("by_source")
    if not by_source:
        return None
    rows = [[str(source), whole(m["n"]), with_ci(m["macro_roc_auc"], m["ci_macro_roc_auc"])]
            for source, m in by_source.items()]
    return Table(["Source", "Images", "Head macro ROC-AUC"], rows, {1, 2})


def group_tables(head: dict, level: str, where: str = "test", depth: int = 3) -> list:
    """A table per patient group (``by_group``): each value's images, patients and headline figure with its interval.

    ``where`` names the images (``test``, or ``external: <name>``) in the heading, of level ``depth``.
    """
    by_group = head.get("by_group")
    if not by_group:
        return []
    multilabel = is_multilabel(head)
    figure = "Macro ROC-AUC" if multilabel else "Accuracy"
    blocks: list = [Heading(depth, f"By patient group (head, {where})")]
    for group, table in by_group.items():
        rows = []
        for value, v in table["values"].items():
            row = [str(value), whole(v["n"]), whole(v.get("n_patients"))]
            if multilabel:
                row.append(with_ci(v["macro_roc_auc"], v["ci"]["macro_roc_auc"]))
            else:
                row += [with_ci(v["accuracy"], v["ci"]["accuracy"]),
                        with_ci(v["balanced_accuracy"], v["ci"]["balanced_accuracy"]),
                        with_ci(v["roc_auc"], v["ci"]["roc_auc"])]
            rows.append(row)
        header = [group, "Images", "Patients", f"{figure} [{level} CI]"]
        header += [] if multilabel else ["Balanced acc.", "ROC-AUC"]
        blocks.append(Table(header, rows, set(range(1, len(header)))))
        if table["unknown"]:
            blocks.append(Para(f"{whole(table['unknown'])} images have no {group} recorded; they are left out "
                               f"of this table.", cls="note"))
    blocks.append(Para("Each value's figure with its bootstrap interval over its own patients. Where two values' "
                       "intervals do not overlap, the gap is unlikely to be noise and the warnings say so "
                       "(Subgroup gap).", cls="note"))
    return blocks
