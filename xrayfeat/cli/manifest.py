"""``xrayfeat manifest``: a public dataset's official tables as xrayfeat's manifest, reading no image."""

from __future__ import annotations

import click
from click.core import ParameterSource

from xrayfeat.cli.kit import declared, emit, handle_errors, json_option, say
from xrayfeat.data.converters.common import ConvertOptions
from xrayfeat.data.converters.convert import CONVERTERS, DATASET_NAMES

_SHOW_MISSING = 20  # missing images --json lists (the record beside the manifest lists them all)

_HELP = f"""Convert a public dataset's official tables into a manifest that every command reads.

DATASET is one of: {"; ".join(f"{c.name} ({c.title}: {c.tables})" for c in CONVERTERS.values())}.

No image is opened: each is only checked to exist; missing ones are left out,
counted, and listed in OUT.json with the tables' SHA-256 and the counts. See
docs/datasets.md for each dataset's folder layout.

\b
Example (NIH ChestX-ray14 as downloaded, with its split lists; CheXpert, frontal images only):
  xrayfeat manifest nih data/nih --out data/nih/manifest.csv
  xrayfeat manifest chexpert data/CheXpert-v1.0-small --out data/chexpert.csv --frontal-only
"""


@click.command("manifest", help=_HELP)
@click.argument("dataset", type=click.Choice(DATASET_NAMES))
@click.argument("root", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The manifest to write (.csv), in ROOT or a folder above it (its paths stay inside its folder); "
                   "its record is written beside it as OUT.json.")
@declared(ConvertOptions, "frontal_only")
@declared(ConvertOptions, "valid_as")
@declared(ConvertOptions, "patients", type=click.Path(dir_okay=False), metavar="FILE")
@declared(ConvertOptions, "seed")
@json_option
@handle_errors
def manifest_cmd(dataset, root, out, as_json, **options):
    """One call to xf.convert_manifest with the options given on the command line (its help: ``_HELP``)."""
    from xrayfeat.api import convert_manifest

    ctx = click.get_current_context()
    given = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    result = convert_manifest(dataset, root, out, **given)

    def human(err):
        splits = ", ".join(f"{split} {n}" for split, n in result.splits.items() if n)
        say(f"wrote {result.manifest}: {result.images} images of {result.patients} patients ({splits}) from "
            f"{result.table_rows} table rows; record {result.record}", err=err)
        if result.filtered:
            say(f"  {result.filtered} rows left out by the filters", err=err)

    emit(result.as_json(missing_paths=_SHOW_MISSING), as_json, human)
