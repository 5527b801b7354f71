"""The ``xrayfeat`` command: parses options, calls the library, prints results.

Conventions for every command: ``--help`` shows an example; ``--json`` prints
one JSON object on stdout and sends human output to stderr; exit code 0 on
success, 2 for bad usage or input, 1 for other failures. Library errors
(:class:`~xrayfeat.errors.XrayfeatError`) become one line on stderr, never a
traceback. Heavy modules are imported inside commands so that ``--help`` and a
cache hit stay fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .errors import XrayfeatError

log = logging.getLogger("xrayfeat")

BACKBONE_CHOICES = ("vgg16", "inception_v3")
_METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


# --------------------------------------------------------------------------- plumbing


class _OneLineHandler(logging.Handler):
    """``xrayfeat: warning: ...`` lines on stderr."""

    def emit(self, record):
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        click.echo(f"xrayfeat: {level}{record.getMessage()}", err=True)


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger("xrayfeat")
    if not any(isinstance(h, _OneLineHandler) for h in root.handlers):
        root.addHandler(_OneLineHandler())
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False

    def showwarning(message, category, filename, lineno, file=None, line=None):
        log.warning("%s", message)

    warnings.showwarning = showwarning


def _quiet_frameworks() -> None:
    """Keep TensorFlow's C++ start-up chatter out of the user's terminal (before it is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tf.function retracing notices (predictions on train, val and test of different sizes) are not the user's problem
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def handle_errors(func):
    """Turn library errors into one line and the contract's exit codes."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except XrayfeatError as exc:
            click.echo(f"xrayfeat: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("xrayfeat: interrupted; completed batches are kept, rerun to resume", err=True)
            sys.exit(130)
        except (MemoryError, OSError) as exc:
            click.echo(f"xrayfeat: error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:  # the CLI boundary: a bug still gets one line, the traceback on request
            if os.environ.get("XRAYFEAT_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"xrayfeat: internal error: {type(exc).__name__}: {first} "
                       f"(rerun with XRAYFEAT_DEBUG=1 for the traceback, and please report it)", err=True)
            sys.exit(1)

    return wrapper


def emit(data: dict, as_json: bool, human) -> None:
    """``--json``: the object on stdout and the human text on stderr; otherwise the text on stdout."""
    if as_json:
        human(err=True)
        click.echo(json.dumps(data, indent=None, default=str))
    else:
        human(err=False)


def _console(err: bool):
    from rich.console import Console

    return Console(stderr=err, highlight=False, soft_wrap=True)


def feature_options(func):
    """The options that select a feature store, shared by extract, fit-head, embed and cache export."""
    options = [
        click.option("--backbone", "-b", required=True, multiple=False,
                     help="Backbone: vgg16 or inception_v3 (extract accepts a comma-separated list)."),
        click.option("--weights", default="imagenet", show_default=True,
                     help="imagenet (from $KERAS_HOME/models, md5-checked), none (random, seeded) or a weights file."),
        click.option("--image-size", type=int, default=None, help="Input size in pixels (default: the backbone's, 224)."),
        click.option("--layer", default=None, help="Cut point, e.g. inception_v3:mixed9 or vgg16:block4_pool (default: last layer)."),
        click.option("--precision", default="auto", show_default=True,
                     type=click.Choice(["auto", "float32", "mixed_bfloat16", "mixed_float16"]),
                     help="auto: float32 on CPU, mixed_bfloat16 on GPU. Part of the fingerprint."),
        click.option("--store-dtype", default="float16", show_default=True, type=click.Choice(["float16", "float32"])),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed (random weights, splits, training)."),
        click.option("--classes", default=None, help="Keep only these classes, comma-separated (e.g. covid,normal)."),
        click.option("--cache-dir", default="data_cache", show_default=True, type=click.Path(file_okay=False)),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "gpu"])),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _feature_list(kw) -> list:
    from .extract import FeatureOptions

    names = [b.strip() for b in kw["backbone"].split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKBONE_CHOICES]
    if unknown or not names:
        raise XrayfeatError(f"--backbone {kw['backbone']!r}: choose from {', '.join(BACKBONE_CHOICES)}")
    return [
        FeatureOptions(backbone=b, weights=kw["weights"], image_size=kw["image_size"], layer=kw["layer"],
                       precision=kw["precision"], store_dtype=kw["store_dtype"], seed=kw["seed"])
        for b in names
    ]


def _single_feature(kw):
    features = _feature_list(kw)
    if len(features) != 1:
        raise XrayfeatError("--backbone takes one backbone here; got " + kw["backbone"])
    return features[0]


def _dataset(data: str, classes: str | None, cache_dir: str):
    from .datasets import discover

    chosen = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return discover(data, classes=chosen, hash_cache=Path(cache_dir) / "file-hashes.json")


class _Group(click.Group):
    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="xrayfeat")
@click.option("--verbose", "-v", is_flag=True, help="Log what is resolved and done (device, precision, stores).")
def main(verbose: bool) -> None:
    """Chest X-ray classification by transfer learning, on a content-addressed HDF5 feature cache.

    \b
    Example (built-in phantom X-rays, random weights, whole pipeline):
      xrayfeat phantoms demo_data --task four --per-class 60
      xrayfeat extract demo_data --backbone vgg16 --weights none
      xrayfeat cache ls
    """
    _quiet_frameworks()
    _setup_logging(verbose)


# --------------------------------------------------------------------------- inspect


@main.command()
@click.argument("data")
@click.option("--classes", default=None, help="Keep only these classes, comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@handle_errors
def inspect(data, classes, as_json):
    """Count images per split and class; show formats, sizes, duplicates and patient overlap.

    \b
    Example:
      xrayfeat inspect ../shared/data/cxr-sample/all
    """
    from .datasets import discover, summarize

    chosen = [c.strip() for c in classes.split(",")] if classes else None
    summary = summarize(discover(data, classes=chosen))

    def human(err):
        from rich.table import Table

        console = _console(err)
        table = Table(title=f"{summary['root']} ({summary['layout']}, {summary['images']} images)")
        table.add_column("split")
        for name in summary["classes"]:
            table.add_column(name, justify="right")
        table.add_column("total", justify="right")
        for split, counts in summary["counts"].items():
            table.add_row(split, *[str(counts[c]) for c in summary["classes"]], str(sum(counts.values())))
        console.print(table)
        console.print(f"formats: {summary['formats']}  modes: {summary['modes']}  bit depths: {summary['bit_depths']}")
        if summary["width"]:
            console.print(f"width {summary['width'][0]}–{summary['width'][1]} px, height "
                          f"{summary['height'][0]}–{summary['height'][1]} px, {summary['bytes'] / 1e6:.1f} MB")
        dups = summary["duplicates"]
        cross = [d for d in dups if d["cross_split"]]
        console.print(f"duplicate files: {len(dups)} groups ({len(cross)} across splits)")
        for d in dups[:10]:
            console.print(f"  {'ACROSS SPLITS ' if d['cross_split'] else ''}{', '.join(d['paths'])}")
        patients = summary["patients_in_several_splits"]
        console.print(f"patients in several splits: {len(patients)}")
        for p in patients[:10]:
            console.print(f"  {p['patient_id']}: {', '.join(p['splits'])}")
        for u in summary["unreadable"]:
            console.print(f"  unreadable: {u['path']}: {u['reason']}")

    emit(summary, as_json, human)


# --------------------------------------------------------------------------- describe, weights


@main.command()
@click.option("--backbone", "-b", required=True, type=click.Choice(BACKBONE_CHOICES))
@click.option("--classes", "n_classes", type=int, required=True, help="Number of classes (2 → one sigmoid unit).")
@click.option("--image-size", type=int, default=None)
@click.option("--units", type=int, default=256, show_default=True)
@click.option("--dropout", type=float, default=0.3, show_default=True)
@click.option("--l2", type=float, default=1e-3, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def describe(backbone, n_classes, image_size, units, dropout, l2, as_json):
    """Print the seed's full model (frozen backbone + head) and its parameter counts.

    \b
    Example:
      xrayfeat describe --backbone inception_v3 --classes 4
    """
    from .backbones import WeightsInfo, build_backbone, get_spec
    from .heads import build_seed_model, count_params

    if n_classes < 2:
        raise XrayfeatError(f"--classes must be at least 2; got {n_classes}")
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
    """ImageNet weight files: what is installed, and installing a downloaded one."""


@weights.command("status")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def weights_status_cmd(as_json):
    """List the ImageNet weight files xrayfeat looks for and whether their md5 checks out.

    \b
    Example:
      xrayfeat weights status
    """
    from .backbones import weights_dir, weights_status

    rows = weights_status()

    def human(err):
        for r in rows:
            state = "ok" if r["verified"] else ("WRONG MD5" if r["present"] else "missing")
            click.echo(f"{r['backbone']:13} {state:9} {r['file']}", err=err)
        if not all(r["verified"] for r in rows):
            click.echo(f"install a downloaded file with: xrayfeat weights install FILE  (into {weights_dir()})", err=err)

    emit({"weights": rows}, as_json, human)


@weights.command("install")
@click.argument("file")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def weights_install_cmd(file, as_json):
    """Verify a downloaded ImageNet weight file's md5 and copy it into $KERAS_HOME/models.

    \b
    Example:
      xrayfeat weights install ~/Downloads/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
    """
    from .backbones import install_weights

    result = install_weights(file)
    emit(result, as_json, lambda err: click.echo(f"installed {result['backbone']} weights: {result['file']}", err=err))


# --------------------------------------------------------------------------- phantoms


@main.command()
@click.argument("out")
@click.option("--task", type=click.Choice(["four", "binary"]), default="four", show_default=True)
@click.option("--per-class", type=int, default=60, show_default=True, help="Images per class (train + test).")
@click.option("--size", type=int, default=256, show_default=True, help="Image size in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def phantoms(out, task, per_class, size, seed, as_json):
    """Write built-in synthetic chest X-rays (OUT/{train,test}/<class>/*.png + manifest.csv).

    \b
    Example:
      xrayfeat phantoms demo_data --task four --per-class 60 --size 256 --seed 0
    """
    from .phantoms import write_phantoms

    manifest = write_phantoms(out, task=task, per_class=per_class, size=size, seed=seed)
    data = {"out": str(Path(out)), "manifest": str(manifest), "task": task, "per_class": per_class, "size": size, "seed": seed}
    emit(data, as_json, lambda err: click.echo(f"wrote {task} phantoms to {out} (manifest {manifest})", err=err))


# --------------------------------------------------------------------------- extract


@main.command()
@click.argument("data")
@feature_options
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=None, help="Decoding processes (default: all cores; 0: in-process).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="An undecodable image stops the run (fail) or is left out and reported (skip).")
@click.option("--cluster", default=None, help="Not available in this version; extraction runs on this machine.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def extract(data, batch_size, workers, on_error, cluster, as_json, **kw):
    """Run a frozen backbone once over every image and keep the features in the HDF5 cache.

    Only images whose content hash has no row yet are decoded and computed; a
    rerun on the same data computes nothing. Several backbones of the same input
    size (``-b vgg16,inception_v3``) share one decoding pass.

    \b
    Example:
      xrayfeat extract ../shared/data/cxr-sample/all --backbone inception_v3 --weights none
    """
    from .extract import RunOptions, resolve
    from .extract import extract as run_extract

    if cluster:
        raise XrayfeatError("--cluster is not implemented yet; run without it (one machine)")
    features = _feature_list(kw)
    for feature in features:  # fail on options and weights before scanning a large dataset
        resolve(feature, kw["device"])
    dataset = _dataset(data, kw["classes"], kw["cache_dir"])
    run = RunOptions(device=kw["device"], batch_size=batch_size, workers=workers, cache_dir=kw["cache_dir"],
                     on_error=on_error, progress=True)
    results = run_extract(dataset, features, run)
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


@main.command("fit-head")
@click.argument("data")
@feature_options
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--batch-size", type=int, default=10, show_default=True, help="Head training batch size (the seed's 10).")
@click.option("--steps-per-epoch", type=int, default=10, show_default=True,
              help="Batches per epoch, drawn from a continuing shuffled stream (0: one pass over train).")
@click.option("--validation-steps", type=int, default=None, help="Validation batches per epoch (default: the seed's 2 binary, 5 otherwise; 0: all).")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--units", type=int, default=256, show_default=True)
@click.option("--dropout", type=float, default=0.3, show_default=True)
@click.option("--l2", type=float, default=1e-3, show_default=True)
@click.option("--train-tail", is_flag=True, help="Also train the backbone after the cut point (needs --layer).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Validation share of train when there is no val split (stratified, grouped by patient).")
@click.option("--baselines", default="logreg,svm,pixels", show_default=True, help="Comma-separated subset of logreg,svm,pixels, or none.")
@click.option("--head-backend", type=click.Choice(["auto", "tensorflow", "jax", "torch"]), default="auto", show_default=True,
              help="Keras backend the head trains on (auto: jax on a CPU when installed, in a child process; "
                   "features stay in the extraction backend's store).")
@click.option("--bootstrap", "n_boot", type=int, default=1000, show_default=True, help="Bootstrap resamples for confidence intervals.")
@click.option("--extract-batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=None, help="Decoding processes for extraction (default: all cores).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@click.option("--out", default=None, help="Run folder (default: runs/<task>-<backbone>-<time>).")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def fit_head_cmd(data, epochs, batch_size, steps_per_epoch, validation_steps, lr, units, dropout, l2, train_tail,
                 val_fraction, baselines, head_backend, n_boot, extract_batch_size, workers, on_error, out, as_json, **kw):
    """Train the seed's head on cached features, beside scikit-learn baselines; write a run record.

    Extracts whatever the cache lacks first. Reports test accuracy, loss, balanced
    accuracy, ROC-AUC with bootstrap 95% intervals, and warns about leakage, tiny
    test sets and shortcuts (a 32x32 pixels model as good as the deep one).

    \b
    Example (the seed's task 2 on the real sample, random weights):
      xrayfeat fit-head ../shared/data/cxr-sample/all --backbone inception_v3 --weights none --epochs 100
    """
    from .baselines import parse_baselines
    from .extract import RunOptions, resolve
    from .fit import HeadOptions, fit_head

    features = _single_feature(kw)
    resolve(features, kw["device"])
    head = HeadOptions(
        epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch or None,
        validation_steps=None if validation_steps is None else (validation_steps or None),
        lr=lr, units=units, dropout=dropout, l2=l2, train_tail=train_tail, val_fraction=val_fraction,
        baselines=parse_baselines(baselines), seed=kw["seed"], n_boot=n_boot, backend=head_backend,
    )
    head.validate()
    dataset = _dataset(data, kw["classes"], kw["cache_dir"])
    run = RunOptions(device=kw["device"], batch_size=extract_batch_size, workers=workers, cache_dir=kw["cache_dir"],
                     on_error=on_error, progress=True)
    result = fit_head(dataset, features, head, run, out=out)

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
        console = _console(err)
        console.print(table)
        t = result.timings
        console.print(f"extraction {t['extraction_seconds']:.1f} s ({t['extracted_images']} images computed), head "
                      f"{t['head_seconds']:.1f} s ({t['seconds_per_epoch']:.3f} s/epoch), baselines "
                      f"{t['baselines_seconds']:.1f} s, total {t['total_seconds']:.1f} s")

    emit(result.as_json(), as_json, human)


# --------------------------------------------------------------------------- embed


def _embed_map(dataset, features, method, out, *, from_run=None, seed=0, cache_dir="data_cache", device="auto",
               title=""):
    """Pooled store features, or a run head's penultimate activations, → a 2-D map PNG (+ coordinates)."""
    from .embed import embed_cached
    from .extract import RunOptions, extract
    from .store import FeatureStore

    if from_run:
        from .runs import load_run_head, run_feature_options

        record, head = load_run_head(from_run)
        features = run_feature_options(record)
        trained_classes = record["config"]["classes"]
        if list(dataset.classes) != trained_classes:
            raise XrayfeatError(f"{from_run} was trained on classes {trained_classes}, DATA has {list(dataset.classes)}; "
                                f"pass --classes {','.join(trained_classes)}")
    [extraction] = extract(dataset, features, RunOptions(cache_dir=cache_dir, device=device, progress=True))
    store = FeatureStore.at(extraction.store)
    if from_run:
        values = head.embed(store.read(dataset.hashes, ("spatial",))["spatial"])
        source = f"head penultimate layer ({Path(from_run).name})"
    else:
        values = store.read(dataset.hashes, ("pooled",))["pooled"]
        source = f"{features.backbone} pooled features"
    result = embed_cached(values, dataset.labels, out, method=method, seed=seed, classes=list(dataset.classes),
                          splits=[item.split for item in dataset.items], title=title or f"{_METHOD_NAMES[method]} of {source}")
    return result, source


@main.command()
@click.argument("data")
@click.option("--backbone", "-b", default=None, help="Backbone of the features (not needed with --from-run).")
@click.option("--weights", default="imagenet", show_default=True)
@click.option("--image-size", type=int, default=None)
@click.option("--layer", default=None)
@click.option("--precision", default="auto", show_default=True)
@click.option("--store-dtype", default="float16", show_default=True)
@click.option("--method", type=click.Choice(["tsne", "umap"]), default="tsne", show_default=True)
@click.option("--from-run", default=None, help="Embed a trained head's penultimate (Dense) activations instead of pooled features.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--classes", default=None, help="Keep only these classes, comma-separated.")
@click.option("--cache-dir", default="data_cache", show_default=True)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "gpu"]))
@click.option("--out", default=None, help="Output PNG (default: RUN/embed-METHOD.png or embeddings/<backbone>-METHOD.png).")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def embed(data, backbone, weights, image_size, layer, precision, store_dtype, method, from_run, seed, classes,
          cache_dir, device, out, as_json):
    """Draw a 2-D map (PCA, then t-SNE or UMAP) of cached features, coloured by class.

    Coordinates are saved beside the PNG and reused when asked again with the same
    inputs; a neighbourhood-preservation score (k-NN class agreement in 2-D and in
    feature space, trustworthiness) is printed.

    \b
    Examples:
      xrayfeat embed demo_data --backbone vgg16 --weights none --method umap
      xrayfeat embed demo_data --from-run runs/4class-vgg16-20261126-101500 --method tsne
    """
    from .extract import FeatureOptions

    if not backbone and not from_run:
        raise XrayfeatError("embed needs --backbone (pooled features) or --from-run RUN (a trained head)")
    features = None
    if not from_run:
        features = _single_feature({"backbone": backbone, "weights": weights, "image_size": image_size, "layer": layer,
                                    "precision": precision, "store_dtype": store_dtype, "seed": 0})
        FeatureOptions.validate(features)
    dataset = _dataset(data, classes, cache_dir)
    if out is None:
        out = Path(from_run) / f"embed-{method}.png" if from_run else Path("embeddings") / f"{backbone}-{method}.png"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    result, source = _embed_map(dataset, features, method, out, from_run=from_run, seed=seed, cache_dir=cache_dir,
                                device=device)
    data_out = {"out": str(result.plot_path), "coords": str(result.coords_path), "method": method, "source": source,
                "reused": result.reused, "seconds": round(result.seconds, 3), "scores": result.scores}

    def human(err):
        s = result.scores
        click.echo(f"{result.plot_path}: {method} of {source}, {len(dataset)} images"
                   f"{' (coordinates reused)' if result.reused else ''} in {result.seconds:.1f} s", err=err)
        click.echo(f"k-NN class agreement: 2-D {s['knn_agreement_2d']:.3f} vs features {s['knn_agreement_features']:.3f}; "
                   f"trustworthiness {s['trustworthiness']:.3f}", err=err)

    emit(data_out, as_json, human)


# --------------------------------------------------------------------------- report


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", default="report", show_default=True, help="Output folder for report.md, report.html, figures/.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def report(runs, out, as_json):
    """Compare runs: one table per task, then each run's figures and warnings (Markdown + HTML).

    \b
    Example:
      xrayfeat report runs/binary-vgg16-* runs/4class-* --out report
    """
    from .report import write_report

    result = write_report(list(runs), out)
    emit(result, as_json, lambda err: click.echo(f"wrote {result['markdown']} and {result['html']}", err=err))


# --------------------------------------------------------------------------- demo


@main.command()
@click.option("--out", default="demo_out", show_default=True, help="Folder for the phantoms, cache, runs and report.")
@click.option("--per-class", type=int, default=60, show_default=True, help="Phantom images per class.")
@click.option("--quick", is_flag=True, help="A smoke run: tiny images, few epochs (for tests).")
@click.option("--json", "as_json", is_flag=True)
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
    import time

    from .backbones import REGISTRY, weights_status
    from .datasets import discover
    from .extract import FeatureOptions, RunOptions
    from .extract import extract as run_extract
    from .fit import HeadOptions, fit_head
    from .phantoms import write_phantoms
    from .report import write_report

    started = time.perf_counter()
    root = Path(out)
    if root.exists() and any(p.name in ("runs", "report") for p in root.iterdir()):
        raise XrayfeatError(f"{root}: holds an earlier demo; pass another --out or delete it")
    installed = all(r["verified"] for r in weights_status())
    weights = "imagenet" if installed else "none"
    if not installed:
        log.warning("ImageNet weights are not installed (see `xrayfeat weights status`): the demo runs with RANDOM "
                    "weights; every figure is a random-feature baseline and the report says so")
    size, png, epochs_binary, epochs_four = (80, 96, 3, 3) if quick else (224, 256, 40, 100)
    data = root / "data"
    if not data.exists():
        write_phantoms(data, task="four", per_class=per_class, size=png, seed=0)
    cache = root / "cache"
    dataset = discover(data, hash_cache=None)
    run = RunOptions(cache_dir=cache, progress=not as_json)
    features = {b: FeatureOptions(b, weights=weights, image_size=size) for b in REGISTRY}
    click.echo(f"demo: extracting {len(dataset)} phantom X-rays with {' and '.join(features)} (one decoding pass)", err=True)
    run_extract(dataset, list(features.values()), run)

    studies = [("binary", "vgg16", ["covid", "normal"], epochs_binary),
               ("four", "inception_v3", None, epochs_four),
               ("four", "vgg16", None, epochs_four)]
    summary = []
    for task, backbone, classes, epochs in studies:
        subset = dataset.select_classes(classes) if classes else dataset
        click.echo(f"demo: {task} task, {backbone} head, {epochs} epochs, baselines, t-SNE and UMAP maps", err=True)
        head = HeadOptions(epochs=epochs, n_boot=1000 if not quick else 100,
                           baselines=("logreg", "svm", "pixels") if not quick else ("logreg", "pixels"))
        result = fit_head(subset, features[backbone], head, run, out=root / "runs" / f"{task}-{backbone}")
        for method in ("tsne", "umap"):
            _embed_map(subset, None, method, Path(result.run) / f"embed-{method}.png", from_run=result.run,
                       cache_dir=cache, title=f"{_METHOD_NAMES[method]} of the {backbone} head's features ({task} task)")
        summary.append({"task": task, "backbone": backbone, "run": result.run, "test": result.test,
                        "baselines": result.baselines})
    report = write_report([s["run"] for s in summary], root / "report")
    seconds = time.perf_counter() - started
    payload = {"report": report["html"], "markdown": report["markdown"], "weights": weights, "runs": summary,
               "seconds": round(seconds, 1)}

    def human(err):
        for s in summary:
            base = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in s["baselines"].items())
            click.echo(f"{s['task']:6} {s['backbone']:12} head test accuracy {s['test']['accuracy']:.3f}  ({base})", err=err)
        click.echo(f"demo finished in {seconds:.0f} s{' with RANDOM weights' if weights == 'none' else ''}", err=err)
        click.echo(f"report: {report['html']}", err=err)

    emit(payload, as_json, human)


# --------------------------------------------------------------------------- cache


@main.group()
def cache():
    """Feature stores: list, verify, clean up, export."""


@cache.command("ls")
@click.option("--cache-dir", default="data_cache", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def cache_ls(cache_dir, as_json):
    """List the feature stores, their fingerprints, rows and size.

    \b
    Example:
      xrayfeat cache ls --cache-dir data_cache
    """
    from .store import list_stores

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
        _console(err).print(table)

    emit({"cache_dir": str(cache_dir), "stores": infos}, as_json, human)


@cache.command("verify")
@click.option("--cache-dir", default="data_cache", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def cache_verify(cache_dir, as_json):
    """Check every shard's checksum and every index; exit 1 naming what is damaged.

    \b
    Example:
      xrayfeat cache verify
    """
    from .store import list_stores

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
    if problems:
        click.echo(f"xrayfeat: error: {len(problems)} problem(s) found; first: {problems[0]}", err=True)
        sys.exit(1)


@cache.command("gc")
@click.option("--cache-dir", default="data_cache", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def cache_gc(cache_dir, as_json):
    """Remove orphaned temporary files (from killed runs) and compact small shards.

    \b
    Example:
      xrayfeat cache gc
    """
    from .store import list_stores

    results = [s.gc() for s in list_stores(cache_dir)]

    def human(err):
        for r in results:
            click.echo(f"{r['store']}: removed {len(r['removed_temp_files'])} temporary files, merged "
                       f"{r['merged_shards']} shards, dropped {r['dropped_duplicates']} duplicate rows", err=err)

    emit({"stores": results}, as_json, human)


@cache.command("export")
@click.argument("data")
@feature_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def cache_export(data, out, as_json, **kw):
    """Write a dataset's cached features to one .npz (sha256, path, label, split, pooled, spatial).

    Rows follow the dataset's order. Nothing is computed: missing features are an
    error that says which extract command to run.

    \b
    Example:
      xrayfeat cache export demo_data --backbone vgg16 --weights none --out vgg16.npz
    """
    import numpy as np

    from .extract import open_store

    features = _single_feature(kw)
    dataset = _dataset(data, kw["classes"], kw["cache_dir"])
    store = open_store(features, kw["cache_dir"], kw["device"])
    arrays = store.read(dataset.hashes, ("pooled", "spatial"))
    tmp = Path(out).with_name(f".{Path(out).name}.tmp.npz")
    np.savez(
        tmp,
        sha256=np.array(dataset.hashes),
        path=np.array([item.relpath for item in dataset.items]),
        label=np.array([item.label for item in dataset.items]),
        split=np.array([item.split for item in dataset.items]),
        pooled=arrays["pooled"],
        spatial=arrays["spatial"],
    )
    os.replace(tmp, out)
    data_out = {"out": str(out), "rows": len(dataset), "store": str(store.path),
                "pooled": list(arrays["pooled"].shape), "spatial": list(arrays["spatial"].shape)}
    emit(data_out, as_json, lambda err: click.echo(f"wrote {len(dataset)} rows to {out}", err=err))


if __name__ == "__main__":  # pragma: no cover
    main()
