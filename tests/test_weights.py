"""ImageNet weights: downloading (md5-checked, atomic), mirrors, offline mode, and their one-line errors.

Everything is served by a local HTTP server on 127.0.0.1 from files the tests write;
the real internet is never touched (``XRAYFEAT_WEIGHTS_URL`` or ``--base-url`` always
points at the local server, or offline mode is on).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_tiny_dataset
from xrayfeat import backbones, errors
from xrayfeat.extraction import building, weights
from xrayfeat.cli.main import main

VGG = backbones.REGISTRY["vgg16"]
INCEPTION = backbones.REGISTRY["inception_v3"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def md5_of(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def expect(monkeypatch, spec, path):
    """Make ``path`` the published file of ``spec`` (the real hash belongs to the real ImageNet file).

    By the hash Keras declares for it: the md5, or the sha256 (ConvNeXt).
    """
    if spec.weights_sha256:
        import dataclasses

        changed = dataclasses.replace(spec, weights_sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest())
    else:
        changed = backbones.replace_md5(spec, md5_of(path))
    monkeypatch.setitem(backbones.REGISTRY, spec.name, changed)


def one_line(stderr: str) -> str:
    """The one ``xrayfeat:`` line of ``stderr`` (a progress bar may precede it; it never says error)."""
    lines = [line for line in stderr.splitlines() if line.startswith("xrayfeat:")]
    assert len(lines) == 1, stderr
    assert "error" not in stderr.replace(lines[0], ""), stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/short/"):  # promises more bytes than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            return
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``server.folder``; ``server.requests`` lists the paths asked for."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
    httpd.requests = []
    httpd.folder = folder
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh KERAS_HOME, online, no mirror, no proxy in the way of 127.0.0.1."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    for name in ("XRAYFEAT_OFFLINE", "XRAYFEAT_WEIGHTS_URL", "http_proxy", "https_proxy", "HTTP_PROXY",
                 "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "keras_home" / "models"


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A real, loadable VGG16 no-top weight file (random weights, Keras' legacy HDF5 format), and its weights."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    path = tmp_path_factory.mktemp("weights") / VGG.weights_file
    keras.utils.set_random_seed(7)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path, model.get_weights()


def serve_small(server, spec, monkeypatch, payload=None) -> Path:
    """A small stand-in for ``spec``'s weight file on the server, expected by md5."""
    path = server.folder / spec.weights_file
    path.write_bytes(payload or os.urandom(50_000))
    expect(monkeypatch, spec, path)
    return path


# --------------------------------------------------------------------------- a good download


