"""The ``xrayfeat`` command: parses options, calls the library, prints results.

Conventions for every command: ``--help`` shows an example; ``--json`` prints
one JSON object on stdout and sends human output to stderr; exit code 0 on
success, 2 for bad usage or input, 1 for other failures. Library errors
(:class:`~xrayfeat.errors.XrayfeatError`) become one line on stderr, never a
traceback. Heavy modules are imported inside commands so that ``--help`` and a
cache hit stay fast.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from xrayfeat import __version__
from xrayfeat.cli.kit import (
    Group,
    console,
    dataset_of,
    declared,
    emit,
    feature_list,
    feature_options,
    handle_errors,
    json_option,
    quiet_frameworks,
    setup_logging,
    single_feature,
    stack,
)
from xrayfeat.errors import StoreError, XrayfeatError
from xrayfeat.options.settings import BACKBONES, BASELINES, EmbedOptions, FeatureOptions, HeadOptions, RunOptions
from xrayfeat.options.parsers import parse_list
from xrayfeat.options.constraints import declaration

log = logging.getLogger("xrayfeat")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="xrayfeat")
@click.option("--verbose", "-v", is_flag=True, help="Log what is resolved and done (device, precision, stores).")
@click.option("--offline", is_flag=True,
              help="Never touch the network: missing ImageNet weights are an error, not a download "
                   "(same as XRAYFEAT_OFFLINE=1).")
def main(verbose: bool, offline: bool) -> None:
    """Chest X-ray classification by transfer learning, on a content-addressed HDF5 feature cache.

    \b
    Example (built-in phantom X-rays, random weights, whole pipeline):
      xrayfeat phantoms demo_data --task four --per-class 60
      xrayfeat extract demo_data --backbone vgg16 --weights none
      xrayfeat cache ls
    """
    quiet_frameworks()
    setup_logging(verbose)
    if offline:  # read by the library at call time, and inherited by child processes
        os.environ["XRAYFEAT_OFFLINE"] = "1"


# --------------------------------------------------------------------------- inspect


@main.command()
@click.argument("data")
@click.option("--classes", default=None, help="Keep only these classes, comma-separated.")
@json_option
@handle_errors
def inspect(data, classes, as_json):
    """Count images per split and class; show formats, sizes, duplicates and patient overlap.

    \b
    Example:
      xrayfeat inspect ../shared/data/cxr-sample/all
    """
    from xrayfeat.data.datasets import discover
    from xrayfeat.data.summary import summarize

    chosen = [c.strip() for c in classes.split(",")] if classes else None
    summary = summarize(discover(data, classes=chosen))

    def human(err):
        from rich.table import Table

        out = console(err)
        table = Table(title=f"{summary['root']} ({summary['layout']}, {summary['images']} images)")
        table.add_column("split")
        for name in summary["classes"]:
            table.add_column(name, justify="right")
        table.add_column("total", justify="right")
        for split, counts in summary["counts"].items():
            table.add_row(split, *[str(counts[c]) for c in summary["classes"]], str(sum(counts.values())))
        out.print(table)
        out.print(f"formats: {summary['formats']}  modes: {summary['modes']}  bit depths: {summary['bit_depths']}")
        if summary["width"]:
            out.print(f"width {summary['width'][0]}–{summary['width'][1]} px, height "
                          f"{summary['height'][0]}–{summary['height'][1]} px, {summary['bytes'] / 1e6:.1f} MB")
        dups = summary["duplicates"]
        cross = [d for d in dups if d["cross_split"]]
        out.print(f"duplicate files: {len(dups)} groups ({len(cross)} across splits)")
        for d in dups[:10]:
            out.print(f"  {'ACROSS SPLITS ' if d['cross_split'] else ''}{', '.join(d['paths'])}")
        patients = summary["patients_in_several_splits"]
        out.print(f"patients in several splits: {len(patients)}")
        for p in patients[:10]:
            out.print(f"  {p['patient_id']}: {', '.join(p['splits'])}")
        for u in summary["unreadable"]:
            out.print(f"  unreadable: {u['path']}: {u['reason']}")

    emit(summary, as_json, human)
    if summary["imbalance"]:
        log.warning("%s", summary["imbalance"])


# --------------------------------------------------------------------------- describe, weights


@main.command()
@click.option("--backbone", "-b", required=True, type=click.Choice(BACKBONES))
@click.option("--classes", "n_classes", type=click.IntRange(2, None), required=True,
              help="Number of classes (2 → one sigmoid unit).")
@declared(FeatureOptions, "image_size")
@declared(HeadOptions, "units")
@declared(HeadOptions, "dropout")
@declared(HeadOptions, "l2")
@json_option
@handle_errors
def describe(backbone, n_classes, image_size, units, dropout, l2, as_json):
    """Print the seed's full model (frozen backbone + head) and its parameter counts.

    \b
    Example:
      xrayfeat describe --backbone inception_v3 --classes 4
    """
    from xrayfeat.backbones import get_spec
    from xrayfeat.features.building import build_backbone
    from xrayfeat.features.weights import WeightsInfo
    from xrayfeat.models.head import build_seed_model, count_params

    spec = get_spec(backbone)
    model = build_seed_model(build_backbone(spec, WeightsInfo("none", seed=0), image_size), n_classes,
                             units=units, dropout=dropout, l2=l2)
    counts = count_params(model)
    lines: list[str] = []
    model.summary(print_fn=lambda text, line_break=None: lines.append(text), line_length=100,
                  expand_nested=False)
    data = {"backbone": backbone, "classes": n_classes, "image_size": image_size or spec.input_size, **counts}

    def human(err):
        out = sys.stderr if err else sys.stdout
        for text in lines:
            click.echo(text, file=out)
        click.echo(f"Total params: {counts['total']:,}", file=out)
        click.echo(f"Trainable params: {counts['trainable']:,}", file=out)
        click.echo(f"Non-trainable params: {counts['non_trainable']:,}", file=out)

    emit(data, as_json, human)


@main.group()
def weights():
    """ImageNet weight files: what is installed, downloading them, installing a downloaded one.

    \b
    Example:
      xrayfeat weights download
    """


@weights.command("status")
@json_option
@handle_errors
def weights_status_cmd(as_json):
    """List the ImageNet weight files xrayfeat looks for and whether their md5 checks out.

    \b
    Example:
      xrayfeat weights status
    """
    from xrayfeat.features.weights import weights_dir, weights_status

    rows = weights_status()

    def human(err):
        for r in rows:
            state = "ok" if r["verified"] else ("WRONG MD5" if r["present"] else "missing")
            click.echo(f"{r['backbone']:13} {state:9} {r['file']}", err=err)
        if not all(r["verified"] for r in rows):
            click.echo(f"get them with: xrayfeat weights download  (or, from a file you downloaded: "
                       f"xrayfeat weights install FILE; into {weights_dir()})", err=err)

    emit({"weights": rows}, as_json, human)


@weights.command("install")
@click.argument("file")
@json_option
@handle_errors
def weights_install_cmd(file, as_json):
    """Verify a downloaded ImageNet weight file's md5 and copy it into $KERAS_HOME/models.

    \b
    Example:
      xrayfeat weights install ~/Downloads/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
    """
    from xrayfeat.features.weights import install_weights

    result = install_weights(file)
    emit(result, as_json, lambda err: click.echo(f"installed {result['backbone']} weights: {result['file']}", err=err))


@weights.command("download")
@click.argument("backbone_names", metavar="[BACKBONE]...", nargs=-1, type=click.Choice(BACKBONES))
@click.option("--base-url", default=None, metavar="URL",
              help="Folder URL to download from (a mirror; the file name is appended). "
                   "Default: $XRAYFEAT_WEIGHTS_URL, else Keras' official location.")
@json_option
@handle_errors
def weights_download_cmd(backbone_names, base_url, as_json):
    """Download ImageNet weight files into $KERAS_HOME/models (all backbones when none is named), md5-checked.

    Files already there with the right md5 are kept; a failed or wrong download
    leaves nothing behind. Without network access, use `xrayfeat weights install FILE`.

    \b
    Example:
      xrayfeat weights download vgg16
      xrayfeat weights download --base-url https://mirror.example.org/keras-weights
    """
    from xrayfeat.features.weights import ensure_weights

    rows = ensure_weights(backbone_names or None, base_url=base_url)

    def human(err):
        for r in rows:
            state = "downloaded" if r["action"] == "downloaded" else "ok"
            click.echo(f"{r['backbone']:13} {state:10} {r['file']}", err=err)

    emit({"weights": rows}, as_json, human)


# --------------------------------------------------------------------------- phantoms


@main.command()
@click.argument("out")
@click.option("--task", type=click.Choice(["four", "binary"]), default="four", show_default=True)
@click.option("--per-class", type=int, default=60, show_default=True, help="Images per class (train + test).")
@click.option("--size", type=int, default=256, show_default=True, help="Image size in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
@handle_errors
def phantoms(out, task, per_class, size, seed, as_json):
    """Write built-in synthetic chest X-rays (OUT/{train,test}/<class>/*.png + manifest.csv).

    \b
    Example:
      xrayfeat phantoms demo_data --task four --per-class 60 --size 256 --seed 0
    """
    from xrayfeat.data.phantoms import write_phantoms

    manifest = write_phantoms(out, task=task, per_class=per_class, size=size, seed=seed)
    data = {"out": str(Path(out)), "manifest": str(manifest), "task": task, "per_class": per_class, "size": size, "seed": seed}
    emit(data, as_json, lambda err: click.echo(f"wrote {task} phantoms to {out} (manifest {manifest})", err=err))


# --------------------------------------------------------------------------- extract


@main.command()
@click.argument("data")
@feature_options
@declared(RunOptions, "batch_size")
@declared(RunOptions, "workers")
@declared(RunOptions, "on_error")
@declared(RunOptions, "cluster", metavar="local:N|tcp://HOST:PORT")
@declared(RunOptions, "chunk_images")
@json_option
@handle_errors
def extract(data, batch_size, workers, on_error, cluster, chunk_images, as_json, **kw):
    """Run a frozen backbone once over every image and keep the features in the HDF5 cache.

    Only images whose content hash has no row yet are decoded and computed; a
    rerun on the same data computes nothing. Several backbones of the same input
    size (``-b vgg16,inception_v3``) share one decoding pass.

    \b
    Example:
      xrayfeat extract ../shared/data/cxr-sample/all --backbone inception_v3 --weights none
    """
    from xrayfeat.features.extraction import extract as run_extract
    from xrayfeat.features.extraction import resolve

    run = RunOptions(device=kw["device"], batch_size=batch_size, workers=workers, cache_dir=kw["cache_dir"],
                     on_error=on_error, progress=True, cluster=cluster, chunk_images=chunk_images)
    run.validate()
    features = feature_list(kw)
    for feature in features:  # fail on options and weights before scanning a large dataset
        resolve(feature, kw["device"])
    results = run_extract(dataset_of(data, kw["classes"], kw["cache_dir"], on_error), features, run)
    payload = results[0].as_json() if len(results) == 1 else {"stores": [r.as_json() for r in results]}

    def human(err):
        for r in results:
            click.echo(
                f"{r.store}: {r.images} images, {r.extracted} extracted, {r.reused} reused, {r.skipped} skipped "
                f"in {r.seconds:.1f} s ({r.images_per_s:.1f} img/s)"
                + ("  [RANDOM WEIGHTS]" if r.random_weights else ""),
                err=err,
            )

    emit(payload, as_json, human)


# --------------------------------------------------------------------------- fit-head

_HEAD_FIELDS = ("epochs", "batch_size", "steps_per_epoch", "validation_steps", "lr", "units", "dropout", "l2",
                "train_tail", "head_input", "val_fraction", "n_boot", "backend", "class_weight", "restore_best", "repeats",
                "threshold", "positive", "memory_budget")


@main.command("fit-head")
@click.argument("data")
@feature_options
@stack(*(declared(HeadOptions, name) for name in _HEAD_FIELDS))
@click.option("--baselines", default=",".join(BASELINES), show_default=True,
              help=declaration(HeadOptions, "baselines")["help"])
@declared(RunOptions, "batch_size", "--extract-batch-size", param="extract_batch_size")
@declared(RunOptions, "workers", help="Decoding processes for extraction (default: all cores; 0: in-process).")
@declared(RunOptions, "on_error")
@click.option("--out", default=None, help="Run folder (default: runs/<task>-<backbone>-<time>).")
@declared(RunOptions, "cluster", metavar="local:N|tcp://HOST:PORT",
          help="Run extraction and the baselines' grid searches on Dask: local:N starts N worker processes here, "
               "tcp://HOST:PORT joins a running scheduler (--cache-dir must be the same folder on every worker).")
@declared(RunOptions, "chunk_images")
@json_option
@handle_errors
def fit_head_cmd(data, baselines, extract_batch_size, workers, on_error, out, cluster, chunk_images, as_json, **kw):
    """Train the seed's head on cached features, beside scikit-learn baselines; write a run record.

    Extracts whatever the cache lacks first. Reports test accuracy, loss, balanced
    accuracy, ROC-AUC with bootstrap 95% intervals, and warns about leakage, tiny
    test sets and shortcuts (a 32x32 pixels model as good as the deep one).

    \b
    Example (the seed's task 2 on the real sample, random weights):
      xrayfeat fit-head ../shared/data/cxr-sample/all --backbone inception_v3 --weights none --epochs 100
    """
    from xrayfeat.features.extraction import resolve
    from xrayfeat.runs.fit import fit_head

    features = single_feature(kw)
    resolve(features, kw["device"])
    head = HeadOptions(baselines=parse_list(baselines, BASELINES, "baselines", none=True), seed=kw["seed"],
                       **{name: kw[name] for name in _HEAD_FIELDS})
    head.validate()
    run = RunOptions(device=kw["device"], batch_size=extract_batch_size, workers=workers, cache_dir=kw["cache_dir"],
                     on_error=on_error, progress=True, cluster=cluster, chunk_images=chunk_images)
    result = fit_head(dataset_of(data, kw["classes"], kw["cache_dir"], on_error), features, head, run, out=out)

    def human(err):
        from rich.table import Table

        table = Table(title=f"test results ({result.test['n']} images) — {result.run}")
        for col in ("model", "accuracy", "95% CI", "balanced acc.", "ROC-AUC", "log-loss"):
            table.add_column(col, justify="right" if col != "model" else "left")
        for name, m in [("head", result.test), *result.baselines.items()]:
            ci = m["accuracy_ci"]
            table.add_row(name, f"{m['accuracy']:.3f}", f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
                          f"{m['balanced_accuracy']:.3f}", f"{m['roc_auc']:.3f}" if m["roc_auc"] is not None else "-",
                          f"{m['loss']:.3f}")
        out = console(err)
        out.print(table)
        if result.operating:
            out.print(_operating_table(result.operating, result.test["n"]))
        if result.repeats:
            out.print(_repeats_line(result.repeats))
        t = result.timings
        out.print(f"extraction {t['extraction_seconds']:.1f} s ({t['extracted_images']} images computed), head "
                      f"{t['head_seconds']:.1f} s ({t['seconds_per_epoch']:.3f} s/epoch), baselines "
                      f"{t['baselines_seconds']:.1f} s, total {t['total_seconds']:.1f} s")

    emit(result.as_json(), as_json, human)


def _operating_table(operating: dict, n: int):
    """The head's operating points: per class, at argmax and at the threshold chosen on validation."""
    from rich.table import Table

    table = Table(title=f"head operating points on test ({n} images; threshold: {operating['rule']}, chosen on "
                        f"{operating['chosen_on']}; 95% intervals in metrics.json and the report)")
    for col in ("class", "at", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1"):
        table.add_column(col, justify="left" if col in ("class", "at") else "right")
    keys = ("sensitivity", "specificity", "ppv", "npv", "f1")
    for name, entry in operating["classes"].items():
        argmax, at = entry["argmax"], entry.get("at_threshold")
        table.add_row(name, "argmax", "-", *[_fraction(argmax.get(key)) for key in keys])
        threshold = "-" if entry["threshold"] is None else f"{entry['threshold']:.3f}"
        table.add_row("", "threshold", threshold, *[_fraction(at.get(key) if at else None) for key in keys])
        if entry.get("note"):
            table.add_row("", "", "", entry["note"])
    return table


def _fraction(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _repeats_line(repeats: dict) -> str:
    """The head's accuracy across seeds, beside the single run's bootstrap interval."""
    acc = repeats["head"]["accuracy"]
    seeds = repeats["seeds"]
    return (f"head accuracy over {len(seeds)} seeds ({seeds[0]}–{seeds[-1]}): mean {acc['mean']:.3f}, "
            f"SD {acc['sd']:.3f}, range {acc['min']:.3f}–{acc['max']:.3f}")


# --------------------------------------------------------------------------- predict, evaluate


def _run_options(func):
    """Where features are computed when a run is used on new images."""
    return stack(
        click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                     help="Feature cache (default: the folder holding the run's store); missing rows are computed into it."),
        declared(RunOptions, "device"),
        declared(RunOptions, "batch_size"),
        declared(RunOptions, "workers"),
        declared(RunOptions, "cluster", metavar="local:N|tcp://HOST:PORT"),
    )(func)


@main.command()
@click.argument("run")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV: path, sha256, then per model its predicted class and a probability per class.")
@_run_options
@json_option
@handle_errors
def predict(run, inputs, out, cache_dir, device, batch_size, workers, cluster, as_json):
    """Classify new X-rays with a trained run: its head and every saved baseline.

    INPUTS are image files, folders (searched recursively; no class folders
    needed) or CSV files with a path column. Features are the run's own (same
    backbone, weights, size, cut layer, precision), read from the cache or
    computed into it, so predicting twice computes nothing. Refuses, in one line,
    a run whose files changed, missing weights, or features this installation
    cannot reproduce.

    \b
    Example:
      xrayfeat predict runs/4class-vgg16-20261126-101500 new_xrays/ --out predictions.csv
    """
    from xrayfeat.runs.prediction import predict as run_predict
    from xrayfeat.runs.loaded import load_run

    result = run_predict(load_run(run), list(inputs), out=out, cache_dir=cache_dir, device=device,
                         batch_size=batch_size, workers=workers, cluster=cluster, progress=True)

    def human(err):
        click.echo(f"{result.out}: {result.images} images ({result.extracted} computed, {result.reused} from the "
                   f"cache), models: {', '.join(result.models)}", err=err)
        for model, counts in result.counts.items():
            click.echo(f"  {model:8} " + ", ".join(f"{c} {n}" for c, n in counts.items()), err=err)

    emit(result.as_json(), as_json, human)


@main.command()
@click.argument("run")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for <image>.png (overlay), <image>.npz (raw map) and explain.csv.")
@click.option("--class", "target_class", default=None, metavar="CLASS",
              help="Explain this class of the run for every image (default: each image's predicted class).")
@_run_options
@json_option
@handle_errors
def explain(run, inputs, out, target_class, cache_dir, device, batch_size, workers, cluster, as_json):
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
    from xrayfeat.runs.explanation import explain as run_explain
    from xrayfeat.runs.loaded import load_run

    result = run_explain(load_run(run), list(inputs), out, target_class=target_class, cache_dir=cache_dir,
                         device=device, batch_size=batch_size, workers=workers, cluster=cluster,
                         progress=True)

    def human(err):
        h, w = result.map_size
        click.echo(f"{result.out}: {result.images} overlays ({result.extracted} computed, {result.reused} from the "
                   f"cache); Grad-CAM at {result.layer}, {h}×{w} map; table {result.csv}", err=err)
        for row in result.rows[:10]:
            shown = "" if row["explained"] == row["predicted"] else f", map of {row['explained']}"
            click.echo(f"  {Path(row['png']).name}: {row['predicted']} {row['probability']:.3f}{shown}", err=err)
        if len(result.rows) > 10:
            click.echo(f"  ... {len(result.rows) - 10} more in {result.csv}", err=err)

    emit(result.as_json(), as_json, human)


@main.command()
@click.argument("run")
@click.argument("data")
@click.option("--name", default=None, help="Name of this external dataset (default: DATA's folder name); "
                                            "results go to RUN/external/NAME/ and replace an earlier one of that name.")
@click.option("--classes", default=None, help="Keep only these classes of DATA, comma-separated.")
@_run_options
@json_option
@handle_errors
def evaluate(run, data, name, classes, cache_dir, device, batch_size, workers, cluster, as_json):
    """Score a trained run on another site's labelled X-rays (external validation).

    Every image of DATA (any layout) is test data; images the run trained or
    validated on are left out and counted. Same metrics, bootstrap intervals,
    per-source breakdown and warnings as fit-head; the table shows the internal
    result beside the external one, and `report` shows both.

    \b
    Example:
      xrayfeat evaluate runs/4class-vgg16-20261126-101500 other_hospital/ --name hospital_b
    """
    from xrayfeat.runs.external import evaluate as run_evaluate
    from xrayfeat.runs.prediction import run_cache_dir
    from xrayfeat.runs.loaded import load_run

    trained = load_run(run)
    dataset = dataset_of(data, classes, run_cache_dir(trained, cache_dir))
    result = run_evaluate(trained, dataset, name=name, cache_dir=cache_dir, device=device, batch_size=batch_size,
                          workers=workers, cluster=cluster, progress=True)

    def human(err):
        from rich.table import Table

        from rich import box

        table = Table(title=f"{result.run} on {result.name}: {result.n} external images ({result.excluded} left out)",
                      box=box.SIMPLE_HEAD)
        for col in ("model", "acc. int", "acc. ext", "95% CI", "Δ acc", "AUC int", "AUC ext", "Δ AUC"):
            table.add_column(col, justify="right" if col != "model" else "left", no_wrap=col == "95% CI")
        for model, ext in result.external.items():
            inside = result.internal.get(model, {})
            ci = ext["accuracy_ci"]
            table.add_row(model, _fmt(inside.get("accuracy")), _fmt(ext["accuracy"]),
                          f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-", _delta(ext["accuracy"], inside.get("accuracy")),
                          _fmt(inside.get("roc_auc")), _fmt(ext["roc_auc"]), _delta(ext["roc_auc"], inside.get("roc_auc")))
        console(err).print(table)
        click.echo("Δ: external − internal (negative: worse on the external data)", err=err)
        click.echo(f"written to {result.folder}", err=err)

    emit(result.as_json(), as_json, human)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _delta(external, internal) -> str:
    return "-" if external is None or internal is None else f"{external - internal:+.3f}"


# --------------------------------------------------------------------------- embed


@main.command()
@click.argument("data")
@click.option("--backbone", "-b", default=None, type=click.Choice(BACKBONES),
              help="Backbone of the features (not needed with --from-run).")
@stack(*(declared(FeatureOptions, name) for name in ("weights", "image_size", "layer", "precision", "store_dtype", "keep")))
@declared(EmbedOptions, "method")
@click.option("--from-run", default=None, help="Embed a trained head's penultimate (Dense) activations instead of pooled features.")
@declared(FeatureOptions, "seed", help="Seed of the map, and of the random weights with --weights none.")
@click.option("--classes", default=None, help="Keep only these classes, comma-separated.")
@declared(RunOptions, "cache_dir")
@declared(RunOptions, "device")
@click.option("--out", default=None, help="Output PNG (default: RUN/embed-METHOD.png or embeddings/<backbone>-METHOD.png).")
@json_option
@handle_errors
def embed(data, backbone, method, from_run, seed, classes, cache_dir, device, out, as_json, **kw):
    """Draw a 2-D map (PCA, then t-SNE or UMAP) of cached features, coloured by class.

    Coordinates are saved beside the PNG and reused when asked again with the same
    inputs; a neighbourhood-preservation score (k-NN class agreement in 2-D and in
    feature space, trustworthiness) is printed.

    \b
    Examples:
      xrayfeat embed demo_data --backbone vgg16 --weights none --method umap
      xrayfeat embed demo_data --from-run runs/4class-vgg16-20261126-101500 --method tsne
    """
    from xrayfeat.runs.maps import embed_map
    from xrayfeat.runs.loaded import load_run

    if not backbone and not from_run:
        raise XrayfeatError("embed needs --backbone (pooled features) or --from-run RUN (a trained head)")
    features = None if from_run else FeatureOptions(backbone=backbone, seed=seed, **kw)
    if features is not None:
        features.validate()
    if out is None:
        out = Path(from_run) / f"embed-{method}.png" if from_run else Path("embeddings") / f"{backbone}-{method}.png"
    dataset = dataset_of(data, classes, cache_dir)
    outcome = embed_map(dataset, features, out, EmbedOptions(method=method, seed=seed),
                        from_run=load_run(from_run) if from_run else None,
                        run=RunOptions(cache_dir=cache_dir, device=device, progress=True))
    result = outcome.result

    def human(err):
        s = result.scores
        click.echo(f"{result.plot_path}: {method} of {outcome.source}, {outcome.images} images"
                   f"{' (coordinates reused)' if result.reused else ''} in {result.seconds:.1f} s", err=err)
        click.echo(f"k-NN class agreement: 2-D {s['knn_agreement_2d']:.3f} vs features {s['knn_agreement_features']:.3f}; "
                   f"trustworthiness {s['trustworthiness']:.3f}", err=err)

    emit(outcome.as_json(), as_json, human)


# --------------------------------------------------------------------------- report


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", default="report", show_default=True, help="Output folder for report.md, report.html, figures/.")
@json_option
@handle_errors
def report(runs, out, as_json):
    """Compare runs: one table per task, then each run's figures and warnings (Markdown + HTML).

    \b
    Example:
      xrayfeat report runs/binary-vgg16-* runs/4class-* --out report
    """
    from xrayfeat.report.writer import write_report

    result = write_report(list(runs), out)
    emit(result, as_json, lambda err: click.echo(f"wrote {result['markdown']} and {result['html']}", err=err))


# --------------------------------------------------------------------------- export


@main.command("export")
@click.argument("run")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: model.keras or savedmodel/, and export.json.")
@click.option("--format", "format_", type=click.Choice(["keras", "savedmodel"]), default="keras", show_default=True,
              help="keras: one .keras file (any Keras 3 backend); savedmodel: a TF SavedModel (TensorFlow backend).")
@json_option
@handle_errors
def export_cmd(run, out, format_, as_json):
    """Write a run's deployable model: uint8 RGB pixels (S x S) in, class probabilities out.

    One Keras model holds the preprocessing, the backbone up to the run's cut
    layer with the run's weights, and the trained head, without optimizer state.
    Inputs must already be decoded and resized as xrayfeat does
    (xrayfeat.data.images.read_image); export.json says the size, classes and weights.

    \b
    Example:
      xrayfeat export runs/binary-vgg16-20261126-101500 --out deploy/binary-vgg16
    """
    from xrayfeat.runs.export import export_run

    result = export_run(run, out, format=format_)

    def human(err):
        click.echo(f"exported {run} to {result.model} ({result.bytes / 1e6:.1f} MB, {len(result.classes)} classes, "
                   f"{result.image_size} px {result.input_dtype} input)"
                   + ("  [RANDOM WEIGHTS]" if result.random_weights else ""), err=err)

    emit(result.as_json(), as_json, human)


# --------------------------------------------------------------------------- demo


@main.command()
@click.option("--out", default="demo_out", show_default=True, help="Folder for the phantoms, cache, runs and report.")
@click.option("--per-class", type=click.IntRange(4, None), default=60, show_default=True, help="Phantom images per class.")
@click.option("--quick", is_flag=True, help="A smoke run: tiny images, few epochs (for tests).")
@json_option
@handle_errors
def demo(out, per_class, quick, as_json):
    """The whole study in one command: phantoms → extract (both backbones) → heads → maps → report.

    Task 1: COVID-19 vs normal with VGG16 (seed: 40 epochs). Task 2: four classes with
    InceptionV3 and VGG16 (seed: 100 epochs). Each with logistic-regression, SVM and
    pixels baselines, t-SNE and UMAP maps of the head's features, and one report.
    Uses ImageNet weights when installed, else says loudly that weights are random.

    \b
    Example:
      xrayfeat demo --out demo_out
    """
    from xrayfeat.demo import run_demo

    result = run_demo(out, per_class=per_class, quick=quick, progress=not as_json,
                      say=lambda line: click.echo(line, err=True))

    def human(err):
        for s in result.runs:
            base = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in s["baselines"].items())
            click.echo(f"{s['task']:6} {s['backbone']:12} head test accuracy {s['test']['accuracy']:.3f}  ({base})", err=err)
        click.echo(f"demo finished in {result.seconds:.0f} s{' with RANDOM weights' if result.weights == 'none' else ''}",
                   err=err)
        click.echo(f"report: {result.report}", err=err)

    emit(result.as_json(), as_json, human)


# --------------------------------------------------------------------------- cache


@main.group()
def cache():
    """Feature stores: list, verify, clean up, export."""


@cache.command("ls")
@click.option("--cache-dir", default="data_cache", show_default=True)
@json_option
@handle_errors
def cache_ls(cache_dir, as_json):
    """List the feature stores, their fingerprints, rows and size.

    \b
    Example:
      xrayfeat cache ls --cache-dir data_cache
    """
    from xrayfeat.store.feature_store import list_stores

    infos = [s.info() for s in list_stores(cache_dir)]

    def human(err):
        from rich.table import Table

        table = Table(title=f"feature stores in {cache_dir}")
        for col in ("store", "backbone", "layer", "size", "precision", "weights", "rows", "MB"):
            table.add_column(col)
        for i in infos:
            fp = i["fingerprint"]
            table.add_row(Path(i["path"]).name, fp["backbone"], fp["layer"], str(fp["image_size"]), fp["precision"],
                          fp["weights"] + (" (RANDOM)" if i["random_weights"] else ""), str(i["rows"]),
                          f"{i['bytes'] / 1e6:.1f}")
        console(err).print(table)

    emit({"cache_dir": str(cache_dir), "stores": infos}, as_json, human)


@cache.command("verify")
@click.option("--cache-dir", default="data_cache", show_default=True)
@json_option
@handle_errors
def cache_verify(cache_dir, as_json):
    """Check every shard's checksum and every index; exit 1 naming what is damaged.

    \b
    Example:
      xrayfeat cache verify
    """
    from xrayfeat.store.feature_store import list_stores

    report = {}
    for store in list_stores(cache_dir):
        report[str(store.path)] = store.verify()
    problems = [p for ps in report.values() for p in ps]

    def human(err):
        for path, ps in report.items():
            click.echo(f"{'ok  ' if not ps else 'BAD '} {path}", err=err)
            for p in ps:
                click.echo(f"     {p}", err=err)
        if not report:
            click.echo(f"no feature stores in {cache_dir}", err=err)

    emit({"ok": not problems, "stores": report}, as_json, human)
    if problems:  # each problem names the file, what is wrong and the repair
        raise StoreError(f"{len(problems)} problem(s) found; first: {problems[0]}")


@cache.command("gc")
@click.option("--cache-dir", default="data_cache", show_default=True)
@json_option
@handle_errors
def cache_gc(cache_dir, as_json):
    """Repair damaged shards and indexes, remove temporary files left by killed runs, compact small shards.

    A damaged shard is replaced by its sound rows; re-running extract then
    recomputes exactly the rows that were lost. Waits for a running extraction.

    \b
    Example:
      xrayfeat cache gc
    """
    from xrayfeat.store.feature_store import list_stores

    def waiting(store):
        click.echo(f"{store.path} is being written by another process; waiting for it", err=True)

    results = [s.gc(on_wait=lambda s=s: waiting(s)) for s in list_stores(cache_dir)]

    def human(err):
        for r in results:
            repaired = ""
            if r["damaged_shards"]:
                repaired = (f"replaced {len(r['damaged_shards'])} damaged shards by their {r['kept_rows']} sound rows "
                            f"({r['lost_rows']} rows lost: re-run extract to recompute them), ")
            click.echo(f"{r['store']}: removed {len(r['removed_temp_files'])} temporary files, {repaired}"
                       f"{'rebuilt the damaged index, ' if r['rebuilt_index'] else ''}merged "
                       f"{r['merged_shards']} shards, dropped {r['dropped_duplicates']} duplicate rows", err=err)

    emit({"stores": results}, as_json, human)


@cache.command("export")
@click.argument("data")
@feature_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@json_option
@handle_errors
def cache_export(data, out, as_json, **kw):
    """Write a dataset's cached features to one .npz (sha256, path, label, split, pooled, spatial).

    Rows follow the dataset's order. Nothing is computed: missing features are an
    error that says which extract command to run.

    \b
    Example:
      xrayfeat cache export demo_data --backbone vgg16 --weights none --out vgg16.npz
    """
    from xrayfeat.features.feature_export import export_features

    features = single_feature(kw)
    result = export_features(dataset_of(data, kw["classes"], kw["cache_dir"]), features, out,
                             cache_dir=kw["cache_dir"], device=kw["device"])
    emit(result.as_json(), as_json, lambda err: click.echo(f"wrote {result.rows} rows to {result.out}", err=err))


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="xrayfeat")
