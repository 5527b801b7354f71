"""The head's own backend: how it is chosen, the child process, and what comes back from it.

What fit-head records about it, through the command line: tests/test_headproc_cli.py.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from xrayfeat.models import head_process as headproc
from xrayfeat.errors import XrayfeatError
from xrayfeat.models.head import load_head

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
# what fit-head's --class-weight, --restore-best and --repeats ask for
REPEATED = {**TRAIN, "class_weight": "balanced", "restore_best": "val_loss", "repeat_seeds": (7,)}
# in this process: XLA compilation costs seconds per head on TensorFlow and changes nothing tested here
HERE = {"jit_compile": False if headproc.process_backend() == "tensorflow" else "auto"}


def assert_repeat_differs(out, seed: int):
    """One repeat, with its seed and best epoch, whose probabilities are not the first head's."""
    assert [r["seed"] for r in out.repeats] == [seed]
    repeat = out.repeats[0]
    assert repeat["best_epoch"] in (1, 2)
    assert repeat["proba_val"].shape == out.proba_val.shape and repeat["proba_test"].shape == out.proba_test.shape
    assert not np.array_equal(repeat["proba_test"], out.proba_test)
    assert not np.array_equal(repeat["proba_val"], out.proba_val)


@pytest.fixture(scope="module")
def compile_cache_dir(tmp_path_factory):
    """The jax children of this module keep their compiled programs here (XRAYFEAT_COMPILE_CACHE), not in ~/.cache."""
    folder = tmp_path_factory.mktemp("compile-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XRAYFEAT_COMPILE_CACHE", str(folder))
        patch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        yield folder


@pytest.fixture(scope="module")
def jax_child(tmp_path_factory, compile_cache_dir):
    """(outcome, head file) of a head trained in a jax child, weighted and restored to its best epoch, no repeats."""
    head_file = tmp_path_factory.mktemp("jax-child") / "head.keras"
    out = headproc.train_and_predict("jax", *_arrays(), head_file=head_file, **{**REPEATED, "repeat_seeds": ()})
    return out, head_file


@needs_jax
def test_the_child_keeps_its_compiled_programs_per_processor(jax_child, compile_cache_dir):
    """The child's XLA programs are on disk, in this processor's folder (the next child loads them: the test below
    trains the same head again from them and gets the same probabilities)."""
    from xrayfeat.models.compile_cache import cpu_identity

    assert [p.name for p in compile_cache_dir.iterdir()] == [cpu_identity()]
    programs = [p.name for p in (compile_cache_dir / cpu_identity()).iterdir()]
    assert any(name.startswith("jit_") for name in programs), programs


@needs_jax
def test_child_trains_on_jax_and_its_head_loads_here(jax_child):
    """A head trained in a jax child comes back as a .keras file this (TensorFlow) process loads and agrees with."""
    out, head_file = jax_child
    x_val, x_test = _arrays()[2], _arrays()[4]
    assert out.process == "child process"
    assert out.settings["backend"] == "jax"
    assert len(out.history["loss"]) == 2 and len(out.epoch_seconds) == 2
    assert out.proba_test.shape == (8, 2) and out.proba_val.shape == (8, 2)
    np.testing.assert_allclose(out.proba_test.sum(axis=1), 1.0, rtol=1e-6)
    loaded = load_head(head_file)
    np.testing.assert_allclose(loaded.predict_proba(x_test), out.proba_test, atol=1e-5)
    np.testing.assert_allclose(loaded.predict_proba(x_val), out.proba_val, atol=1e-5)


@needs_jax
def test_same_inputs_same_head_from_two_children_with_or_without_repeats(jax_child, tmp_path):
    """One child trains the head and its repeat; the head is the one a child without repeats trains."""
    arrays = _arrays()
    a = jax_child[0]
    b = headproc.train_and_predict("jax", *arrays, head_file=tmp_path / "b.keras", **REPEATED)
    np.testing.assert_array_equal(a.proba_test, b.proba_test)
    np.testing.assert_array_equal(a.proba_val, b.proba_val)
    assert a.history == b.history and a.repeats == []
    assert b.settings["class_weight"] == "balanced" and b.settings["best_epoch"] in (1, 2)
    assert_repeat_differs(b, 7)
    # the saved head is the first one (a jax head predicting on TensorFlow: equal up to float rounding)
    np.testing.assert_allclose(load_head(tmp_path / "b.keras").predict_proba(arrays[4]), b.proba_test, atol=1e-5)


class ChildHere:
    """A stand-in for HeadChild that runs the child's entry point in this process: the whole job protocol
    (arrays and job.json in, proba.npz and result.json out) on this process' backend, in ``folder``."""

    backend = "this process' backend"

    def __init__(self, folder):
        self.folder = folder
        folder.mkdir()

    def job_folder(self):
        return self.folder

    def run(self, folder):
        return headproc._child_main(folder), ""

    def stop(self):
        pass


