"""A backbone's weights: resolve (imagenet, none or a file), check (md5), install, download.

Each ImageNet file is checked against the hash Keras declares for it: an md5, or a
sha256 for ConvNeXt (:attr:`~xrayfeat.backbones.BackboneSpec.weights_hash`); the
identity in the fingerprint is always the file's md5.

``resolve_weights`` turns ``--weights`` into a :class:`WeightsInfo` whose ``identity``
goes into the feature fingerprint. ImageNet weights are Keras' own files, found in
``$KERAS_HOME/models``; ``download_weights`` fetches one over HTTP(S) (or from a
mirror named by ``XRAYFEAT_WEIGHTS_URL``) into a temporary file, checks its md5
and renames it into place, so a failed or tampered download never lands.
``XRAYFEAT_OFFLINE=1`` never touches the network. Nothing here imports Keras.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from xrayfeat.backbones import REGISTRY, BackboneSpec, get_spec
from xrayfeat.errors import WeightsError
from xrayfeat.fileio import atomic_path, file_digest, writing_to

log = logging.getLogger(__name__)

_DIGESTS_SEEN: dict[tuple, str] = {}  # (algorithm, path, size, mtime_ns, inode) -> hex digest, for this process


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a backbone carries. ``identity`` goes into the feature fingerprint."""

    kind: str  # "imagenet", "none", "file", or "imported" (no backbone: features computed elsewhere, cache import)
    path: str | None = None
    md5: str | None = None
    seed: int | None = None
    sha256: str | None = None  # "imported": the imported file's

    @property
    def identity(self) -> str:
        if self.kind == "none":
            return f"none:seed={self.seed}"
        if self.kind == "imported":
            return f"imported:sha256={self.sha256}"
        return f"{self.kind}:md5={self.md5}"

    @property
    def random(self) -> bool:
        return self.kind == "none"

    def describe(self) -> str:
        if self.random:
            return f"RANDOM weights (seed {self.seed}): features carry no ImageNet knowledge"
        if self.kind == "imported":
            return f"no backbone: features imported from {self.path} (sha256 {self.sha256})"
        return f"{self.kind} weights {self.path} (md5 {self.md5})"


def keras_home() -> Path:
    """Keras' own cache folder: ``$KERAS_HOME`` or ``~/.keras``."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def weights_dir() -> Path:
    return keras_home() / "models"


def _seen_key(algorithm: str, path) -> tuple:
    st = os.stat(path)
    return (algorithm, os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ino)


def file_hash(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """A file's md5 (or sha256); remembered per file version, since one command resolves weights several times."""
    key = _seen_key(algorithm, path)
    if key not in _DIGESTS_SEEN:
        _DIGESTS_SEEN[key] = file_digest(path, algorithm)
    return _DIGESTS_SEEN[key]


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file: what the weights' identity in the fingerprint names."""
    return file_hash(path, "md5")


def verifies(path: str | os.PathLike, spec: BackboneSpec) -> bool:
    """Whether the file at ``path`` has the hash Keras declares for ``spec``'s ImageNet weights (md5 or sha256)."""
    algorithm, expected = spec.weights_hash
    return file_hash(path, algorithm) == expected


def _expected(spec: BackboneSpec) -> str:
    algorithm, expected = spec.weights_hash
    return f"{algorithm} {expected}"


def resolve_weights(spec: BackboneSpec, weights: str, seed: int = 0) -> WeightsInfo:
    """Turn ``--weights imagenet|none|FILE`` into a checked :class:`WeightsInfo`.

    ``imagenet`` is read from ``$KERAS_HOME/models``; when the file is absent it is
    downloaded there (md5-checked, see :func:`download_weights`) unless offline mode
    is on. This tool never falls back to random weights on its own, because features
    from random weights look like features and quietly change every result.
    """
    if weights == "none":
        return WeightsInfo("none", seed=int(seed))
    if weights == "imagenet":
        path = weights_dir() / spec.weights_file
        if not path.is_file():
            path = download_weights(spec)
        if not verifies(path, spec):
            algorithm, _ = spec.weights_hash
            raise WeightsError(
                f"{path}: {algorithm} {file_hash(path, algorithm)} is not the expected {_expected(spec)} for {spec.name}; "
                f"the file is damaged or another version: replace it with `xrayfeat weights download {spec.name}` "
                f"or `xrayfeat weights install FILE`"
            )
        return WeightsInfo("imagenet", path=str(path), md5=file_md5(path))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"--weights {weights!r}: no such file; pass imagenet, none or the path of a weights file"
        )
    return WeightsInfo("file", path=str(path.resolve()), md5=file_md5(path))


