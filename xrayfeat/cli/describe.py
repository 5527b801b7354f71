"""``xrayfeat describe``: the seed's full model (frozen backbone + head) and its parameter counts."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from xrayfeat.cli.kit import (
    declared,
    emit,
    handle_errors,
    json_option,
    renamed_flags,
    say,
)
from xrayfeat.options.settings import BACKBONES, FeatureOptions, HeadOptions


@click.command("describe")
@renamed_flags("describe")
@click.option("--backbone", "-b", required=True, type=click.Choice(BACKBONES))
@click.option("--n-classes", "n_classes", type=click.IntRange(2, None), required=True,
              help="Number of classes (2 → one sigmoid unit).")
@declared(FeatureOptions, "image_size")
@declared(HeadOptions, "units")
@declared(HeadOptions, "dropout")
@declared(HeadOptions, "l2")
@json_option
@handle_errors
def describe_cmd(backbone, n_classes, image_size, units, dropout, l2, as_json):
    """Print the seed's full model (frozen backbone + head) and its parameter counts.

    \b
    Example:
      xrayfeat describe --backbone inception_v3 --n-classes 4
    """
    from xrayfeat.backbones import get_spec
    from xrayfeat.extraction.building import build_backbone
    from xrayfeat.extraction.weights import WeightsInfo
    from xrayfeat.models.head import build_seed_model, count_params

    spec = get_spec(backbone)
    model = build_seed_model(build_backbone(spec, WeightsInfo("none", seed=0), image_size), n_classes,
                             units=units, dropout=dropout, l2=l2)
    counts = count_params(model)
    lines: list[str] = []
    with _full_width(sys.stderr if as_json else sys.stdout, SUMMARY_WIDTH):
        model.summary(print_fn=lambda text, line_break=None: lines.append(text), line_length=SUMMARY_WIDTH,
                      expand_nested=False)
    data = {"backbone": backbone, "classes": n_classes, "image_size": image_size or spec.input_size, **counts}

    def human(err):
        for text in lines:  # Keras hands its whole summary over at once
            for line in text.splitlines():
                say(line, err=err)
        say(f"Total params: {counts['total']:,}", err=err)
        say(f"Trainable params: {counts['trainable']:,}", err=err)
        say(f"Non-trainable params: {counts['non_trainable']:,}", err=err)

    emit(data, as_json, human)


#: The width of Keras' summary table (its four columns, "Param #" last).
SUMMARY_WIDTH = 100


@contextlib.contextmanager
def _full_width(stream, width: int):
    """Keras renders its summary on a rich console of its own, 80 columns wide where the output is no terminal
    (a pipe, a file), which cuts off the table's last column: there, that console is told the table's width."""
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal or os.environ.get("COLUMNS"):
        yield
        return
    os.environ["COLUMNS"] = str(width)  # rich reads it when the console is made, inside summary()
    try:
        yield
    finally:
        os.environ.pop("COLUMNS", None)
