"""``xrayfeat weights status|install|download``: the ImageNet weight files a backbone loads."""

from __future__ import annotations

import click

from xrayfeat.cli.kit import (
    emit,
    handle_errors,
    json_option,
    say,
)
from xrayfeat.options.settings import BACKBONES


@click.group("weights")
def weights_group():
    """ImageNet weight files: what is installed, downloading them, installing a downloaded one.

    \b
    Example:
      xrayfeat weights download
    """


@weights_group.command("status")
@json_option
@handle_errors
def weights_status_cmd(as_json):
    """List the ImageNet weight files xrayfeat looks for and whether their md5 checks out.

    \b
    Example:
      xrayfeat weights status
    """
    from xrayfeat.extraction.weights import weights_dir, weights_status

    rows = weights_status()

    def human(err):
        width = max(len(r["backbone"]) for r in rows)
        for r in rows:
            wrong = "WRONG SHA256" if r["expected_sha256"] else "WRONG MD5"
            state = "ok" if r["verified"] else (wrong if r["present"] else "missing")
            say(f"{r['backbone']:{width}} {state:9} {r['file']}", err=err)
        if not all(r["verified"] for r in rows):
            say(f"get them with: xrayfeat weights download  (or, from a file you downloaded: "
                f"xrayfeat weights install FILE; into {weights_dir()})", err=err)

    emit({"weights": rows}, as_json, human)


@weights_group.command("install")
@click.argument("file")
@json_option
@handle_errors
def weights_install_cmd(file, as_json):
    """Verify a downloaded ImageNet weight file's md5 and copy it into $KERAS_HOME/models.

    \b
    Example:
      xrayfeat weights install ~/Downloads/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
    """
    from xrayfeat.extraction.weights import install_weights

    result = install_weights(file)
    emit(result, as_json, lambda err: say(f"installed {result['backbone']} weights: {result['file']}", err=err))


@weights_group.command("download")
@click.argument("backbone_names", metavar="[BACKBONE]...", nargs=-1, type=click.Choice(BACKBONES))
@click.option("--base-url", default=None, metavar="URL",
              help="Folder URL to download from (a mirror; the file name is appended). "
                   "Default: $XRAYFEAT_WEIGHTS_URL, else Keras' official location.")
@json_option
@handle_errors
def weights_download_cmd(backbone_names, base_url, as_json):
    """Download ImageNet weight files into $KERAS_HOME/models (all backbones when none is named), md5-checked.

    Files already there with the right md5 are kept; a failed or wrong download
    leaves nothing behind. Without network access, use `xrayfeat weights install FILE`.

    \b
    Example:
      xrayfeat weights download vgg16
      xrayfeat weights download --base-url https://mirror.example.org/keras-weights
    """
    from xrayfeat.extraction.weights import ensure_weights

    rows = ensure_weights(backbone_names or None, base_url=base_url)

    def human(err):
        width = max(len(r["backbone"]) for r in rows)
        for r in rows:
            state = "downloaded" if r["action"] == "downloaded" else "ok"
            say(f"{r['backbone']:{width}} {state:10} {r['file']}", err=err)

    emit({"weights": rows}, as_json, human)