def weights_status() -> list[dict]:
    """What ImageNet weight files are installed, and whether their md5 (ConvNeXt: sha256) checks out."""
    rows = []
    for spec in REGISTRY.values():
        path = weights_dir() / spec.weights_file
        present = path.is_file()
        md5 = file_md5(path) if present else None
        rows.append(
            {
                "backbone": spec.name,
                "file": str(path),
                "present": present,
                "verified": present and verifies(path, spec),
                "md5": md5,
                "expected_md5": spec.weights_md5 or None,
                "expected_sha256": spec.weights_sha256 or None,
            }
        )
    return rows


def install_weights(source: str | os.PathLike) -> dict:
    """Copy a downloaded ImageNet weight file into ``$KERAS_HOME/models`` after checking its md5.

    The file is recognised by its md5 (or sha256, where Keras declares that) alone (names of downloads vary); the copy is
    written beside its destination and renamed, so a half-copied file never sits
    under the final name.
    """
    source = Path(source)
    if not source.is_file():
        raise WeightsError(f"{source}: no such file; pass the path of a downloaded weight file")
    md5 = file_md5(source)
    matches = [s for s in REGISTRY.values() if verifies(source, s)]
    if not matches:
        known = "; ".join(f"{s.weights_file} {_expected(s)}" for s in REGISTRY.values())
        raise WeightsError(f"{source}: md5 {md5} matches no known weight file (expected one of: {known})")
    spec = matches[0]
    target = weights_dir() / spec.weights_file
    with writing_to(target.parent, option="KERAS_HOME"):
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return {"backbone": spec.name, "file": str(target), "md5": md5}


OFFLINE_ENV = "XRAYFEAT_OFFLINE"  # 1: never touch the network (the CLI's --offline sets it)


WEIGHTS_URL_ENV = "XRAYFEAT_WEIGHTS_URL"  # a folder URL (mirror) holding the weight files


DOWNLOAD_TIMEOUT_S = 60.0  # for connecting and for each read: a stalled server fails, a slow one does not


_URL_SCHEMES = ("http", "https", "file")


_FALSE = ("", "0", "false", "no", "off")


_TRUE = ("1", "true", "yes", "on")


class WeightsDownloadError(WeightsError):
    """A weight file could not be fetched (network, server, wrong md5): not bad input, so exit 1."""

    exit_code = 1


class _Failed(Exception):
    """Why one download failed, in a few words; :func:`download_weights` adds the URL and the fix."""


