"""``xrayfeat inspect`` and ``xrayfeat phantoms``: look at a data set before trusting a number, or write a synthetic one."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from xrayfeat.cli.kit import (
    console,
    declared,
    emit,
    handle_errors,
    json_option,
    say,
)
from xrayfeat.options.settings import PhantomOptions

log = logging.getLogger("xrayfeat")


@click.command("inspect")
@click.argument("data")
@click.option("--classes", default=None, help="Keep only these classes, comma-separated.")
@json_option
@handle_errors
def inspect_cmd(data, classes, as_json):
    """Count images per split and class; show formats, sizes, duplicates and patient overlap.

    \b
    Example:
      xrayfeat inspect ../shared/data/cxr-sample/all
    """
    from xrayfeat.data.summary import inspect_data

    chosen = [c.strip() for c in classes.split(",")] if classes else None
    summary = inspect_data(data, classes=chosen).as_json()

    def human(err):
        from rich.table import Table

        out = console(err)
        table = Table(title=f"{summary['root']} ({summary['layout']}, {summary['images']} images)")
        table.add_column("split")
        for name in summary["classes"]:
            table.add_column(name, justify="right")
        table.add_column("total", justify="right")
        if summary["multilabel"]:  # positive images per finding; an image counts under each of its findings
            table.title += " · positive images per finding"
            table.columns[-1].header = "uncertain"
            for split, counts in summary["counts"].items():
                table.add_row(split, *[str(counts[c]) for c in summary["classes"]],
                              str(sum(summary["uncertain"][split].values())))
        else:
            for split, counts in summary["counts"].items():
                table.add_row(split, *[str(counts[c]) for c in summary["classes"]], str(sum(counts.values())))
        out.print(table)
        for group, values in summary["groups"].items():
            out.print(f"group {group}: " + ", ".join(f"{value} {n}" for value, n in values.items()))
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


@click.command("phantoms")
@click.argument("out")
@declared(PhantomOptions, "task")
@declared(PhantomOptions, "per_class")
@declared(PhantomOptions, "size")
@declared(PhantomOptions, "seed")
@json_option
@handle_errors
def phantoms_cmd(out, task, per_class, size, seed, as_json):
    """Write built-in synthetic chest X-rays (OUT/{train,test}/<class>/*.png + manifest.csv).

    --task multilabel writes OUT/{train,test}/*.png and a manifest with one
    column per finding (1, 0, -1 uncertain) and group columns: pass the
    manifest to the other commands.

    \b
    Example:
      xrayfeat phantoms demo_data --task four --per-class 60 --size 256 --seed 0
    """
    from xrayfeat.data.phantoms import write_phantoms

    manifest = write_phantoms(out, task=task, per_class=per_class, size=size, seed=seed)
    data = {"out": str(Path(out)), "manifest": str(manifest), "task": task, "per_class": per_class, "size": size, "seed": seed}
    emit(data, as_json, lambda err: say(f"wrote {task} phantoms to {out} (manifest {manifest})", err=err))
