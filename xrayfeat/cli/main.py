"""The ``xrayfeat`` group: its global options, and every command registered in the order ``--help`` lists them.

Conventions for every command: ``--help`` shows an example; ``--json`` prints
one JSON object on stdout and sends human output to stderr; exit code 0 on
success, 2 for bad usage or input, 1 for other failures, 128 + the signal when
SIGINT, SIGTERM or SIGHUP interrupts it (its helper processes and temporary
files go with it: :mod:`xrayfeat.distributed.lifetime`). Library errors
(:class:`~xrayfeat.errors.XrayfeatError`) become one line on stderr, never a
traceback. Heavy modules are imported inside commands so that ``--help`` and a
cache hit stay fast. Each command lives in the module of its group (see
:mod:`xrayfeat.cli`).
"""

from __future__ import annotations

import os

import click

from xrayfeat import __version__
from xrayfeat.cli.cache import cache_group
from xrayfeat.cli.data import inspect_cmd, phantoms_cmd
from xrayfeat.cli.demo import demo_cmd
from xrayfeat.cli.describe import describe_cmd
from xrayfeat.cli.embed import embed_cmd
from xrayfeat.cli.export import export_cmd
from xrayfeat.cli.extract import extract_cmd
from xrayfeat.cli.fit import fit_head_cmd
from xrayfeat.cli.kit import Group, quiet_frameworks, setup_logging
from xrayfeat.cli.manifest import manifest_cmd
from xrayfeat.cli.report import report_cmd
from xrayfeat.cli.use import evaluate_cmd, explain_cmd, predict_cmd
from xrayfeat.cli.weights import weights_group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="xrayfeat")
@click.option("--verbose", "-v", is_flag=True, help="Log what is resolved and done (device, precision, stores).")
@click.option("--offline", is_flag=True,
              help="Never touch the network: missing ImageNet weights are an error, not a download "
                   "(same as XRAYFEAT_OFFLINE=1).")
def main(verbose: bool, offline: bool) -> None:
    """Chest X-ray classification by transfer learning, on a content-addressed HDF5 feature cache.

    \b
    Example (built-in phantom X-rays, random weights, whole pipeline):
      xrayfeat phantoms demo_data --task four --per-class 60
      xrayfeat extract demo_data --backbone vgg16 --weights none
      xrayfeat cache ls
    """
    quiet_frameworks()
    setup_logging(verbose)
    if offline:  # read by the library at call time, and inherited by child processes
        os.environ["XRAYFEAT_OFFLINE"] = "1"


#: The commands, in the order ``xrayfeat --help`` lists them.
COMMANDS = (inspect_cmd, manifest_cmd, describe_cmd, weights_group, phantoms_cmd, extract_cmd, fit_head_cmd, predict_cmd,
            explain_cmd, evaluate_cmd, embed_cmd, report_cmd, export_cmd, demo_cmd, cache_group)
for _command in COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="xrayfeat")
