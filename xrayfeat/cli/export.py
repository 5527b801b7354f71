"""``xrayfeat export``: a run's deployable model, uint8 pixels in, class probabilities out."""

from __future__ import annotations

import click

from xrayfeat.cli.kit import (
    emit,
    handle_errors,
    json_option,
    say,
)


@click.command("export")
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
        say(f"exported {run} to {result.model} ({result.bytes / 1e6:.1f} MB, {len(result.classes)} {'findings' if result.multilabel else 'classes'}, "
            f"{result.image_size} px {result.input_dtype} input)"
            + ("  [RANDOM WEIGHTS]" if result.random_weights else ""), err=err)

    emit(result.as_json(), as_json, human)