def offline() -> bool:
    """``XRAYFEAT_OFFLINE``, read at call time: true means nothing may be downloaded."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise WeightsError(f"{OFFLINE_ENV}={value!r} is not understood: set it to 1 (never download) or 0")


def download_url(spec: BackboneSpec, base_url: str | None = None) -> str:
    """Where ``spec``'s weight file is downloaded from.

    The base is ``base_url`` (``--base-url``), else ``$XRAYFEAT_WEIGHTS_URL``, else
    the official Keras applications folder of that backbone; the spec's
    ``weights_file`` is appended, so a mirror is one flat folder with both files.
    """
    import urllib.parse

    if base_url:
        base, origin = base_url, "--base-url"
    elif os.environ.get(WEIGHTS_URL_ENV):
        base, origin = os.environ[WEIGHTS_URL_ENV], WEIGHTS_URL_ENV
    else:
        return spec.weights_url
    if urllib.parse.urlsplit(base).scheme.lower() not in _URL_SCHEMES:
        raise WeightsError(
            f"{origin} {base!r} is not a URL: use an http://, https:// or file:// folder URL"
        )
    return f"{base.rstrip('/')}/{urllib.parse.quote(spec.weights_file)}"


def download_weights(
    spec: BackboneSpec,
    *,
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download ``spec``'s ImageNet weight file into ``$KERAS_HOME/models`` and check its md5.

    A progress bar goes to stderr. The bytes go to a temporary file beside the
    target and are renamed into place only once the md5 matches, so a failed,
    interrupted or wrong download never sits under the final name (a wrong one is
    deleted). Any failure is one :class:`WeightsDownloadError` line naming the URL,
    the reason and the fix; in offline mode a :class:`WeightsError` is raised
    before any connection is opened. An existing file is replaced.
    """
    url = download_url(spec, base_url)
    target = weights_dir() / spec.weights_file
    if offline():
        raise WeightsError(
            f"ImageNet weights for {spec.name} not found: {target} is missing and offline mode "
            f"(--offline or {OFFLINE_ENV}=1) forbids downloading {url}; fetch that file on a connected "
            f"machine and run `xrayfeat weights install FILE`, or unset offline mode, "
            f"or pass --weights none for random weights"
        )
    log.info("downloading %s ImageNet weights from %s into %s", spec.name, url, target)
    try:
        with writing_to(target.parent, option="KERAS_HOME"):
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                digests = _fetch(url, tmp, timeout=timeout, label=f"{spec.name} weights" if progress else None)
                algorithm, expected = spec.weights_hash
                if digests[algorithm] != expected:
                    raise _Failed(f"{algorithm} {digests[algorithm]} is not the expected {expected}, "
                                  f"so the file was deleted")
    except _Failed as exc:
        raise WeightsDownloadError(
            f"could not download {spec.name} ImageNet weights from {url}: {exc}; check the network "
            f"or set {WEIGHTS_URL_ENV} to a mirror, or get {spec.weights_file} another way and run "
            f"`xrayfeat weights install FILE`"
        ) from None
    except OSError as exc:  # the network's errors became _Failed: this one is local (permissions, disk full)
        raise WeightsDownloadError(
            f"cannot write {target}: {exc.strerror or exc}; free some space or set KERAS_HOME to a writable folder"
        ) from None
    for algorithm, digest in digests.items():  # no second read of the file
        _DIGESTS_SEEN[_seen_key(algorithm, target)] = digest
    log.info("%s: %s verified", target, _expected(spec))
    return target


def ensure_weights(
    backbones: list[str] | tuple[str, ...] | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Make sure the ImageNet weight files of ``backbones`` (default: all) are installed and verified.

    Files already present with the right md5 are kept; missing or wrong ones are
    downloaded (:func:`download_weights`). Names are checked before anything is fetched.
    """
    specs = [get_spec(name) for name in dict.fromkeys(backbones or REGISTRY)]
    rows = []
    for spec in specs:
        path = weights_dir() / spec.weights_file
        if path.is_file() and verifies(path, spec):
            action, url = "present", None
        else:
            url = download_url(spec, base_url)
            path = download_weights(spec, base_url=base_url, progress=progress)
            action = "downloaded"
        rows.append({"backbone": spec.name, "file": str(path), "md5": file_md5(path),
                     "action": action, "url": url})
    return rows


def _fetch(url: str, dest: Path, *, timeout: float, label: str | None) -> dict[str, str]:
    """Stream ``url`` into ``dest``; return the md5 and sha256 of the bytes. Network failures raise :class:`_Failed`."""
    import http.client
    import urllib.error
    import urllib.request

    from xrayfeat import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"xrayfeat/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _Failed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Failed(_reason(exc.reason, timeout)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Failed(_reason(exc, timeout)) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.strip().isdigit() else None
        digests = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
        done = 0
        with open(dest, "wb") as out, _download_progress(label, total) as advance:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Failed(f"{_reason(exc, timeout)} after {done:,} bytes") from None
                if not chunk:
                    break
                out.write(chunk)
                for digest in digests.values():
                    digest.update(chunk)
                done += len(chunk)
                advance(len(chunk))
    if total is not None and done != total:
        raise _Failed(f"the connection closed after {done:,} of {total:,} bytes")
    return {algorithm: digest.hexdigest() for algorithm, digest in digests.items()}


def _reason(exc, timeout: float) -> str:
    """An exception (or URLError's reason) as a few words on one line."""
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return f"no answer within {timeout:g} s (timed out)"
    if isinstance(exc, BaseException) and not str(exc):
        return type(exc).__name__
    return " ".join(str(exc).split())


@contextlib.contextmanager
def _download_progress(label: str | None, total: int | None):
    """Yield ``advance(n_bytes)``: a rich progress bar on stderr, or nothing when ``label`` is None."""
    if label is None:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    # narrow enough for one 80-column line: where stderr is no terminal, rich prints the final state once
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, advance=n)
