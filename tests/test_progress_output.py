"""Progress, tables and logs where nobody watches a terminal: a pipe, a log file, a notebook.

Each process test runs the library or the CLI as a user would, with stderr and
stdout as pipes (not a terminal).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240


def _env(**extra) -> dict:
    env = {**os.environ, **extra}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("COLUMNS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_describe_into_a_pipe_keeps_the_param_column(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xrayfeat", "describe", "-b", "vgg16", "--n-classes", "2",
                           "--image-size", "32"], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
                          env=_env())
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "Layer (type)" in line)
    assert "Output Shape" in header and "Param #" in header
    assert "│ block5_pool (MaxPooling2D)" in proc.stdout and "0 │" in proc.stdout
    assert proc.stderr == ""


def test_a_table_into_a_pipe_keeps_every_column(capsys, monkeypatch):
    """The CLI's one console (fit-head's operating points, cache ls...): no 80-column cut where there is no terminal."""
    monkeypatch.delenv("COLUMNS", raising=False)  # (pytest-xdist's workers set COLUMNS=80; a user's COLUMNS is obeyed)
    from rich.table import Table

    from xrayfeat.cli.kit import console

    table = Table(*[f"column number {i}" for i in range(12)])
    table.add_row(*[f"value-{i}-" + "x" * 12 for i in range(12)])
    console(False).print(table)
    out = capsys.readouterr().out
    assert all(f"column number {i}" in out for i in range(12)) and "value-11-" + "x" * 12 in out
    assert max(len(line) for line in out.splitlines()) > 200


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("progress") / "data", per_split=(("train", 12),), size=40)


def test_a_long_library_call_prints_progress_lines_and_its_warnings_into_a_log(tmp_path, data):
    code = (f"import xrayfeat as xf\n"
            f"xf.features({str(data)!r}, 'vgg16', weights='none', image_size=32, cache_dir='cache', batch_size=2, "
            f"workers=0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
                          env=_env(XRAYFEAT_PROGRESS_EVERY="0.001"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    progress = [line for line in lines if line.startswith("xrayfeat: extract: ")]
    assert len(progress) >= 3, proc.stderr  # one per batch here, then the last one
    assert "images (" in progress[0] and "img/s, about" in progress[0]
    assert progress[-1].startswith("xrayfeat: extract: 24/24 images (100%) in ")
    assert "\r" not in proc.stderr  # lines, not a redrawn bar
    # the library's warnings reach a user who configured no logging, in the CLI's words
    assert any(line.startswith("xrayfeat: warning: vgg16 runs with RANDOM weights") for line in lines), proc.stderr
    # and nothing else: no TensorFlow start-up lines, no Dask, no traceback
    assert all(line.startswith("xrayfeat: ") for line in lines), proc.stderr


def test_a_short_run_prints_no_progress_line(tmp_path, data):
    proc = subprocess.run([sys.executable, "-m", "xrayfeat", "extract", str(data), "-b", "vgg16", "--weights", "none",
                           "--image-size", "32", "--cache-dir", "cache", "--workers", "0"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "xrayfeat: extract: " not in proc.stderr  # shorter than the interval (10 s by default): the CLI as before


def test_the_logger_has_a_null_handler_only_and_an_application_s_logging_gets_the_records(tmp_path, data):
    code = f"""\
import logging, sys
import xrayfeat as xf
logger = logging.getLogger("xrayfeat")
assert [type(h).__name__ for h in logger.handlers] == ["NullHandler"], logger.handlers
assert not logging.getLogger().handlers and logger.level == logging.NOTSET and logger.propagate
logging.basicConfig(format="APP %(name)s %(levelname)s %(message)s", stream=sys.stdout)
xf.features({str(data)!r}, 'vgg16', weights='none', image_size=32, cache_dir='cache', workers=0, progress=False)
assert [type(h).__name__ for h in logger.handlers] == ["NullHandler"], logger.handlers
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
                          env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "APP xrayfeat WARNING vgg16 runs with RANDOM weights" in proc.stdout
    assert "RANDOM" not in proc.stderr  # once, through the application's handler only


def test_in_jupyter_the_progress_is_an_html_bar_updated_in_place(monkeypatch):
    """In a kernel the bar is one display, updated through its display_id (no ipywidgets)."""
    from xrayfeat.extraction import progress as progress_module

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj._repr_html_(), repr(obj)))

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(("display", obj._repr_html_(), repr(obj)))
        return Handle()

    import IPython.display

    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(progress_module, "in_notebook", lambda: True)
    with progress_module.progress_bar(True, 10) as bar:
        for _ in range(10):
            bar.advance(1)
    assert shown[0][0] == "display" and '<progress value="0" max="10"' in shown[0][1]
    assert shown[-1][0] == "update" and '<progress value="10" max="10"' in shown[-1][1]
    assert shown[-1][2].startswith("extract: 10/10 images (100%) in ")
