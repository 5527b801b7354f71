"""The head's own backend: how it is chosen, the child process, and what comes back from it."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import run_cli
from xrayfeat import headproc
from xrayfeat.errors import XrayfeatError
from xrayfeat.heads import load_head

HAVE_JAX = importlib.util.find_spec("jax") is not None
needs_jax = pytest.mark.skipif(not HAVE_JAX, reason="jax is not installed, so there is no other backend to train on")


@pytest.fixture
def on_tensorflow(monkeypatch):
    monkeypatch.setattr(headproc, "process_backend", lambda: "tensorflow")


@pytest.mark.parametrize(
    "requested, kwargs, installed, expected",
    [
        ("auto", {"device": "cpu"}, True, "jax"),
        ("auto", {"device": "cpu"}, False, "tensorflow"),
        ("auto", {"device": "gpu"}, True, "tensorflow"),
        ("auto", {"device": "cpu", "train_tail": True}, True, "tensorflow"),
        ("tensorflow", {"device": "cpu"}, True, "tensorflow"),
        ("jax", {"device": "gpu"}, True, "jax"),
    ],
)
def test_resolve_head_backend(on_tensorflow, monkeypatch, requested, kwargs, installed, expected):
    monkeypatch.setattr(headproc, "_installed", lambda name: installed)
    backend, reason = headproc.resolve_head_backend(requested, **kwargs)
    assert backend == expected
    assert reason


def test_auto_on_a_jax_process_stays_in_process(monkeypatch):
    monkeypatch.setattr(headproc, "process_backend", lambda: "jax")
    assert headproc.resolve_head_backend("auto", device="cpu")[0] == "jax"
    assert headproc.start_child("jax") is None


@pytest.mark.parametrize(
    "requested, kwargs, installed, message",
    [
        ("theano", {}, True, "--head-backend must be one of auto, tensorflow, jax, torch; got 'theano'"),
        ("torch", {}, False, "--head-backend torch: torch is not installed; pip install torch, or use --head-backend auto"),
        ("jax", {"train_tail": True}, True, "--train-tail trains the backbone's tail, which must run on the extraction "
         "backend (tensorflow); drop --head-backend jax or set KERAS_BACKEND=jax for the whole run"),
    ],
)
def test_bad_head_backend_is_one_line(on_tensorflow, monkeypatch, requested, kwargs, installed, message):
    monkeypatch.setattr(headproc, "_installed", lambda name: installed)
    with pytest.raises(XrayfeatError) as info:
        headproc.resolve_head_backend(requested, **kwargs)
    assert str(info.value) == message


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 2, 2, 6)).astype("float16")
    y = (x.reshape(40, -1).mean(axis=1) > 0).astype(int)
    return x[:24], y[:24], x[24:32], y[24:32], x[32:]


TRAIN = {"n_classes": 2, "epochs": 2, "steps_per_epoch": 3, "units": 8, "validation_steps": 2}


@needs_jax
def test_child_trains_on_jax_and_its_head_loads_here(tmp_path):
    """A head trained in a jax child comes back as a .keras file this (TensorFlow) process loads and agrees with."""
    head_file = tmp_path / "head.keras"
    x_fit, y_fit, x_val, y_val, x_test = _arrays()
    out = headproc.train_and_predict("jax", x_fit, y_fit, x_val, y_val, x_test, head_file=head_file, **TRAIN)
    assert out.process == "child process"
    assert out.settings["backend"] == "jax"
    assert len(out.history["loss"]) == 2 and len(out.epoch_seconds) == 2
    assert out.proba_test.shape == (8, 2)
    np.testing.assert_allclose(out.proba_test.sum(axis=1), 1.0, rtol=1e-6)
    loaded = load_head(head_file)
    np.testing.assert_allclose(loaded.predict_proba(x_test), out.proba_test, atol=1e-5)


@needs_jax
def test_same_inputs_same_head_from_two_children(tmp_path):
    arrays = _arrays()
    a = headproc.train_and_predict("jax", *arrays, head_file=tmp_path / "a.keras", **TRAIN)
    b = headproc.train_and_predict("jax", *arrays, head_file=tmp_path / "b.keras", **TRAIN)
    np.testing.assert_array_equal(a.proba_test, b.proba_test)
    assert a.history == b.history


def test_in_process_when_the_backend_is_this_one(tmp_path):
    out = headproc.train_and_predict(headproc.process_backend(), *_arrays(), head_file=tmp_path / "h.keras", **TRAIN)
    assert out.process == "in-process"
    assert (tmp_path / "h.keras").is_file()


@needs_jax
def test_a_failing_child_is_one_line_naming_the_way_out(tmp_path):
    missing = tmp_path / "no" / "such" / "folder" / "head.keras"
    with pytest.raises(XrayfeatError) as info:
        headproc.train_and_predict("jax", *_arrays(), head_file=missing, **TRAIN)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("training the head on jax failed: ")
    assert "--head-backend tensorflow" in text


@needs_jax
def test_an_unused_child_exits_cleanly():
    child = headproc.HeadChild("jax")
    child.close()
    assert child.proc.returncode == 0


@needs_jax
def test_cli_records_where_the_head_trained(tmp_path, tiny_data):
    common = ["fit-head", tiny_data, "--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--epochs", "2",
              "--steps-per-epoch", "2", "--units", "8", "--baselines", "none", "--bootstrap", "50",
              "--cache-dir", tmp_path / "cache", "--workers", "0"]
    for backend in ("jax", "tensorflow"):
        proc = run_cli(*common, "--head-backend", backend, "--out", tmp_path / backend, "--json", check=True)
        assert json.loads(proc.stdout)["test"]["n"] == 6
        training = json.loads((tmp_path / backend / "config.json").read_text())["training"]
        assert training["backend"] == backend
        assert training["process"] == ("child process" if backend == "jax" else "in-process")
        assert training["backend_requested"] == backend


def test_child_environment(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    env = headproc._child_env("jax")
    assert env["KERAS_BACKEND"] == "jax" and env["JAX_PLATFORMS"] == "cpu"
    if env.get("GLIBC_TUNABLES") is not None:  # Linux
        assert env["GLIBC_TUNABLES"] == headproc.MALLOC_TUNABLES
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert headproc._child_env("jax")["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"  # the user's setting wins
    assert "JAX_PLATFORMS" not in headproc._child_env("tensorflow")
    # on a GPU run an explicit jax head may use the GPU: jax is not pinned to the CPU there
    assert "JAX_PLATFORMS" not in headproc._child_env("jax", "gpu")
