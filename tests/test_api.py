"""The Python API: cheap to import, the same results as the CLI, misuse raises ValueError/TypeError."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xrayfeat as xf
from tests.conftest import SHARED_RUN_OPTIONS, run_cli

HEAVY = ("keras", "tensorflow", "jax", "torch", "sklearn", "h5py", "pandas", "matplotlib")


def test_import_xrayfeat_loads_nothing_heavy():
    code = ("import sys, xrayfeat as xf; xf.FeatureOptions; xf.HeadOptions; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_face_lists_the_library():
    for name in ("discover", "extract", "features", "fit_head", "embed", "load_run", "FeatureStore",
                 "FeatureOptions", "RunOptions", "HeadOptions", "EmbedOptions", "RunRecord", "XrayfeatError"):
        assert name in dir(xf)
    with pytest.raises(AttributeError):
        xf.no_such_thing  # noqa: B018


def test_functions_stay_functions_after_their_modules_are_imported():
    """Every public name (``xf.features``, ``xf.extract``...) stays what it is once every module of the package is loaded.

    In a fresh interpreter: in this one, an earlier test may have looked the names up already.
    """
    code = ("import importlib, pkgutil, xrayfeat as xf\n"
            "for info in pkgutil.walk_packages(xf.__path__, 'xrayfeat.'):\n"
            "    if not info.name.endswith('__main__'):\n"
            "        importlib.import_module(info.name)\n"
            "for name in xf.__all__[1:]:\n"
            "    assert callable(getattr(xf, name)), (name, getattr(xf, name))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_option_misuse_raises_value_and_type_errors(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="'precision' parameter of FeatureOptions"):
        xf.FeatureOptions("vgg16", precision="float8").validate()
    with pytest.raises(TypeError, match="'epochs' parameter of HeadOptions must be an int"):
        xf.HeadOptions(epochs="forty").validate()
    with pytest.raises(TypeError, match="unexpected keyword argument.*epochz"):
        xf.fit_head(tiny_data, "vgg16", epochz=3, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="'part' parameter of features"):
        xf.features(tiny_data, "vgg16", part="both", cache_dir=tmp_path / "cache")
    with pytest.raises(TypeError, match="backbone"):
        xf.features(tiny_data, cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_features_equal_what_the_cli_exports(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    X, y, meta = xf.features(tiny_data, "vgg16", weights="none", image_size=32, cache_dir=cache, seed=2)
    out = tmp_path / "export.npz"
    run_cli("cache", "export", tiny_data, "-b", "vgg16", "--weights", "none", "--image-size", "32", "--seed", "2",
            "--cache-dir", cache, "--out", out, check=True)
    exported = np.load(out)
    np.testing.assert_array_equal(X, exported["pooled"].astype(np.float32))
    assert list(meta.sha256) == list(exported["sha256"])
    assert list(meta.label) == list(exported["label"]) and list(meta.split) == list(exported["split"])
    assert [meta.attrs["classes"][k] for k in y] == list(exported["label"])


@pytest.mark.slow
def test_fit_head_equals_the_cli_on_the_same_data(shared_run, tmp_path):
    # the API's run is the session's shared run: xf.fit_head(data, "vgg16", **SHARED_RUN_OPTIONS, cache_dir=...)
    assert SHARED_RUN_OPTIONS == dict(weights="none", image_size=32, epochs=3, baselines=("logreg", "pixels"),
                                      n_bootstrap=50)
    run = shared_run.run
    cache = shared_run.copy_cache(tmp_path / "cache")  # its features, in a cache of this test's own
    proc = run_cli("fit-head", shared_run.data, "-b", "vgg16", "--weights", "none", "--image-size", "32",
                   "--epochs", "3", "--baselines", "logreg,pixels", "--n-bootstrap", "50", "--cache-dir", cache,
                   "--out", tmp_path / "cli-run", "--json", check=True)
    cli_run = xf.load_run(json.loads(proc.stdout)["run"])
    assert cli_run.metrics == run.metrics
    assert cli_run.predictions().equals(run.predictions())
    assert cli_run.record.head == run.record.head and cli_run.record.features == run.record.features


def test_public_names_stay_what_they_are_after_every_module_is_imported():
    """A submodule named like a public function would replace it on the package once imported (xf.explain did)."""
    import importlib
    import pkgutil
    import types

    import xrayfeat

    for info in pkgutil.iter_modules(xrayfeat.__path__):
        if info.name != "__main__":
            importlib.import_module(f"xrayfeat.{info.name}")
    shadowed = [name for name in xrayfeat.__all__ if isinstance(getattr(xrayfeat, name), types.ModuleType)]
    assert shadowed == []


def _corrupt_image(data):
    bad = data / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # a PNG signature, then nothing an image needs
    return bad


def test_embed_with_on_error_skip_leaves_out_an_image_that_cannot_be_decoded_and_says_so(tiny_data, tmp_path,
                                                                                        monkeypatch):
    from xrayfeat.analysis import maps

    monkeypatch.setattr(maps, "_layout", lambda z, **kwargs: z[:, :2].astype(np.float32))  # the layout is not the point
    bad = _corrupt_image(tiny_data)
    outcome = xf.embed(tiny_data, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "cache", workers=0,
                       on_error="skip", out=tmp_path / "map.png")
    assert outcome.images == 18 and outcome.skipped == 1
    assert len(outcome.result.coords) == 18
    assert outcome.as_json()["skipped"] == 1 and str(bad) in outcome.as_json()["skipped_files"][0]


def test_features_reads_the_existing_pooled_only_store_instead_of_extracting_a_full_one(tiny_data, tmp_path):
    from xrayfeat import api  # not xf.features: once extraction ran, the subpackage xrayfeat.extraction hides it
    from xrayfeat.store.fingerprint import KeepError

    cache = tmp_path / "cache"
    options = dict(weights="none", image_size=32, cache_dir=cache, workers=0)
    pooled_only = api.extract(tiny_data, "vgg16", keep="pooled", **options)
    X, _, meta = api.features(tiny_data, "vgg16", **options)
    assert meta.attrs["store"] == pooled_only.store and X.shape == (18, 512)
    assert [p.name for p in cache.iterdir() if (p / "fingerprint.json").is_file()] == [Path(pooled_only.store).name]
    with pytest.raises(KeepError, match="keeps pooled vectors only"):  # as the CLI commands say it
        api.features(tiny_data, "vgg16", part="spatial", **options)
