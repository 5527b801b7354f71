"""fit-head end to end on the real chest X-ray sample (../shared/data/cxr-sample; skipped where absent).

Split from tests/test_fit.py so that its longest test runs on its own xdist worker slot.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from test_fit import has_sentinel, read_predictions, sentinel_expected


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_real_sample_runs_to_the_end(tmp_path, real_sample):
    proc = run_cli("fit-head", real_sample, "-b", "vgg16", "--weights", "none", "--image-size", "64",
                   "--epochs", "5", "--n-bootstrap", "200", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "real",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data["baselines"]) == {"logreg", "svm", "pixels"}
    assert has_sentinel(data["warnings"]) == sentinel_expected(data["test"], data["baselines"]), data
    for name in ("config.json", "metrics.json", "history.csv", "predictions.csv", "head.keras", "curves.png",
                 "confusion.png", "roc.png"):
        assert (tmp_path / "real" / name).is_file()
    assert len(read_predictions(tmp_path / "real" / "predictions.csv")) == 124
