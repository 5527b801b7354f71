"""The small helpers several modules share, each written once: an exception's first line, UTC timestamps,
library versions for provenance, the steady epoch time."""

from __future__ import annotations

import re
import time

import pytest

from xrayfeat.errors import StoreError, first_line
from xrayfeat.provenance import ISO_UTC, library_versions, utc_timestamp


@pytest.mark.parametrize("exc, plain, typed", [
    (ValueError("bad value\nTraceback detail"), "bad value", "ValueError: bad value"),
    (OSError("  \n  disk gone  \nmore"), "disk gone", "OSError: disk gone"),
    (KeyError(), "KeyError", "KeyError"),
    (RuntimeError(""), "RuntimeError", "RuntimeError"),
    (StoreError("x.h5: damaged"), "x.h5: damaged", "StoreError: x.h5: damaged"),
])
def test_first_line_is_one_line_never_empty(exc, plain, typed):
    assert first_line(exc) == plain
    assert first_line(exc, typed=True) == typed


def test_utc_timestamp_is_iso_utc_by_default_and_takes_a_format():
    before = time.gmtime()
    stamp = utc_timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert time.strptime(stamp, ISO_UTC).tm_year == before.tm_year
    assert re.fullmatch(r"\d{8}-\d{6}", utc_timestamp("%Y%m%d-%H%M%S"))
    assert utc_timestamp("%Y-%m-%d %H:%M UTC").endswith(" UTC")


def test_library_versions_reads_metadata_and_leaves_out_or_marks_what_is_missing():
    import numpy

    found = library_versions(("numpy", "no-such-distribution-xrayfeat"))
    assert found == {"numpy": numpy.__version__}
    kept = library_versions(["no-such-distribution-xrayfeat", "numpy"], keep_missing=True)
    assert list(kept) == ["no-such-distribution-xrayfeat", "numpy"] and kept["no-such-distribution-xrayfeat"] is None


@pytest.mark.parametrize("epochs, steady", [([], None), ([3.0], 3.0), ([5.0, 1.0, 2.0], 1.5), ([9.0, 1.0, 2.0, 3.0, 4.0], 2.5)])
def test_steady_epoch_seconds_leaves_the_compiling_first_epoch_out(epochs, steady):
    from xrayfeat.models.head import _step_from_epochs, steady_epoch_seconds

    assert steady_epoch_seconds(epochs) == steady
    step = _step_from_epochs(epochs, 2)
    assert step == steady / 2 if steady is not None else step != step  # nan without epochs


class _Device:
    def __init__(self, platform):
        self.platform = platform


@pytest.mark.parametrize("platform, device", [("cpu", "cpu"), ("gpu", "gpu")])
def test_backend_device_asks_jax_for_its_default_device(monkeypatch, platform, device):
    import jax
    import keras

    from xrayfeat import devices

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(jax, "devices", lambda *a, **k: [_Device(platform)])
    assert devices.backend_device() == device
    assert devices.gpu_available() is (device == "gpu")


def test_backend_device_is_what_gpu_available_says():
    from xrayfeat import devices

    assert devices.backend_device() in ("cpu", "gpu")
    assert devices.gpu_available() is (devices.backend_device() == "gpu")


def test_an_extraction_keeps_the_images_it_did_not_leave_out(tmp_path):
    from xrayfeat.data.datasets import Dataset, Item
    from xrayfeat.extraction.pipeline import ExtractResult

    items = tuple(Item(path=tmp_path / f"{i}.png", relpath=f"{i}.png", label="ab"[i % 2], split="train",
                       patient_id=None, source=None, sha256=f"{i:064x}", nbytes=1) for i in range(4))
    dataset = Dataset(root=tmp_path, items=items, classes=("a", "b"), layout="folders")
    result = ExtractResult(store="s", images=4, extracted=3, reused=0, seconds=0.0, images_per_s=0.0,
                           skipped_reasons={str(tmp_path / "2.png"): "cannot decode", str(tmp_path / "x.png"): "empty"})
    kept = result.kept(dataset)
    assert kept.hashes == [items[0].sha256, items[1].sha256, items[3].sha256]
    assert (kept.root, kept.classes, kept.layout) == (dataset.root, dataset.classes, dataset.layout)
    clean = ExtractResult(store="s", images=4, extracted=4, reused=0, seconds=0.0, images_per_s=0.0)
    assert clean.kept(dataset) is dataset
