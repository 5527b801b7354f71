"""``python -m xrayfeat``: the command line, as the ``xrayfeat`` script runs it."""

from xrayfeat.cli.entry import run

if __name__ == "__main__":  # pragma: no cover
    run()
