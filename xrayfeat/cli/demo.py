"""``xrayfeat demo``: the whole study on built-in phantoms in one command."""

from __future__ import annotations

import click

from xrayfeat.cli.kit import (
    IntRange,
    emit,
    handle_errors,
    json_option,
    say,
)
from xrayfeat.options.settings import MAX_PHANTOMS_PER_CLASS, bounded


@click.command("demo")
@click.option("--out", default="demo_out", show_default=True, help="Folder for the phantoms, cache, runs and report.")
@click.option("--per-class", type=IntRange(bounded(4, MAX_PHANTOMS_PER_CLASS, "each image is a file on disk")), default=60, show_default=True, help="Phantom images per class.")
@click.option("--quick", is_flag=True, help="A smoke run: tiny images, few epochs (for tests).")
@json_option
@handle_errors
def demo_cmd(out, per_class, quick, as_json):
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
                      say=lambda line: say(line, err=True))

    def human(err):
        for s in result.runs:
            base = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in s["baselines"].items())
            say(f"{s['task']:6} {s['backbone']:12} head test accuracy {s['test']['accuracy']:.3f}  ({base})", err=err)
        say(f"demo finished in {result.seconds:.0f} s{' with RANDOM weights' if result.weights == 'none' else ''}",
            err=err)
        say(f"report: {result.report}", err=err)

    emit(result.as_json(), as_json, human)
