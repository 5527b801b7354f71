"""fit-head records where its head trained: a jax child or this process, as --head-backend asked.

Split from tests/test_headproc.py (two fit-heads through the command line).
"""

from __future__ import annotations

import json

from conftest import run_cli_here
from test_headproc import needs_jax


@needs_jax
def test_cli_records_where_the_head_trained(tmp_path, shared_run):
    # the session's tiny dataset, its features in a cache of this test's own (nothing to extract)
    common = ["fit-head", shared_run.data, "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
              "--epochs", "2", "--steps-per-epoch", "2", "--units", "8", "--baselines", "none", "--n-bootstrap", "50",
              "--cache-dir", shared_run.copy_cache(tmp_path / "cache"), "--workers", "0"]
    for backend in ("jax", "tensorflow"):
        proc = run_cli_here(*common, "--head-backend", backend, "--out", tmp_path / backend, "--json", check=True)
        assert json.loads(proc.stdout)["test"]["n"] == 6
        training = json.loads((tmp_path / backend / "config.json").read_text())["training"]
        assert training["backend"] == backend
        assert training["process"] == ("child process" if backend == "jax" else "in-process")
        assert training["backend_requested"] == backend
