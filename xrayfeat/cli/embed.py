"""``xrayfeat embed``: a 2-D map of cached features or of a trained head's features."""

from __future__ import annotations

from pathlib import Path

import click

from xrayfeat.cli.kit import (
    dataset_of,
    declared,
    emit,
    handle_errors,
    json_option,
    say,
    single_feature,
    stack,
)
from xrayfeat.errors import XrayfeatError
from xrayfeat.options.settings import BACKBONES, EmbedOptions, FeatureOptions, RunOptions


@click.command("embed")
@click.argument("data")
@click.option("--backbone", "-b", default=None,
              help=f"Backbone of the features ({' or '.join(BACKBONES)}), or the name of features imported with "
                   f"`xrayfeat cache import` (not needed with --from-run).")
@stack(*(declared(FeatureOptions, name) for name in ("weights", "image_size", "layer", "precision", "store_dtype", "keep")))
@declared(EmbedOptions, "method")
@click.option("--from-run", default=None, help="Embed a trained head's penultimate (Dense) activations instead of pooled features.")
@declared(FeatureOptions, "seed", help="Seed of the map, and of the random weights with --weights none.")
@click.option("--classes", default=None, help="Keep only these classes, comma-separated.")
@declared(RunOptions, "cache_dir")
@declared(RunOptions, "device")
@declared(RunOptions, "on_error")
@click.option("--out", default=None, help="Output PNG (default: RUN/embed-METHOD.png or embeddings/<backbone>-METHOD.png).")
@json_option
@handle_errors
def embed_cmd(data, backbone, method, from_run, seed, classes, cache_dir, device, on_error, out, as_json, **kw):
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
    from xrayfeat.runs.outputs import check_output

    if not backbone and not from_run:
        raise XrayfeatError("embed needs --backbone (pooled features) or --from-run RUN (a trained head)")
    features = None if from_run else single_feature({"backbone": backbone, "seed": seed, "cache_dir": cache_dir, **kw})
    if features is not None:
        features.validate()
    if out is None:
        out = Path(from_run) / f"embed-{method}.png" if from_run else Path("embeddings") / f"{backbone}-{method}.png"
    check_output(out, "embed", run=from_run, cache=cache_dir)  # before the data is discovered (embed_map checks it again)
    dataset = dataset_of(data, classes, cache_dir, on_error)
    outcome = embed_map(dataset, features, out, EmbedOptions(method=method, seed=seed),
                        from_run=load_run(from_run) if from_run else None,
                        run=RunOptions(cache_dir=cache_dir, device=device, on_error=on_error, progress=True))
    result = outcome.result

    def human(err):
        s = result.scores
        say(f"{result.plot_path}: {method} of {outcome.source}, {outcome.images} images"
            f"{' (coordinates reused)' if result.reused else ''} in {result.seconds:.1f} s", err=err)
        say(f"k-NN class agreement: 2-D {s['knn_agreement_2d']:.3f} vs features {s['knn_agreement_features']:.3f}; "
            f"trustworthiness {s['trustworthiness']:.3f}", err=err)

    emit(outcome.as_json(), as_json, human)
