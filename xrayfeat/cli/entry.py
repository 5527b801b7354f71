"""The ``xrayfeat`` script's entry point: the command line, then an exit without the interpreter's teardown.

Why: once TensorFlow is imported, the interpreter's own teardown (freeing every
module and object, TensorFlow's C++ destructors) takes about 1.3 s on 2 cores
after the command has finished and said so (measured: ``import tensorflow``
then exit), time a user waits for nothing. :func:`run` registers one exit
handler before anything else is imported, so it runs after every other one
(Python runs them last-registered first): logging's last flush, the
multiprocessing and Dask clean-ups, temporary folders, the decode pool and the
head's child all run as they always do, and only then is the process ended
with the command's exit status (``os._exit``), standard output and error
flushed first. Python has already waited for non-daemon threads by then.

Only the script and ``python -m xrayfeat`` end this way; calling the click
group (tests, a notebook) leaves the interpreter alone.
"""

from __future__ import annotations

import atexit

from xrayfeat.distributed.lifetime import end_now

__all__ = ["run"]


def run() -> None:
    """Run the ``xrayfeat`` command line and end the process with its exit status once the exit handlers ran."""
    status = [1]  # an exception that escapes the command: Python prints it, and the status is 1
    atexit.register(_end, status)
    from xrayfeat.cli.main import main

    try:
        main(prog_name="xrayfeat")
        status[0] = 0
    except SystemExit as exc:
        status[0] = _status(exc.code)
        raise


def _status(code) -> int:
    """The process exit status of ``sys.exit(code)``: 0 for None, the number, or 1 (a message)."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _end(status: list) -> None:
    """The last exit handler: end the process with ``status[0]`` (:func:`~xrayfeat.distributed.lifetime.end_now`)."""
    end_now(status[0])
