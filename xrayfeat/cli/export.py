"""``xrayfeat export``: a run's deployable model, uint8 pixels in, class probabilities out."""

from __future__ import annotations

import click

from xrayfeat.options.settings import ExportOptions

from xrayfeat.cli.kit import (
    declared,
    emit,
    handle_errors,
    json_option,
    say,
)


@click.command("export")
@click.argument("run")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: the model (model.keras, savedmodel/, model.onnx or model.tflite), export.json "
                   "(the contract: classes, decision rule and thresholds, calibration, metrics, warnings) and "
                   "MODEL_CARD.md.")
@declared(ExportOptions, "format", param="format_")
@json_option
@handle_errors
def export_cmd(run, out, format_, as_json):
    """Write a run's deployable model: uint8 RGB pixels (S x S) in, class probabilities out.

    One Keras model holds the preprocessing, the backbone up to the run's cut
    layer with the run's weights, and the trained head, without optimizer state.
    Inputs must already be decoded and resized as xrayfeat does
    (xrayfeat.data.images.read_image). The run's calibration is applied inside
    the model; its decision rule and thresholds are in export.json, applied to
    the probabilities outside it. export.json also holds the internal and
    external metrics with CIs, the warnings, the weights and the preprocessing;
    MODEL_CARD.md says them for a reader (random weights, shortcut sentinel and
    external drops first).

    \b
    Example:
      xrayfeat export runs/binary-vgg16-20261126-101500 --out deploy/binary-vgg16
      xrayfeat export runs/binary-vgg16-20261126-101500 --out deploy/onnx --format onnx
    """
    from xrayfeat.runs.export import export_run

    result = export_run(run, out, format=format_)

    def human(err):
        say(f"exported {run} to {result.model} ({result.bytes / 1e6:.1f} MB, {len(result.classes)} {'findings' if result.multilabel else 'classes'}, "
            f"{result.image_size} px {result.input_dtype} input)"
            + ("  [RANDOM WEIGHTS]" if result.random_weights else ""), err=err)
        calibrated = (f"; calibration {result.calibration} "
                      + ("applied in the model" if result.calibration_applied else "NOT applied in the model (see export.json)")
                      if result.calibration else "")
        say(f"  decision: {result.decision} (export.json){calibrated}; model card: {result.card}", err=err)

    emit(result.as_json(), as_json, human)
