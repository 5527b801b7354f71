"""fit-head --train-tail: the backbone's tail trained with the head, and the one line when there is no cut point.

Split from tests/test_fit.py (each backbone is built and its tail trained).
"""

from __future__ import annotations

import json

import pytest

from test_fit import quick_fit
from xrayfeat.errors import XrayfeatError
from xrayfeat.extraction.pipeline import FeatureOptions
from xrayfeat.runs.fit import HeadOptions


def test_train_tail_without_cut_point_is_one_line(tmp_path, tiny_data):
    with pytest.raises(XrayfeatError, match="--train-tail needs features stored at a cut point; add --layer vgg16:block4_pool"):
        quick_fit(tiny_data, tmp_path, head=HeadOptions(train_tail=True))



@pytest.mark.parametrize("backbone,size,layer", [("vgg16", 32, "block4_pool"), ("inception_v3", 75, "mixed9")])
@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_train_tail_runs_and_records_counts(tmp_path, tiny_data, backbone, size, layer):
    features = FeatureOptions(backbone, weights="none", image_size=size, layer=layer)
    head = HeadOptions(epochs=1, steps_per_epoch=2, units=8, baselines=(), train_tail=True, n_bootstrap=20)
    quick_fit(tiny_data, tmp_path, features=features, head=head)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["params"]["tail"]["trainable"] > 0
    assert config["head"]["train_tail"] is True
