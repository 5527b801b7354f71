"""The command line as a user meets it: help, exact counts, weights, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_cli, run_cli_here
from xrayfeat import backbones, errors
from xrayfeat.extraction import building, weights
from xrayfeat.cli.main import main


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def all_commands(group=main, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from all_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.parametrize("command", list(all_commands()), ids=" ".join)
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output, f"xrayfeat {' '.join(command)} --help shows no example"


# Seed report's counts, digit for digit.
SEED_COUNTS = [
    ("vgg16", 2, "21,139,777", "6,424,065", "14,715,712"),
    ("vgg16", 4, "21,140,548", "6,424,836", "14,715,712"),
    ("inception_v3", 4, "34,919,460", "13,112,580", "21,806,880"),
]


@pytest.mark.parametrize("backbone,classes,total,trainable,frozen", SEED_COUNTS)
def test_describe_matches_the_seed_counts(backbone, classes, total, trainable, frozen):
    result = invoke("describe", "--backbone", backbone, "--n-classes", classes)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"Total params: {total}" in lines
    assert f"Trainable params: {trainable}" in lines
    assert f"Non-trainable params: {frozen}" in lines
    for layer in ("head_bn", "head_flatten", "head_dense", "head_dropout", "head_output"):
        assert layer in result.output


def test_describe_json():
    result = invoke("describe", "-b", "vgg16", "--n-classes", "2", "--json")
    data = json.loads(result.stdout)
    assert (data["total"], data["trainable"], data["non_trainable"]) == (21139777, 6424065, 14715712)


# --------------------------------------------------------------------------- weights


def write_legacy_weights(path, backbone="vgg16", size=32, seed=3):
    """A no-top weight file in the same (legacy HDF5) format as Keras' ImageNet downloads."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(seed)
    spec = backbones.REGISTRY[backbone]
    model = getattr(keras.applications, spec.constructor)(include_top=False, weights=None, input_shape=(size, size, 3))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return model


def test_imagenet_path_installs_verifies_and_loads_a_weight_file(tmp_path, monkeypatch):
    source = tmp_path / "downloaded.h5"
    original = write_legacy_weights(source)
    md5 = weights.file_md5(source)
    # tests never download (see test_weights.py for that): pretend ours is the published one, and stay offline
    monkeypatch.setitem(backbones.REGISTRY, "vgg16", backbones.replace_md5(backbones.REGISTRY["vgg16"], md5))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("XRAYFEAT_OFFLINE", "1")

    missing = invoke("extract", tmp_path, "-b", "vgg16")
    assert missing.exit_code == 2 and "xrayfeat weights install FILE" in missing.stderr

    status = invoke("weights", "status", "--json")
    assert [r["present"] for r in json.loads(status.stdout)["weights"]] == [False] * len(backbones.REGISTRY)
    installed = invoke("weights", "install", source)
    assert installed.exit_code == 0, installed.output
    target = tmp_path / "keras_home" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert target.is_file()
    rows = {r["backbone"]: r for r in json.loads(invoke("weights", "status", "--json").stdout)["weights"]}
    assert rows["vgg16"]["verified"] and not rows["inception_v3"]["present"]

    info = weights.resolve_weights(backbones.REGISTRY["vgg16"], "imagenet")
    assert (info.kind, info.md5, info.random) == ("imagenet", md5, False)
    loaded = building.build_backbone(backbones.REGISTRY["vgg16"], info, 32)
    for a, b in zip(original.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)

    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(errors.WeightsError, match="md5 .* is not the expected"):
        weights.resolve_weights(backbones.REGISTRY["vgg16"], "imagenet")


def test_install_refuses_an_unknown_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    bogus = tmp_path / "weights.h5"
    bogus.write_bytes(b"not the published weights")
    result = invoke("weights", "install", bogus)
    assert result.exit_code == 2
    assert "matches no known weight file" in result.stderr and str(bogus) in result.stderr
    assert not (tmp_path / "keras_home" / "models").exists()


def test_weights_file_path_is_loaded_and_recorded(tmp_path):
    source = tmp_path / "mine.h5"
    original = write_legacy_weights(source, seed=5)
    info = weights.resolve_weights(backbones.REGISTRY["vgg16"], str(source))
    assert info.kind == "file" and info.identity == f"file:md5={weights.file_md5(source)}"
    loaded = building.build_backbone(backbones.REGISTRY["vgg16"], info, 32)
    np.testing.assert_array_equal(original.get_weights()[0], loaded.get_weights()[0])


def test_weights_for_another_backbone_are_one_clear_error(tmp_path):
    source = tmp_path / "vgg.h5"
    write_legacy_weights(source)
    info = weights.resolve_weights(backbones.REGISTRY["inception_v3"], str(source))
    with pytest.raises(errors.WeightsError, match="cannot be loaded into inception_v3"):
        building.build_backbone(backbones.REGISTRY["inception_v3"], info, 75)


# --------------------------------------------------------------------------- bad input, as a user


