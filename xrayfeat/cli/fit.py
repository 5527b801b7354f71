"""``xrayfeat fit-head``: the seed's head beside the baselines on cached features, and its result tables."""

from __future__ import annotations

import functools

import click
from click.core import ParameterSource

from xrayfeat.cli.kit import (
    console,
    dataset_of,
    declared,
    emit,
    feature_options,
    handle_errors,
    json_option,
    renamed_flags,
    single_feature,
    stack,
)
from xrayfeat.options.settings import BASELINES, HeadOptions, RunOptions
from xrayfeat.options.parsers import parse_list
from xrayfeat.options.constraints import declaration


_HEAD_FIELDS = ("epochs", "head_batch_size", "steps_per_epoch", "validation_steps", "learning_rate", "units", "dropout",
                "l2", "train_tail", "head_input", "val_fraction", "n_bootstrap", "n_jobs", "head_backend", "head_step", "class_weight",
                "restore_best", "repeats", "cv", "threshold", "calibrate", "positive", "uncertain", "memory_budget")


def _given(ctx, name: str) -> bool:
    """Whether the command line (or the environment) gave the parameter ``name``, rather than its default."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


#: What ``--config`` takes beside it (:data:`xrayfeat.runs.replay.HOW_TO_RUN`, and --json): never what is computed.
_BESIDE_CONFIG = ("data", "out", "cache_dir", "workers", "cluster", "chunk_images", "config", "as_json")


def _config_or_options(func):
    """Usage, checked as click checks it (one line, exit 2): with ``--config``, only :data:`_BESIDE_CONFIG`;
    without it, DATA and ``--backbone`` are required."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        params = {param.name: param for param in ctx.command.params}
        if kwargs["config"] is None:
            for name in ("data", "backbone"):
                if kwargs[name] is None:
                    raise click.MissingParameter(ctx=ctx, param=params[name])
            return func(*args, **kwargs)
        for name, param in params.items():
            if name not in _BESIDE_CONFIG and _given(ctx, name):
                flag = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
                raise click.UsageError(f"--config runs the recorded study with its own options, and {flag} would "
                                       f"change it; beside --config give only DATA (where the data is now), --out, "
                                       f"--cache-dir, --workers, --cluster, --chunk-images or --json, or run fit-head "
                                       f"without --config (a new study)", ctx)
        return func(*args, **kwargs)

    return wrapper


@click.command("fit-head")
@renamed_flags("fit-head")
@click.argument("data", required=False, metavar="DATA")
@feature_options
@stack(*(declared(HeadOptions, name) for name in _HEAD_FIELDS))
@click.option("--baselines", default=",".join(BASELINES), show_default=True,
              help=declaration(HeadOptions, "baselines")["help"])
@declared(RunOptions, "batch_size")
@declared(RunOptions, "workers", help="Decoding processes for extraction (default: one per core, or none for fewer than two "
                                            "batches of images; 0: decode in this process). With --cluster, per "
                                            "task on each worker (default: the task's share of its machine's cores).")
@declared(RunOptions, "on_error")
@click.option("--out", default=None, help="Run folder (default: runs/<task>-<backbone>-<time>).")
@declared(RunOptions, "cluster", metavar="local:N|tcp://HOST:PORT",
          help="Run extraction and the baselines' grid searches on Dask: local:N starts N worker processes here, "
               "tcp://HOST:PORT joins a running scheduler (--cache-dir must be the same folder on every worker).")
@declared(RunOptions, "chunk_images")
@click.option("--config", "config", default=None, metavar="RUN/config.json",
              help="Run a recorded study again: the data, features and every option of RUN, on the data now "
                   "(refused when its images differ from the run's splits.csv; a warning names each library version "
                   "that differs). Beside it only DATA (where the data is now), --out, --cache-dir, --workers, "
                   "--cluster and --chunk-images.")
