"""How a library call behaves wherever it is made: quiet frameworks, and logging the standard way.

* **Frameworks stay quiet unless asked.** :func:`quiet_frameworks` runs before
  xrayfeat first imports TensorFlow or Keras (every public call goes through
  :func:`library_call`; the CLI calls it at start): TensorFlow's C++ start-up
  lines are hidden (``TF_CPP_MIN_LOG_LEVEL=3``) unless the user set a level of
  their own or ``XRAYFEAT_DEBUG=1``; jax's exit hook is taken out at exit.
  Dask's loggers are quieted where a cluster starts
  (:mod:`xrayfeat.distributed.session`).
* **Logging, the standard way.** xrayfeat logs to ``logging.getLogger("xrayfeat")``,
  which holds a :class:`logging.NullHandler` only: importing xrayfeat configures
  nothing. Where the application configured nothing either (no handler on the
  root logger, none of its own on ``xrayfeat``), a call still shows its warnings,
  as ``xrayfeat: warning: ...`` lines on the stderr of the moment (a notebook
  cell's), through :class:`DefaultHandler` attached for the call's duration
  only. An application that configures logging gets the records through its
  own handlers instead; the CLI sets its own handler (:func:`xrayfeat.cli.kit.setup_logging`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading

__all__ = ["DefaultHandler", "LOGGER_NAME", "library_call", "library_logging", "quiet_frameworks"]

LOGGER_NAME = "xrayfeat"


def quiet_frameworks() -> None:
    """Keep TensorFlow's C++ start-up chatter off stderr (call before it is imported).

    Level 3 hides its C++ log lines of every severity: at level 2, the error-level
    lines of a start-up on a machine without CUDA ("Unable to register cuDNN
    factory", "failed call to cuInit") still print, with absl's "All log messages
    before absl::InitializeLog()" banner. Real failures still reach the user: they
    are Python exceptions. A level the user set is kept, and ``XRAYFEAT_DEBUG=1``
    leaves TensorFlow's own default (everything shown); child processes (the head's
    trainer) inherit the level. jax's garbage-collection
    hook is taken out at exit (:func:`~xrayfeat.devices.release_jax_at_exit`), so no
    "Exception ignored" traceback follows the program's output. TensorFlow's
    retracing notices (``tf.function`` on inputs of several sizes) are not the user's
    problem: its Python logger shows errors only.
    """
    from xrayfeat.devices import release_jax_at_exit

    if not os.environ.get("XRAYFEAT_DEBUG"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    release_jax_at_exit()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


class DefaultHandler(logging.Handler):
    """``xrayfeat: warning: ...`` on ``sys.stderr`` as it is when the record comes (a notebook's cell output)."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        from xrayfeat.errors import one_line

        try:
            level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            print(one_line(f"xrayfeat: {level}{record.getMessage()}"), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


_depth = threading.local()


def _configured(logger: logging.Logger) -> bool:
    """Whether the application decided where xrayfeat's records go (a handler of its own, or on the root)."""
    if any(not isinstance(h, (logging.NullHandler, DefaultHandler)) for h in logger.handlers):
        return True
    return not logger.propagate or bool(logging.getLogger().handlers)


@contextlib.contextmanager
def library_logging():
    """For the block: :class:`DefaultHandler` on the ``xrayfeat`` logger where nothing else would show a warning."""
    logger = logging.getLogger(LOGGER_NAME)
    depth = getattr(_depth, "value", 0)
    handler = None
    if depth == 0 and not _configured(logger):
        handler = DefaultHandler()
        logger.addHandler(handler)
    _depth.value = depth + 1
    try:
        yield
    finally:
        _depth.value = depth
        if handler is not None:
            logger.removeHandler(handler)


def library_call(function):
    """A public call: frameworks quiet (:func:`quiet_frameworks`), warnings shown (:func:`library_logging`)."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        quiet_frameworks()
        with library_logging():
            return function(*args, **kwargs)

    return call
