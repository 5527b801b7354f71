"""``xrayfeat predict``, ``explain`` and ``evaluate``: a trained run used on new images.

The three share where the features of new images are computed (:func:`_run_options`).
"""

from __future__ import annotations

from pathlib import Path

import click

from xrayfeat.cli.kit import (
    classes_of,
    console,
    declared,
    emit,
    handle_errors,
    json_option,
    say,
    stack,
)
from xrayfeat.options.settings import DecisionOptions, RunOptions


def _run_options(func):
    """Where features are computed when a run is used on new images."""
    return stack(
        click.option("--cache-dir", default=None, type=click.Path(),  # checked by store.catalog.check_cache_target
                     help="Feature cache (default: the folder holding the run's store); missing rows are computed into it."),
        declared(RunOptions, "device"),
        declared(RunOptions, "batch_size"),
        declared(RunOptions, "workers"),
        declared(RunOptions, "cluster", metavar="local:N|tcp://HOST:PORT"),
    )(func)


@click.command("predict")
@click.argument("run")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV: path, sha256, then per model its predicted class and a probability per class.")
@declared(DecisionOptions, "decision")
@_run_options
@json_option
@handle_errors
def predict_cmd(run, inputs, out, decision, cache_dir, device, batch_size, workers, cluster, as_json):
    """Classify new X-rays with a trained run: its head and every saved baseline.

    INPUTS are image files, folders (searched recursively; no class folders
    needed) or CSV files with a path column. Features are the run's own (same
    backbone, weights, size, cut layer, precision), read from the cache or
    computed into it, so predicting twice computes nothing. Refuses, in one line,
    a run whose files changed, missing weights, or features this installation
    cannot reproduce.

    Probabilities go through the run's calibration (fit-head --calibrate), then
    the decision: the run's thresholds chosen on validation, or the argmax
    (--decision); the CSV names the rule and the thresholds applied per model.

    \b
    Example:
      xrayfeat predict runs/4class-vgg16-20261126-101500 new_xrays/ --out predictions.csv
      xrayfeat predict runs/binary-vgg16-20261126-101500 new_xrays/ --decision argmax
    """
    from xrayfeat.runs.loaded import load_run

    loaded = load_run(run)  # a damaged or unfinished run is refused before the heavy imports
    from xrayfeat.runs.prediction import predict as run_predict

    result = run_predict(loaded, list(inputs), out=out, cache_dir=cache_dir, device=device,
                         batch_size=batch_size, workers=workers, cluster=cluster, progress=True, decision=decision)

    def human(err):
        calibrated = f", calibrated ({result.calibration})" if result.calibration else ""
        say(f"{result.out}: {result.images} images ({result.extracted} computed, {result.reused} from the "
            f"cache), models: {', '.join(result.models)}{calibrated}", err=err)
        for model, counts in result.counts.items():
            rule = result.decisions[model]
            how = "" if not rule["thresholds"] else " (threshold " + ", ".join(
                f"{c} >= {t:.3g}" for c, t in rule["thresholds"].items()) + ")"
            none = f", none {result.undecided[model]}" if model in result.undecided else ""
            say(f"  {model:8} " + ", ".join(f"{c} {n}" for c, n in counts.items()) + none + how, err=err)

    emit(result.as_json(), as_json, human)


@click.command("explain")
@click.argument("run")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for <image>.png (overlay), <image>.npz (raw map) and explain.csv.")
@click.option("--class", "target_class", default=None, metavar="CLASS",
              help="Explain this class (or finding, for a multi-label run) of the run for every image (default: "
                   "each image's predicted class; for a multi-label run its most probable finding).")