def test_imagenet_downloads_verifies_and_loads(server, vgg_weights, isolated, monkeypatch, tmp_path):
    source, original = vgg_weights
    (server.folder / VGG.weights_file).write_bytes(source.read_bytes())
    expect(monkeypatch, VGG, source)
    monkeypatch.setenv("XRAYFEAT_WEIGHTS_URL", server.url + "/")  # a trailing slash is fine
    data = write_tiny_dataset(tmp_path / "data", per_split=(("train", 2), ("test", 1)))

    args = ["extract", data, "-b", "vgg16", "--weights", "imagenet", "--image-size", 32,
            "--cache-dir", tmp_path / "cache", "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["random_weights"] is False
    assert server.requests == [f"/{VGG.weights_file}"]
    target = isolated / VGG.weights_file
    assert md5_of(target) == md5_of(source) and leftovers(isolated) == [VGG.weights_file]

    info = weights.resolve_weights(backbones.REGISTRY["vgg16"], "imagenet")
    assert (info.kind, info.path, info.md5) == ("imagenet", str(target), md5_of(source))
    loaded = building.build_backbone(backbones.REGISTRY["vgg16"], info, 32)
    for a, b in zip(original, loaded.get_weights()):
        np.testing.assert_array_equal(a, b)

    again = invoke(*args)  # installed now: no second download
    assert again.exit_code == 0 and json.loads(again.stdout)["reused"] == 6
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- failures: one line, nothing left


def test_wrong_md5_is_deleted_and_refused(server, isolated, monkeypatch):
    served = serve_small(server, VGG, monkeypatch)
    served.write_bytes(b"tampered" + served.read_bytes()[8:])
    monkeypatch.setenv("XRAYFEAT_WEIGHTS_URL", server.url)
    with pytest.raises(weights.WeightsDownloadError) as caught:
        weights.resolve_weights(backbones.REGISTRY["vgg16"], "imagenet")
    message = str(caught.value)
    assert "\n" not in message and f"{server.url}/{VGG.weights_file}" in message
    assert f"md5 {md5_of(served)} is not the expected" in message and "deleted" in message
    assert "xrayfeat weights install FILE" in message
    assert leftovers(isolated) == []  # no temporary, nothing under the final name

    result = invoke("weights", "download", "vgg16")
    assert result.exit_code == 1 and one_line(result.stderr).startswith("xrayfeat: error: could not download")
    assert leftovers(isolated) == []


@pytest.mark.parametrize("where,reason", [
    ("dead", "Connection refused"),
    ("missing", "HTTP 404"),
    ("short", "closed after 1,000 of 100,000 bytes"),
])
def test_a_failed_download_is_one_line_naming_url_reason_and_fix(server, dead_url, isolated, monkeypatch,
                                                                  where, reason):
    base = {"dead": dead_url, "missing": server.url + "/nothing-here", "short": server.url + "/short"}[where]
    monkeypatch.setenv("XRAYFEAT_WEIGHTS_URL", base)
    result = invoke("weights", "download", "vgg16")
    assert result.exit_code == 1 and result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith("xrayfeat: error: could not download vgg16 ImageNet weights from ")
    assert f"{base}/{VGG.weights_file}" in line and reason in line
    assert "xrayfeat weights install FILE" in line
    assert leftovers(isolated) == []


def test_a_silent_server_times_out(isolated):
    with socket.socket() as listener:  # accepts connections (the kernel does) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(weights.WeightsDownloadError, match=r"no answer within 0\.3 s \(timed out\)"):
            weights.download_weights(VGG, base_url=base, timeout=0.3, progress=False)
    assert leftovers(isolated) == []


def test_a_bad_base_url_says_what_is_expected(monkeypatch):
    monkeypatch.setenv("XRAYFEAT_WEIGHTS_URL", "mirror.example.org/weights")
    result = invoke("weights", "download", "vgg16")
    assert result.exit_code == 2
    assert "XRAYFEAT_WEIGHTS_URL 'mirror.example.org/weights' is not a URL" in one_line(result.stderr)


# --------------------------------------------------------------------------- offline


def test_offline_flag_never_connects_and_says_how_to_fix(server, isolated, monkeypatch, tmp_path):
    serve_small(server, VGG, monkeypatch)
    monkeypatch.setenv("XRAYFEAT_WEIGHTS_URL", server.url)
    monkeypatch.setenv("XRAYFEAT_OFFLINE", "0")  # --offline sets it to 1; monkeypatch restores it after
    data = write_tiny_dataset(tmp_path / "data", per_split=(("train", 1),))
    result = invoke("--offline", "extract", data, "-b", "vgg16", "--weights", "imagenet",
                    "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2
    line = one_line(result.stderr)
    assert str(isolated / VGG.weights_file) in line and f"{server.url}/{VGG.weights_file}" in line
    assert "xrayfeat weights install FILE" in line and "offline" in line
    assert server.requests == [] and leftovers(isolated) == []


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_env_var_never_connects(server, isolated, monkeypatch, value):
    serve_small(server, VGG, monkeypatch)
    monkeypatch.setenv("XRAYFEAT_OFFLINE", value)
    result = invoke("weights", "download", "--base-url", server.url, "vgg16")
    assert result.exit_code == 2 and "XRAYFEAT_OFFLINE" in one_line(result.stderr)
    with pytest.raises(errors.WeightsError, match="xrayfeat weights install FILE"):
        weights.resolve_weights(backbones.REGISTRY["vgg16"], "imagenet")
    assert server.requests == [] and leftovers(isolated) == []


def test_offline_env_var_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("XRAYFEAT_OFFLINE", "1")
    assert weights.offline()
    monkeypatch.setenv("XRAYFEAT_OFFLINE", "0")
    assert not weights.offline()
    monkeypatch.setenv("XRAYFEAT_OFFLINE", "maybe")
    with pytest.raises(errors.WeightsError, match="XRAYFEAT_OFFLINE='maybe' is not understood"):
        weights.offline()


# --------------------------------------------------------------------------- weights download / status


def test_weights_download_base_url_fetches_all_then_keeps_them(server, isolated, monkeypatch):
    served = {spec.name: serve_small(server, spec, monkeypatch) for spec in list(backbones.REGISTRY.values())}
    monkeypatch.setenv("XRAYFEAT_WEIGHTS_URL", "http://127.0.0.1:9/never-used")  # --base-url wins

    result = invoke("weights", "download", "--base-url", server.url, "--json")
    assert result.exit_code == 0, result.output
    rows = {r["backbone"]: r for r in json.loads(result.stdout)["weights"]}
    assert set(rows) == set(backbones.REGISTRY)  # no backbone named: every one (convnext_tiny checked by sha256)
    for name, path in served.items():
        assert rows[name]["action"] == "downloaded" and rows[name]["url"] == f"{server.url}/{path.name}"
        assert Path(rows[name]["file"]) == isolated / path.name and md5_of(isolated / path.name) == md5_of(path)
    assert sorted(server.requests) == sorted(f"/{p.name}" for p in served.values())

    again = invoke("weights", "download", "--base-url", server.url, "vgg16")
    assert again.exit_code == 0 and again.stdout.split()[:2] == ["vgg16", "ok"]
    assert len(server.requests) == len(served)  # already there and verified: not fetched again
    status = {r["backbone"]: r for r in weights.weights_status()}
    assert all(r["verified"] for r in status.values())
    assert status["convnext_tiny"]["expected_md5"] is None and status["convnext_tiny"]["expected_sha256"]


def test_weights_download_replaces_a_damaged_file(server, isolated, monkeypatch):
    served = serve_small(server, VGG, monkeypatch)
    isolated.mkdir(parents=True)
    (isolated / VGG.weights_file).write_bytes(b"damaged")
    with pytest.raises(errors.WeightsError, match="replace it with `xrayfeat weights download vgg16`"):
        weights.resolve_weights(backbones.REGISTRY["vgg16"], "imagenet")
    result = invoke("weights", "download", "--base-url", server.url, "vgg16")
    assert result.exit_code == 0, result.output
    assert md5_of(isolated / VGG.weights_file) == md5_of(served)


def test_weights_status_before_and_after_a_download(server, isolated, monkeypatch):
    serve_small(server, VGG, monkeypatch)
    before = invoke("weights", "status")
    assert before.exit_code == 0
    lines = before.stdout.splitlines()
    assert lines[0].split()[:2] == ["vgg16", "missing"] and lines[1].split()[:2] == ["inception_v3", "missing"]
    assert "xrayfeat weights download" in lines[-1] and "xrayfeat weights install FILE" in lines[-1]

    assert invoke("weights", "download", "--base-url", server.url, "vgg16").exit_code == 0
    rows = {r["backbone"]: r for r in json.loads(invoke("weights", "status", "--json").stdout)["weights"]}
    assert rows["vgg16"]["verified"] and not rows["inception_v3"]["present"]


def test_weights_download_rejects_an_unknown_backbone(server):
    result = invoke("weights", "download", "--base-url", server.url, "alexnet")
    assert result.exit_code == 2 and "alexnet" in result.output and server.requests == []


def test_importing_backbones_loads_no_framework():
    code = ("import sys, xrayfeat.backbones; "
            "sys.exit(' '.join(sorted({'keras', 'tensorflow', 'urllib.request'} & set(sys.modules))) or None)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
