"""What the previous release wrote still loads: a run and a store made by xrayfeat 0.1.0 (the flat layout).

The fixture (tests/data/release-0.1.0, see its README) was written before the modules moved into
packages; its baselines are joblib pickles whose class lived in ``xrayfeat.baselines``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import xrayfeat as xf

RELEASE = Path(__file__).parent / "data" / "release-0.1.0"


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("legacy")
    shutil.copytree(RELEASE, root, dirs_exist_ok=True)
    return root


def test_the_run_record_and_its_tables_load(legacy):
    run = xf.load_run(legacy / "runs" / "legacy")
    assert run.record.classes == ["covid", "normal"]
    assert set(run.metrics["baselines"]) == {"logreg", "svm", "pixels"}
    assert len(run.predictions()) == len((legacy / "runs/legacy/predictions.csv").read_text().splitlines()) - 1


@pytest.mark.parametrize("name", ["logreg", "svm", "pixels"])
def test_baselines_pickled_under_the_old_module_path_load(legacy, name):
    run = xf.load_run(legacy / "runs" / "legacy")
    fitted = run.baseline(name)
    assert type(fitted).__module__ == "xrayfeat.models.baselines"
    assert "xrayfeat.baselines" not in sys.modules  # the old path names the module only while a pickle loads
    width = 32 * 32 if name == "pixels" else 512
    proba = fitted.predict_proba(np.zeros((3, width), dtype=np.float32))
    assert proba.shape == (3, 2) and np.allclose(proba.sum(axis=1), 1.0)


def test_the_store_verifies_and_reads(legacy):
    (store,) = xf.list_stores(legacy / "cache")
    assert store.verify() == []
    assert len(store) == 16
    hashes = [item.sha256 for item in xf.discover(legacy / "data").items]
    rows = store.read(hashes)
    assert rows["pooled"].shape == (16, 512) and np.isfinite(rows["pooled"]).all()


def test_predict_with_the_old_run_on_its_cached_features(legacy):
    run = xf.load_run(legacy / "runs" / "legacy")
    result = run.predict([legacy / "data" / "test"], cache_dir=legacy / "cache")
    assert len(result.table) == len(list((legacy / "data" / "test").rglob("*.png")))
    assert result.extracted == 0 and result.reused == len(result.table)  # every image was in the old store