@_run_options
@json_option
@handle_errors
def explain_cmd(run, inputs, out, target_class, cache_dir, device, batch_size, workers, cluster, as_json):
    """Grad-CAM of a trained run's head on X-rays: where it looks for its predicted class.

    INPUTS are image files, folders or CSV files with a path column, as for
    predict. The map is computed from the image's cached spatial features and the
    head alone (images not in the cache are extracted first). Each image gets
    OUT/<name>.png (the map on the X-ray, predicted class and probability in the
    title) and OUT/<name>.npz (the raw map); OUT/explain.csv lists them.

    The map's resolution is the run's cut layer's: 7×7 for VGG16 block5_pool at
    224 px. An earlier cut, chosen at extract/fit-head time (e.g. --layer
    vgg16:block5_conv3), gives 14×14. Runs trained with --train-tail are refused.

    \b
    Example:
      xrayfeat explain runs/4class-vgg16-20261126-101500 new_xrays/ --out explained/
    """
    from xrayfeat.runs.loaded import load_run

    loaded = load_run(run)  # a damaged or unfinished run is refused before the heavy imports
    from xrayfeat.runs.explanation import explain as run_explain

    result = run_explain(loaded, list(inputs), out, target_class=target_class, cache_dir=cache_dir,
                         device=device, batch_size=batch_size, workers=workers, cluster=cluster,
                         progress=True)

    def human(err):
        h, w = result.map_size
        say(f"{result.out}: {result.images} overlays ({result.extracted} computed, {result.reused} from the "
            f"cache); Grad-CAM at {result.layer}, {h}×{w} map; table {result.csv}", err=err)
        for row in result.rows[:10]:
            shown = "" if row["explained"] == row["predicted"] else f", map of {row['explained']}"
            say(f"  {Path(row['png']).name}: {row['predicted']} {row['probability']:.3f}{shown}", err=err)
        if len(result.rows) > 10:
            say(f"  ... {len(result.rows) - 10} more in {result.csv}", err=err)

    emit(result.as_json(), as_json, human)


@click.command("evaluate")
@click.argument("run")
@click.argument("data")
@click.option("--name", default=None, help="Name of this external dataset (default: DATA's folder name); "
                                            "results go to RUN/external/NAME/ and replace an earlier one of that name.")
@click.option("--classes", default=None, help="Keep only these classes of DATA, comma-separated.")
@declared(RunOptions, "on_error")
@_run_options
@json_option
@handle_errors
def evaluate_cmd(run, data, name, classes, on_error, cache_dir, device, batch_size, workers, cluster, as_json):
    """Score a trained run on another site's labelled X-rays (external validation).

    Every image of DATA (any layout) is test data; images the run trained or
    validated on are left out and counted. Same metrics, bootstrap intervals,
    per-source breakdown and warnings as fit-head; the table shows the internal
    result beside the external one, and `report` shows both.

    \b
    Example:
      xrayfeat evaluate runs/4class-vgg16-20261126-101500 other_hospital/ --name hospital_b
    """
    from xrayfeat.runs.loaded import load_run

    loaded = load_run(run)  # a damaged or unfinished run is refused before the heavy imports
    from xrayfeat.runs.external import evaluate as run_evaluate

    result = run_evaluate(loaded, data, name=name, classes=classes_of(classes), cache_dir=cache_dir,
                          on_error=on_error, device=device, batch_size=batch_size, workers=workers, cluster=cluster,
                          progress=True)

    def human(err):
        from rich.table import Table

        from rich import box

        table = Table(title=f"{result.run} on {result.name}: {result.n} external images ({result.excluded} left out)",
                      box=box.SIMPLE_HEAD)
        multilabel = "macro_roc_auc" in result.external["head"]  # a multi-label run: macro and micro ROC-AUC
        key, auc, short = ("macro_roc_auc", "micro_roc_auc", "macro") if multilabel else ("accuracy", "roc_auc", "acc.")
        for col in ("model", f"{short} int", f"{short} ext", "95% CI", f"Δ {short}", "AUC int", "AUC ext", "Δ AUC"):
            table.add_column(col, justify="right" if col != "model" else "left", no_wrap=col == "95% CI")
        for model, ext in result.external.items():
            inside = result.internal.get(model, {})
            ci = ext[f"{key}_ci"]
            table.add_row(model, _fmt(inside.get(key)), _fmt(ext[key]),
                          f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-", _delta(ext[key], inside.get(key)),
                          _fmt(inside.get(auc)), _fmt(ext[auc]), _delta(ext[auc], inside.get(auc)))
        console(err).print(table)
        say("Δ: external − internal (negative: worse on the external data)", err=err)
        say(f"written to {result.folder}", err=err)

    emit(result.as_json(), as_json, human)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _delta(external, internal) -> str:
    return "-" if external is None or internal is None else f"{external - internal:+.3f}"