@json_option
@_config_or_options
@handle_errors
def fit_head_cmd(data, baselines, batch_size, workers, on_error, out, cluster, chunk_images, config, as_json, **kw):
    """Train the seed's head on cached features, beside scikit-learn baselines; write a run record.

    Extracts whatever the cache lacks first. Reports test accuracy, loss, balanced
    accuracy, ROC-AUC with bootstrap 95% intervals, and warns about leakage, tiny
    test sets and shortcuts (a 32x32 pixels model as good as the deep one).

    \b
    Example (the seed's task 2 on the real sample, random weights):
      xrayfeat fit-head ../shared/data/cxr-sample/all --backbone inception_v3 --weights none --epochs 100
    Run that study again from its record, into a new folder:
      xrayfeat fit-head --config runs/4class-inception_v3-20261126-071502/config.json --out runs/again
    """
    from xrayfeat.models.head_process import started_early

    ctx = click.get_current_context()
    if config is not None:
        from xrayfeat.runs.replay import replay

        cache_dir = kw["cache_dir"] if _given(ctx, "cache_dir") else None
        result = replay(config, data=data, out=out, cache_dir=cache_dir, workers=workers, cluster=cluster,
                        chunk_images=chunk_images if _given(ctx, "chunk_images") else None)
    else:
        # the head's child first: its Keras import overlaps this command's imports and the data's discovery
        with started_early(kw["head_backend"], device=kw["device"], train_tail=kw["train_tail"]):
            from xrayfeat.extraction.config import resolve
            from xrayfeat.runs.fit import fit_head
            from xrayfeat.runs.outputs import check_new_folder

            check_new_folder(out or "runs", "fit-head", cache=kw["cache_dir"])  # before the data is discovered (fit_head checks it again)
            features = single_feature(kw)
            resolve(features, kw["device"], cache_dir=kw["cache_dir"])
            head = HeadOptions(baselines=parse_list(baselines, BASELINES, "baselines", none=True), seed=kw["seed"],
                               **{name: kw[name] for name in _HEAD_FIELDS})
            head.validate()
            run = RunOptions(device=kw["device"], batch_size=batch_size, workers=workers, cache_dir=kw["cache_dir"],
                             on_error=on_error, progress=True, cluster=cluster, chunk_images=chunk_images)
            result = fit_head(dataset_of(data, kw["classes"], kw["cache_dir"], on_error), features, head, run, out=out)

    def human(err):
        from rich.table import Table

        table = Table(title=f"test results ({result.test['n']} images) — {result.run}")
        if "macro_roc_auc" in result.test:
            _multilabel_table(table, result)
        else:
            _single_label_rows(table, result)
        out = console(err)
        if result.replay_of:
            differences = result.replay_of["differences"]
            out.print(f"a replay of {result.replay_of['path']} (created {result.replay_of['created']}) on the same data; "
                      + (f"{len(differences)} differences, each in a warning above" if differences
                         else "same versions, store and head backend"))
        out.print(table)
        if result.operating:
            out.print(_operating_table(result.operating, result.test["n"], "macro_roc_auc" in result.test))
        if result.calibrated:
            out.print(_calibration_line(result.calibrated))
        if result.repeats:
            out.print(_repeats_line(result.repeats))
        if result.cv:
            for line in _cv_lines(result.cv):
                out.print(line)
        t = result.timings
        out.print(f"extraction {t['extraction_seconds']:.1f} s ({t['extracted_images']} images computed), head "
                      f"{t['head_seconds']:.1f} s ({t['seconds_per_epoch']:.3f} s/epoch), baselines "
                      f"{t['baselines_seconds']:.1f} s, total {t['total_seconds']:.1f} s")

    emit(result.as_json(), as_json, human)


def _calibration_line(calibrated: dict) -> str:
    """The head's Brier score and ECE before → after calibration, on validation (where it was fitted) and test."""
    head = calibrated["models"]["head"]

    def change(where: str, figure: str) -> str:
        before, after = head[where]["before"][figure], head[where]["after"][figure]
        return f"{_fraction(before)} → {_fraction(after)}"

    return (f"calibration ({calibrated['method']}, fitted on {calibrated['n']} validation images), head: ECE "
            f"validation {change('validation', 'ece')}, test {change('test', 'ece')}; Brier validation "
            f"{change('validation', 'brier')}, test {change('test', 'brier')}")


