"""``xrayfeat describe``: the seed's full model (frozen backbone + head) and its parameter counts."""

from __future__ import annotations


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
    from xrayfeat.models.head import describe_seed_model

    described = describe_seed_model(backbone, n_classes, image_size=image_size, units=units, dropout=dropout, l2=l2)

    def human(err):
        for line in described.summary:
            say(line, err=err)
        say(f"Total params: {described.total:,}", err=err)
        say(f"Trainable params: {described.trainable:,}", err=err)
        say(f"Non-trainable params: {described.non_trainable:,}", err=err)
        say(f"Backbone params: {described.backbone_params:,} ({backbone}, frozen)", err=err)

    emit(described.as_json(), as_json, human)
