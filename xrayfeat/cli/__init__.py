"""The command line: a shell over the library, one library call per command.

* :mod:`.kit`: what every command shares (``--json``, one-line errors with exit codes, option
  declarations turned into click options);
* :mod:`.main`: the ``xrayfeat`` group and its commands.

``python -m xrayfeat`` runs the same group as the ``xrayfeat`` script.
"""
