"""One decode worker: a fresh interpreter that decodes the chunks its parent sends over a pipe.

:func:`xrayfeat.extraction.decoding.decoded` starts each worker as
``python -c BOOT SYS_PATH PARENT`` (:func:`command`): a new interpreter that
takes the parent's ``sys.path``, imports this module and runs :func:`serve`. It
never imports the parent's ``__main__`` (what ``multiprocessing``'s spawn does,
and why a script without an ``if __name__ == "__main__":`` guard, a script on
standard input or a notebook cell could hang or crash a spawned pool), so the
pool works whatever the caller is: a script, ``python -``, ``python -c``,
IPython, Jupyter or an embedded interpreter (:func:`interpreter` finds a Python
to run where ``sys.executable`` is the host program).

The protocol is pickles over the worker's standard input and output, which no
other code in the worker writes to (they are moved off fds 0 and 1 first): a
request is ``(paths, size)``; each answer is the list of ``(array | None,
DecodeFailure | None)`` of :func:`~xrayfeat.extraction.decoding._decode_chunk`,
in the order of the requests. End of input ends the worker. The worker runs
:func:`~xrayfeat.distributed.lifetime.die_with_parent` first: it ends with its
parent however that ends.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

__all__ = ["command", "interpreter", "serve"]

#: What the new interpreter runs: the parent's ``sys.path``, then :func:`serve` (argv: sys.path as JSON, parent pid).
BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
        "from xrayfeat.extraction.decode_worker import serve; serve(int(sys.argv[2]))")


def interpreter() -> str | None:
    """A Python interpreter to start workers with, or None where none is found.

    ``sys.executable`` where it is Python; in an embedded interpreter it may be
    the host program (or empty), so then the interpreter of the same
    installation (``sys._base_executable``, ``<exec_prefix>/bin/python3.X``).
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, getattr(sys, "_base_executable", ""),
                  os.path.join(sys.exec_prefix, "bin", version), os.path.join(sys.exec_prefix, "bin", "python3"),
                  os.path.join(sys.base_exec_prefix, "bin", version)]
    for candidate in candidates:
        if candidate and Path(candidate).name.startswith("python") and os.access(candidate, os.X_OK) \
                and Path(candidate).is_file():
            return candidate
    return None


def command(python: str, parent: int) -> list[str]:
    """The command line of a worker for ``parent`` (a pid), run by ``python``."""
    import json

    return [python, "-c", BOOT, json.dumps(sys.path), str(parent)]


def serve(parent: int) -> None:
    """Serve requests from standard input until it ends; answers on standard output."""
    from xrayfeat.distributed.lifetime import die_with_parent

    die_with_parent(parent)
    # the protocol owns fds 0 and 1; anything else that prints (a decoder) goes nowhere
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    from xrayfeat.extraction.decoding import _decode_chunk

    try:
        while True:
            try:
                paths, size = pickle.load(requests)
            except EOFError:
                return
            pickle.dump(_decode_chunk(paths, size), answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()
    except (BrokenPipeError, KeyboardInterrupt):  # the parent stopped listening: nothing left to do
        os._exit(0)
