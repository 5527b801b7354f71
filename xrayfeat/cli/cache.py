"""``xrayfeat cache ls|verify|gc|export|import``: the feature stores of a cache folder."""

from __future__ import annotations

from pathlib import Path

import click

from xrayfeat.cli.kit import (
    console,
    dataset_of,
    declared,
    emit,
    feature_options,
    handle_errors,
    json_option,
    say,
    single_feature,
    stack,
)
from xrayfeat.options.settings import RunOptions


@click.group("cache")
def cache_group():
    """Feature stores: list, verify, clean up, export, import features computed elsewhere."""


#: Which cache folder ls, verify and gc look in.
_cache_dir = declared(RunOptions, "cache_dir")


def _cache_command(name: str, *options):
    """A ``cache`` subcommand: ``options`` (``--cache-dir`` for ls, verify and gc), then ``--json`` and one-line errors."""

    def register(func):
        return cache_group.command(name)(stack(*options, json_option, handle_errors)(func))

    return register


@_cache_command("ls", _cache_dir)
def ls_cmd(cache_dir, as_json):
    """List the feature stores, their fingerprints, rows and size; a damaged store below, with its repair.

    \b
    Example:
      xrayfeat cache ls --cache-dir data_cache
    """
    from xrayfeat.store.catalog import cache_ls as list_cache
    from xrayfeat.store.fingerprint import is_imported

    listing = list_cache(cache_dir)
    infos = listing.stores

    def human(err):
        from rich.table import Table

        table = Table(title=f"feature stores in {cache_dir}")
        for col in ("store", "backbone", "layer", "size", "precision", "weights", "rows", "MB"):
            table.add_column(col)
        for i in infos:
            if "damaged" in i:
                continue  # its fingerprint is unknown: said below, with its repair
            fp = i["fingerprint"]
            if is_imported(fp):  # no backbone, layer, size nor precision: the file it came from instead
                table.add_row(Path(i["path"]).name, f"imported: {', '.join(i.get('names', [])) or '(no name)'}", "-",
                              "-", "-", f"file sha256 {fp['file_sha256'][:12]}", str(i["rows"]), f"{i['bytes'] / 1e6:.1f}")
                continue
            table.add_row(Path(i["path"]).name, fp["backbone"], fp["layer"], str(fp["image_size"]), fp["precision"],
                          fp["weights"] + (" (RANDOM)" if i["random_weights"] else ""), str(i["rows"]),
                          f"{i['bytes'] / 1e6:.1f}")
        console(err).print(table)
        for i in infos:
            if "damaged" in i:
                say(f"damaged: {i['damaged']}", err=err)

    emit(listing.as_json(), as_json, human)


@_cache_command("verify", _cache_dir)
def verify_cmd(cache_dir, as_json):
    """Check every shard's checksum and every index; exit 1 naming what is damaged.

    \b
    Example:
      xrayfeat cache verify
    """
    from xrayfeat.store.catalog import cache_verify as verify_cache

    checked = verify_cache(cache_dir)
    report = checked.stores

    def human(err):
        for path, ps in report.items():
            say(f"{'ok  ' if not ps else 'BAD '} {path}", err=err)
            for p in ps:
                say(f"     {p}", err=err)
        if not report:
            say(f"no feature stores in {cache_dir}", err=err)

    emit(checked.as_json(), as_json, human)
    checked.raise_for_problems()  # each problem names the file, what is wrong and the repair


@_cache_command("gc", _cache_dir)
def gc_cmd(cache_dir, as_json):
    """Repair damaged shards and indexes, remove temporary files left by killed runs, compact small shards.

    A damaged shard is replaced by its sound rows; re-running extract then
    recomputes exactly the rows that were lost. Waits for a running extraction.

    \b
    Example:
      xrayfeat cache gc
    """
    from xrayfeat.store.catalog import cache_gc as clean_cache

    def waiting(store):
        say(f"{store.path} is being written by another process; waiting for it", err=True)

    cleaned = clean_cache(cache_dir, on_wait=waiting)
    results = cleaned.stores

    def human(err):
        for r in results:
            if "damaged" in r:  # nothing gc can repair: the problem says what to do
                say(f"damaged, left as is: {r['damaged']}", err=err)
                continue
            repaired = ""
            if r["damaged_shards"]:
                repaired = (f"replaced {len(r['damaged_shards'])} damaged shards by their {r['kept_rows']} sound rows "
                            f"({r['lost_rows']} rows lost: re-run extract to recompute them), ")
            say(f"{r['store']}: removed {len(r['removed_temp_files'])} temporary files, {repaired}"
                f"{'rebuilt the damaged index, ' if r['rebuilt_index'] else ''}merged "
                f"{r['merged_shards']} shards, dropped {r['dropped_duplicates']} duplicate rows", err=err)

    emit(cleaned.as_json(), as_json, human)


