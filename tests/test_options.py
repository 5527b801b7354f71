"""Options declared once: the checks, the messages, the CLI derived from them, and the fixed option bugs."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from xrayfeat.cli.main import main
from xrayfeat.errors import DatasetError
from xrayfeat.options.settings import BACKBONES, FeatureOptions, HeadOptions, RunOptions
from xrayfeat.options.parsers import parse_list
from xrayfeat.options.constraints import OptionError, OptionTypeError


@pytest.mark.parametrize("options,message", [
    (FeatureOptions("resnet"), "The 'backbone' parameter of FeatureOptions must be one of {'vgg16', 'inception_v3', "
                               "'densenet121', 'resnet50', 'efficientnet_b0', 'convnext_tiny'}. Got 'resnet' instead."),
    (FeatureOptions("vgg16", image_size=16), "The 'image_size' parameter of FeatureOptions must be an int in [32, 2048] "
                                             "or None. Got 16 instead."),
    (RunOptions(device="tpu"), "The 'device' parameter of RunOptions must be one of {'auto', 'cpu', 'gpu'}. Got 'tpu' instead."),
    (HeadOptions(val_fraction=1.0), "The 'val_fraction' parameter of HeadOptions must be a number in (0, 1). Got 1.0 instead."),
    (HeadOptions(baselines=("logreg", "knn")), "The 'baselines' parameter of HeadOptions must be a tuple of distinct names "
                                               "from {'logreg', 'svm', 'pixels'}. Got ('logreg', 'knn') instead."),
])
def test_a_bad_value_names_the_parameter_what_is_allowed_and_what_was_passed(options, message):
    with pytest.raises(OptionError) as info:
        options.validate()
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_a_wrong_type_is_a_type_error():
    with pytest.raises(OptionTypeError) as info:
        HeadOptions(epochs=2.5).validate()
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError):
        HeadOptions(train_tail="yes").validate()


def test_defaults_are_the_seeds():
    head = HeadOptions()
    assert (head.epochs, head.head_batch_size, head.steps_per_epoch, head.learning_rate, head.units, head.dropout, head.l2) == \
        (40, 10, 10, 1e-3, 256, 0.3, 1e-3)
    head.validate()


def test_validation_steps_zero_means_the_whole_validation_set():
    """Bug fixed: --validation-steps 0 was documented as all but became the seed's 2 or 5."""
    assert HeadOptions().seed_validation_steps(2) == 2
    assert HeadOptions().seed_validation_steps(4) == 5
    assert HeadOptions(validation_steps=0).seed_validation_steps(4) is None  # train_head: the whole set
    assert HeadOptions(validation_steps=3).seed_validation_steps(2) == 3


def test_the_cli_derives_choices_and_defaults_from_the_declarations():
    result = CliRunner().invoke(main, ["fit-head", "--help"])
    assert "[auto|tensorflow|jax|torch]" in result.output and "[default: 40; x>=1]" in result.output
    bad = CliRunner().invoke(main, ["extract", "data", "-b", "vgg16", "--precision", "float8"])
    assert bad.exit_code == 2 and "'float8' is not one of 'auto', 'float32'" in bad.output


def test_parse_list_keeps_order_drops_duplicates_and_names_the_choices():
    assert parse_list("Inception_V3, vgg16,vgg16", BACKBONES, "backbone") == ("inception_v3", "vgg16")
    assert parse_list("none", ("a",), "baselines", none=True) == ()
    with pytest.raises(OptionError, match=r"subset of \{vgg16, inception_v3, densenet121, resnet50, efficientnet_b0, "
                                          r"convnext_tiny\}"):
        parse_list("vgg16,", BACKBONES, "backbone")


def test_a_patient_split_error_names_the_dataset_not_a_parent_folder():
    """Bug fixed: the error named path.parent.parent.parent, wrong for manifests."""
    from types import SimpleNamespace

    from xrayfeat.runs.fit import split_validation

    items = [SimpleNamespace(patient_id="p1", sha256=f"h{i}") for i in range(4)]
    with pytest.raises(DatasetError, match=r"^data/manifest\.csv: a class has fewer than 2 training patients"):
        split_validation(items, np.array([0, 0, 1, 1]), 0.2, 0, root="data/manifest.csv")


def test_embed_passes_its_seed_to_random_weights(monkeypatch, tmp_path):
    """Bug fixed: `embed -b` ignored --seed, so it built a new seed-0 store after `extract --seed 3`."""
    import xrayfeat.runs.maps as maps

    seen = {}

    def fake_embed_map(dataset, features, out, embed, **kwargs):
        seen["features"], seen["embed"] = features, embed
        raise SystemExit(0)

    monkeypatch.setattr(maps, "embed_map", fake_embed_map)
    from tests.conftest import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data")
    CliRunner().invoke(main, ["embed", str(data), "-b", "vgg16", "--weights", "none", "--seed", "3",
                              "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "m.png")])
    assert seen["features"].seed == 3 and seen["embed"].seed == 3