def test_in_process_and_through_the_child_protocol(tmp_path, monkeypatch):
    """The head, its validation probabilities and its repeats, here and through the child's job folder: the same."""
    arrays = _arrays()
    here = headproc.train_and_predict(headproc.process_backend(), *arrays, head_file=tmp_path / "h.keras",
                                      **REPEATED, **HERE)
    assert here.process == "in-process"
    np.testing.assert_array_equal(load_head(tmp_path / "h.keras").predict_proba(arrays[2]), here.proba_val)
    assert_repeat_differs(here, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.keras", "h.npz"]  # only the first head is saved

    monkeypatch.setattr(headproc, "process_backend", lambda: "another backend")
    there = headproc.train_and_predict("jax", *arrays, head_file=tmp_path / "c.keras", child=ChildHere(tmp_path / "job"),
                                       **REPEATED, **HERE)
    assert there.process == "child process"
    np.testing.assert_array_equal(there.proba_test, here.proba_test)
    np.testing.assert_array_equal(there.proba_val, here.proba_val)
    assert there.history == here.history and there.settings == here.settings
    assert len(there.repeats) == 1
    for key in ("seed", "best_epoch", "proba_val", "proba_test"):
        np.testing.assert_array_equal(there.repeats[0][key], here.repeats[0][key])


def test_the_child_answer_without_validation_data(tmp_path):
    """Without x_val there are no validation probabilities, for the head or its repeats, and none come back."""
    proba = np.full((3, 2), 0.5, dtype="float32")
    repeats = [{"seed": 4, "proba_val": None, "proba_test": proba + 0.25, "best_epoch": None}]
    sent = headproc.HeadOutcome({"loss": [0.5]}, [1.0], 1.0, 0.1, {"total": 3}, {"seed": 3}, proba, repeats=repeats)
    headproc._write_outcome(tmp_path, sent)
    back = headproc._read_outcome(tmp_path)
    assert back.proba_val is None and back.repeats[0]["proba_val"] is None
    np.testing.assert_array_equal(back.repeats[0]["proba_test"], proba + 0.25)
    assert (back.history, back.settings, back.repeats[0]["seed"], back.repeats[0]["best_epoch"]) == (
        {"loss": [0.5]}, {"seed": 3}, 4, None)


@pytest.mark.parametrize("seeds", [3, "12", (1, 2.0), [True]])
def test_repeat_seeds_must_be_ints(tmp_path, seeds):
    with pytest.raises(TypeError, match=r"^The 'repeat_seeds' parameter must be a list or tuple of ints\. Got "):
        headproc.train_and_predict("jax", *_arrays(), head_file=tmp_path / "h.keras", repeat_seeds=seeds, **TRAIN)


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
def test_a_child_started_early_is_the_one_the_study_takes(monkeypatch):
    """started_early's child is taken by start_child (same backend and device, "auto" being the CPU); a second
    start_child starts a new one; the block stops what nobody took, and its job folder goes with it."""
    monkeypatch.setattr(headproc, "process_backend", lambda: "tensorflow")
    with headproc.started_early("auto", device="auto"):
        early = headproc._EARLY
        assert early is not None and (early.backend, early.device) == ("jax", "cpu")
        assert headproc.start_child("jax", "cpu") is early
        again = headproc.start_child("jax", "cpu")
        assert again is not early and headproc._EARLY is None
        again.stop()
        early.stop()
    with headproc.started_early("auto", device="cpu"):
        unused = headproc._EARLY
        folder = unused.job_folder()
        assert folder.is_dir()
    assert headproc._EARLY is None and unused.proc.poll() is not None and not folder.exists()


@needs_jax
def test_an_early_child_for_another_device_is_not_taken(monkeypatch):
    """A study that found another device (or trains here) does not take the early child: it is stopped."""
    monkeypatch.setattr(headproc, "process_backend", lambda: "tensorflow")
    with headproc.started_early("jax", device="auto"):
        early = headproc._EARLY
        assert headproc.start_child("tensorflow", "gpu") is None  # the head stays in this process
        other = headproc.start_child("jax", "gpu")
        assert other is not early and early.proc.wait(timeout=30) is not None
        other.stop()


@pytest.mark.parametrize("requested, kwargs", [("auto", {"device": "gpu"}), ("auto", {"train_tail": True}),
                                               ("tensorflow", {}), ("no-such-backend", {})])
def test_nothing_starts_early_where_the_head_trains_here_or_is_refused(on_tensorflow, monkeypatch, requested, kwargs):
    started = []
    monkeypatch.setattr(headproc, "HeadChild", lambda *a, **k: started.append(a))
    with headproc.started_early(requested, **kwargs):
        assert headproc._EARLY is None
    assert started == []


@needs_jax
def test_an_unused_child_exits_cleanly():
    child = headproc.HeadChild("jax")
    child.close()
    assert child.proc.returncode == 0


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


def test_child_environment_has_the_compile_cache(monkeypatch, tmp_path):
    """A jax child gets jax's persistent cache in this processor's folder; the user's own jax folder, or
    XRAYFEAT_COMPILE_CACHE=off, is respected; a TensorFlow child gets none."""
    from xrayfeat.models.compile_cache import cpu_identity

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XRAYFEAT_COMPILE_CACHE", str(tmp_path / "cc"))
    env = headproc._child_env("jax")
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "cc" / cpu_identity())
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert (tmp_path / "cc" / cpu_identity()).is_dir()
    assert "JAX_COMPILATION_CACHE_DIR" not in headproc._child_env("tensorflow")
    monkeypatch.setenv("XRAYFEAT_COMPILE_CACHE", "off")
    assert "JAX_COMPILATION_CACHE_DIR" not in headproc._child_env("jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XRAYFEAT_COMPILE_CACHE", str(tmp_path / "cc"))
    assert headproc._child_env("jax")["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "mine")
