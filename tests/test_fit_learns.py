"""fit-head learns: the four-class phantoms are learned well above chance (VGG16, random weights, 96 px).

Split from tests/test_fit.py (one long fit, with the SVM's grid search).
"""

from __future__ import annotations

import pytest

from xrayfeat.data.datasets import discover
from xrayfeat.extraction.pipeline import FeatureOptions, RunOptions
from xrayfeat.runs.fit import HeadOptions, fit_head


@pytest.mark.slow
@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_four_class_phantoms_are_learned_well_above_chance(tmp_path):
    from xrayfeat.data.phantoms import write_phantoms

    write_phantoms(tmp_path / "ph", task="four", per_class=40, size=96, seed=0)
    features = FeatureOptions("vgg16", weights="none", image_size=96)
    head = HeadOptions(epochs=40, baselines=("logreg", "svm"), n_bootstrap=200)
    result = fit_head(discover(tmp_path / "ph"), features, head,
                      RunOptions(cache_dir=tmp_path / "cache", workers=0), out=tmp_path / "run")
    best = max([result.test["accuracy"]] + [m["accuracy"] for m in result.baselines.values()])
    assert best >= 0.75, (result.test, result.baselines)