def _multilabel_table(table, result) -> None:
    """A multi-label run's headline: each model's macro ROC-AUC with its interval, micro ROC-AUC and loss."""
    table.title += " · multi-label, ROC-AUC per finding in metrics.json and the report"
    for col in ("model", "macro ROC-AUC", "95% CI", "micro ROC-AUC", "loss"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in [("head", result.test), *result.baselines.items()]:
        ci = m["macro_roc_auc_ci"]
        table.add_row(name, _fraction(m["macro_roc_auc"]), f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
                      _fraction(m["micro_roc_auc"]), _fraction(m["loss"]))


def _single_label_rows(table, result) -> None:
    """The single-label headline: accuracy with its interval, balanced accuracy, ROC-AUC and log-loss per model."""
    for col in ("model", "accuracy", "95% CI", "balanced acc.", "ROC-AUC", "log-loss"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in [("head", result.test), *result.baselines.items()]:
        ci = m["accuracy_ci"]
        table.add_row(name, f"{m['accuracy']:.3f}", f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
                      f"{m['balanced_accuracy']:.3f}", f"{m['roc_auc']:.3f}" if m["roc_auc"] is not None else "-",
                      f"{m['loss']:.3f}")


def _operating_table(operating: dict, n: int, multilabel: bool = False):
    """The head's operating points: per class, at argmax and at the threshold chosen on validation.

    A multi-label head has no argmax: each finding is called at p > 0.5, then at its threshold.
    """
    from rich.table import Table

    table = Table(title=f"head operating points on test ({n} images; threshold: {operating['rule']}, chosen on "
                        f"{operating['chosen_on']}; 95% intervals in metrics.json and the report)")
    for col in ("class", "at", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1"):
        table.add_column(col, justify="left" if col in ("class", "at") else "right")
    keys = ("sensitivity", "specificity", "ppv", "npv", "f1")
    for name, entry in operating["classes"].items():
        argmax, at = entry["argmax"], entry.get("at_threshold")
        table.add_row(name, "p > 0.5" if multilabel else "argmax", "-", *[_fraction(argmax.get(key)) for key in keys])
        threshold = "-" if entry["threshold"] is None else f"{entry['threshold']:.3f}"
        table.add_row("", "threshold", threshold, *[_fraction(at.get(key) if at else None) for key in keys])
        if entry.get("note"):
            table.add_row("", "", "", entry["note"])
    return table


def _fraction(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _repeats_line(repeats: dict) -> str:
    """The head's accuracy (a multi-label head's macro ROC-AUC) across seeds, beside the single run's bootstrap interval."""
    key = "macro_roc_auc" if "macro_roc_auc" in repeats["head"] else "accuracy"
    acc = repeats["head"][key]
    seeds = repeats["seeds"]
    if acc is None:
        return f"head {key.replace('_', ' ')} over {len(seeds)} seeds: undefined in some seed"
    return (f"head {key.replace('_roc_auc', ' ROC-AUC')} over {len(seeds)} seeds ({seeds[0]}–{seeds[-1]}): mean "
            f"{acc['mean']:.3f}, SD {acc['sd']:.3f}, range {acc['min']:.3f}–{acc['max']:.3f}")


def _cv_lines(cv: dict) -> list[str]:
    """Each model's cross-validated accuracy (a multi-label run's macro ROC-AUC): mean ± SD over the folds."""
    seeds = cv["seeds"]
    folds = f"{cv['k']} folds" + (f" × {len(seeds)} repeats" if len(seeds) > 1 else "")
    n = sum(f["n_out"] for f in cv["folds"]) // len(seeds)
    lines = [f"cross-validation on the {n} training images ({folds}, grouped by {cv['grouped_by']}; "
             f"mean ± SD over folds; per fold in metrics.json):"]
    for name, figures in cv["models"].items():
        cells = []
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("roc_auc", "ROC-AUC"),
                           ("macro_roc_auc", "macro ROC-AUC"), ("micro_roc_auc", "micro ROC-AUC")):
            if key in figures:
                s = figures[key]
                cells.append(f"{label} " + ("-" if s is None else f"{s['mean']:.3f} ± " +
                                            ("-" if s["sd"] is None else f"{s['sd']:.3f}")))
        lines.append(f"  {name}: " + ", ".join(cells))
    return lines


def _backbone_unless_config(command) -> None:
    """``--backbone`` is required unless ``--config`` gives it (checked in the command; --help still says required)."""
    backbone = next(p for p in command.params if p.name == "backbone")
    backbone.required = False
    backbone.help += " Required, unless --config gives it."


_backbone_unless_config(fit_head_cmd)
