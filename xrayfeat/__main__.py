"""``python -m xrayfeat``: the command line, as the ``xrayfeat`` script runs it."""

from xrayfeat.cli.main import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="xrayfeat")
