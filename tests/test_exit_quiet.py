"""Nothing on stderr after the last line: jax's gc hook must not print a traceback while a process shuts down.

Keras imports jax on every backend, and jax appends ``_xla_gc_callback`` to
``gc.callbacks``. A collection during the interpreter's teardown calls it after
its module is gone: ``Exception ignored in: <function _xla_gc_callback ...>``
and a traceback on stderr, after the CLI's output (or as a failed head child's
last line, which the parent reports as the reason). Whether a collection falls
in the teardown depends on the allocations; the child here makes every one
collect (``gc.set_threshold(1)``, registered as the first exit handler so that
it runs last), which prints the traceback every time without the fix. The same
check on a command, through the CLI after TensorFlow started:
tests/test_reliability_images.py::test_decode_failure_after_tensorflow_starts_is_xrayfeat_lines_only.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")

# every allocation during the teardown collects (this exit handler is registered first, so it runs last)
TEARDOWN_COLLECTS = "import atexit, gc; atexit.register(gc.set_threshold, 1)\n"


def _python(code: str, *, env=None, stdin="") -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-c", TEARDOWN_COLLECTS + code], input=stdin, capture_output=True,
                          text=True, env=full_env, timeout=600)


def test_the_head_child_prints_nothing_on_stderr_at_exit():
    """The waiting child imports Keras (and jax) and the trainer, gets no job and exits: not one byte on stderr."""
    code = ("import runpy, sys\nsys.argv = ['head_process', '--wait']\n"
            "runpy.run_module('xrayfeat.models.head_process', run_name='__main__', alter_sys=True)\n")
    proc = _python(code, env={"KERAS_BACKEND": "tensorflow"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
