"""``xrayfeat extract``: a frozen backbone once over every image, into the feature cache."""

from __future__ import annotations

import click

from xrayfeat.cli.kit import (
    dataset_of,
    declared,
    emit,
    feature_list,
    feature_options,
    handle_errors,
    json_option,
    say,
)
from xrayfeat.options.settings import RunOptions


@click.command("extract")
@click.argument("data")
@feature_options
@declared(RunOptions, "batch_size")
@declared(RunOptions, "workers")
@declared(RunOptions, "on_error")
@declared(RunOptions, "cluster", metavar="local:N|tcp://HOST:PORT")
@declared(RunOptions, "chunk_images")
@json_option
@handle_errors
def extract_cmd(data, batch_size, workers, on_error, cluster, chunk_images, as_json, **kw):
    """Run a frozen backbone once over every image and keep the features in the HDF5 cache.

    Only images whose content hash has no row yet are decoded and computed; a
    rerun on the same data computes nothing. Several backbones of the same input
    size (``-b vgg16,inception_v3``, or ``-b all`` for every backbone) share one
    decoding pass.

    \b
    Example:
      xrayfeat extract ../shared/data/cxr-sample/all --backbone inception_v3 --weights none
    """
    from xrayfeat.extraction.pipeline import extract as run_extract
    from xrayfeat.extraction.config import resolve

    run = RunOptions(device=kw["device"], batch_size=batch_size, workers=workers, cache_dir=kw["cache_dir"],
                     on_error=on_error, progress=True, cluster=cluster, chunk_images=chunk_images)
    run.validate()
    features = feature_list(kw)
    for feature in features:  # fail on options and weights before scanning a large dataset
        resolve(feature, kw["device"], cache_dir=kw["cache_dir"])
    results = run_extract(dataset_of(data, kw["classes"], kw["cache_dir"], on_error), features, run)
    payload = results[0].as_json() if len(results) == 1 else {"stores": [r.as_json() for r in results]}

    def human(err):
        for r in results:
            say(
                f"{r.store}: {r.images} images, {r.extracted} extracted, {r.reused} reused, {r.skipped} skipped "
                f"in {r.seconds:.1f} s ({r.images_per_s:.1f} img/s)"
                + ("  [RANDOM WEIGHTS]" if r.random_weights else ""),
                err=err,
            )

    emit(payload, as_json, human)