BAD_INPUT = [
    (["inspect", "{tmp}/nope"], "nope: no such folder"),
    (["extract", "{tmp}/nope", "-b", "vgg16", "--weights", "none"], "nope: no such folder"),
    (["extract", "{data}", "-b", "resnet", "--weights", "none"], ("'resnet'", "vgg16, inception_v3, densenet121, resnet50")),
    (["extract", "{data}", "-b", "vgg16", "--weights", "{tmp}/missing.h5"], "missing.h5"),
    (["extract", "{data}", "-b", "vgg16", "--weights", "none", "--layer", "mixed9"], "not a known cut point"),
    (["extract", "{data}", "-b", "vgg16", "--weights", "none", "--layer", "inception_v3:mixed9"], "names backbone"),
    (["extract", "{data}", "-b", "vgg16", "--weights", "none", "--classes", "covid"], "covid"),
    (["weights", "install", "{tmp}/nope.h5"], "nope.h5: no such file"),
    (["describe", "-b", "vgg16", "--n-classes", "1"], "Invalid value for '--n-classes': 1 is not in the range x>=2"),
    # fit-head: a missing folder and a bad --baselines value, before any work
    (["fit-head", "{tmp}/nope", "-b", "vgg16", "--weights", "none"], "nope: no such folder"),
    (["fit-head", "{data}", "-b", "vgg16", "--weights", "none", "--baselines", "knn"], "Got 'knn' instead"),
]


def run_expecting_one_error_line(tmp_path, tiny_data, args, message, exit_code):
    args = [a.format(tmp=tmp_path, data=tiny_data) for a in args]
    proc = run_cli(*args, "--cache-dir", tmp_path / "cache") if args[0] in ("extract", "fit-head") or args[:2] == ["cache", "export"] \
        else run_cli(*args)
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("xrayfeat: error:"), proc.stderr
    for part in (message,) if isinstance(message, str) else message:
        assert part in lines[0], (part, lines[0])
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(BAD_INPUT)])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_data, args, message):
    run_expecting_one_error_line(tmp_path, tiny_data, args, message, exit_code=2)


def test_corrupt_image_is_named_with_the_fix(tmp_path, tiny_data):
    (tiny_data / "train" / "a" / "zero.png").write_bytes(b"")
    proc = run_cli("extract", tiny_data, "-b", "vgg16", "--weights", "none", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 2
    assert "zero.png" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_json_counts(tmp_path, tiny_data):
    result = invoke("inspect", tiny_data, "--json")
    data = json.loads(result.stdout)
    assert data["counts"] == {"train": {"a": 6, "b": 6}, "test": {"a": 3, "b": 3}}
    assert data["duplicates"] == [] and data["formats"] == {"PNG": 18}


def test_inspect_flags_a_file_in_two_splits(tmp_path, tiny_data):
    import shutil

    shutil.copy(tiny_data / "train" / "a" / "a_train_0.png", tiny_data / "test" / "a" / "leak.png")
    result = invoke("inspect", tiny_data)
    assert result.exit_code == 0
    assert "1 groups (1 across splits)" in result.output and "leak.png" in result.output


@pytest.mark.realdata
def test_inspect_counts_the_real_sample(real_sample):
    data = json.loads(invoke("inspect", real_sample, "--json").stdout)
    assert data["counts"]["train"] == {"covid": 40, "normal": 40, "pneumonia_bac": 40, "pneumonia_vir": 40}
    assert data["counts"]["test"] == {"covid": 31, "normal": 31, "pneumonia_bac": 31, "pneumonia_vir": 31}
    assert data["unreadable"] == []


# --------------------------------------------------------------------------- embed, report, demo


def test_embed_pooled_then_reused(tmp_path, shared_run):
    # the session's tiny dataset with its features already cached: the map, not the backbone, is under test
    args = ["embed", shared_run.data, "-b", "vgg16", "--weights", "none", "--image-size", "32", "--method", "tsne",
            "--cache-dir", shared_run.copy_cache(tmp_path / "cache"), "--out", tmp_path / "map.png", "--json"]
    first = run_cli_here(*args)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["reused"] is False and (tmp_path / "map.png").is_file() and (tmp_path / "map.coords.npz").is_file()
    assert 0 <= data["scores"]["knn_agreement_2d"] <= 1
    again = json.loads(run_cli_here(*args).stdout)
    assert again["reused"] is True
    coords = np.load(tmp_path / "map.coords.npz")["coords"]
    assert coords.shape == (18, 2)


def test_embed_needs_a_source(tmp_path, tiny_data):
    proc = run_cli("embed", tiny_data)
    assert proc.returncode == 2 and "--backbone" in proc.stderr and "--from-run" in proc.stderr


def test_embed_on_error_skip_leaves_out_a_file_that_cannot_be_decoded_as_xf_embed_does(tmp_path, tiny_data, shared_run):
    # tiny_data holds the shared run's images (same seed, same bytes): their features come from its cache
    bad = tiny_data / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # a PNG signature, then nothing an image needs
    args = ["embed", tiny_data, "-b", "vgg16", "--weights", "none", "--image-size", "32", "--method", "umap",
            "--cache-dir", shared_run.copy_cache(tmp_path / "cache"), "--out", tmp_path / "map.png", "--json"]
    failed = run_cli_here(*args)
    assert failed.returncode == 2 and "broken.png" in failed.stderr and "--on-error skip" in failed.stderr
    proc = run_cli_here(*args, "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["images"] == 18 and data["skipped"] == 1 and data["skipped_files"][0].startswith(f"{bad}: ")
    assert np.load(tmp_path / "map.coords.npz")["coords"].shape == (18, 2)


def test_export_before_extract_is_one_line_and_exit_1(tmp_path, tiny_data):
    # Not bad input: DATA and every option are valid, and the same command succeeds once
    # `xrayfeat extract` has filled the store. The store lacking those features is a StoreError,
    # which the contract (errors.py) maps to 1, "any other failure".
    args = ["cache", "export", "{data}", "-b", "vgg16", "--weights", "none", "--out", "{tmp}/x.npz"]
    run_expecting_one_error_line(tmp_path, tiny_data, args, "run `xrayfeat extract", exit_code=1)
