"""The command line: a shell over the library, one library call per command, one module per command group.

* :mod:`.entry`: the script's entry point (the command, then an exit without the interpreter's teardown);
* :mod:`.main`: the ``xrayfeat`` group, its global options (``--verbose``, ``--offline``) and the
  order its commands are listed in;
* :mod:`.kit`: what every command shares (``--json``, one-line errors with exit codes, option
  declarations turned into click options);
* :mod:`.data`: ``inspect`` (what a data set holds) and ``phantoms`` (a synthetic one);
* :mod:`.manifest`: ``manifest``, a public dataset's official tables as a manifest;
* :mod:`.describe`: ``describe``, the seed's model and its parameter counts;
* :mod:`.weights`: ``weights status|install|download``;
* :mod:`.extract`: ``extract``, features into the cache;
* :mod:`.fit`: ``fit-head``, the head beside the baselines, and its result tables;
* :mod:`.use`: ``predict``, ``explain`` and ``evaluate``, a trained run on new images;
* :mod:`.embed`: ``embed``, 2-D maps;
* :mod:`.report`: ``report``, runs compared;
* :mod:`.export`: ``export``, a run's deployable model;
* :mod:`.demo`: ``demo``, the whole study on phantoms;
* :mod:`.cache`: ``cache ls|verify|gc|export``, one option stack for the four.

``python -m xrayfeat`` runs the same group as the ``xrayfeat`` script (:mod:`.entry`, which calls
``xrayfeat.cli.main:main`` and then ends the process without the interpreter's teardown).
"""