@_cache_command("export", click.argument("data"), feature_options,
                click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file."))
def cache_export(data, out, as_json, **kw):
    """Write a dataset's cached features to one .npz (sha256, path, label, split, pooled, spatial).

    Rows follow the dataset's order. Nothing is computed: missing features are an
    error that says which extract command to run.

    \b
    Example:
      xrayfeat cache export demo_data --backbone vgg16 --weights none --out vgg16.npz
    """
    from xrayfeat.extraction.feature_export import export_features
    from xrayfeat.runs.outputs import check_output

    check_output(out, "cache export", cache=kw["cache_dir"])
    features = single_feature(kw)
    result = export_features(dataset_of(data, kw["classes"], kw["cache_dir"]), features, out,
                             cache_dir=kw["cache_dir"], device=kw["device"])
    emit(result.as_json(), as_json, lambda err: say(f"wrote {result.rows} rows to {result.out}", err=err))


@_cache_command("import", click.argument("file", type=click.Path(dir_okay=False)),
                click.option("--name", required=True,
                             help="The name -b takes for these features (lowercase letters, digits, _ - .; not a "
                                  "backbone's)."),
                click.option("--model", default="", help="Declared provenance: the model that computed the features "
                                                         "(e.g. 'torchxrayvision densenet121-res224-all')."),
                click.option("--source-url", default="", help="Declared provenance: where the model or the file "
                                                              "comes from."),
                click.option("--description", default="", help="Declared provenance: anything else a reader should know."),
                click.option("--root", default=None, type=click.Path(file_okay=False),
                             help="Folder that a 'path' key column is relative to (default: the file's folder)."),
                click.option("--replace", "replace_name", is_flag=True,
                             help="Point --name at these features when it names other imported ones."),
                _cache_dir)
def import_cmd(file, name, model, source_url, description, root, replace_name, cache_dir, as_json):
    """Import features computed elsewhere (npz, csv, parquet) as a store that -b NAME selects.

    The file has a key, 'sha256' (each image file's SHA-256, as xrayfeat
    computes it) or 'path' (hashed now; relative to --root), and a feature
    matrix: in an .npz, arrays 'sha256' or 'path' (n,) and 'features' (n, c),
    optionally 'spatial' (n, h, w, c) maps for --head-input spatial and
    explain; in a .csv, the key column and one numeric column per feature;
    a .parquet file (needs pyarrow) as a .csv. float32 and float16 are stored
    as given (cache export gives them back bit for bit), other numbers as
    float32. The store's fingerprint is the file's SHA-256 and the provenance
    declared here; fit-head, embed, evaluate, report, cache export and
    xf.features then take -b NAME. predict and explain refuse images the file
    lacks: xrayfeat cannot compute imported features.

    \b
    Example:
      xrayfeat cache import txv.npz --name txv-densenet --model "torchxrayvision densenet121-res224-all"
      xrayfeat fit-head DATA -b txv-densenet --head-input pooled
    """
    from xrayfeat.api import import_features

    result = import_features(file, name, cache_dir=cache_dir, model=model, source_url=source_url,
                             description=description, root=root, replace=replace_name)

    def human(err):
        spatial = f", spatial maps {tuple(result.spatial)}" if result.spatial else ", no spatial maps"
        again = "" if result.written else " (imported before: nothing written)"
        say(f"imported {result.rows} rows of {result.pooled[1]} features{spatial} from {result.file} as "
            f"{result.name!r} into {result.store}{again}", err=err)
        if result.converted:
            say(f"xrayfeat: warning: {result.converted}", err=err)
        if result.replaced:
            say(f"{result.name!r} pointed at {result.replaced} before; that store is left in the cache", err=err)

    emit(result.as_json(), as_json, human)
