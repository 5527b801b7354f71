"""Shared fixtures: tiny image folders written into tmp_path, the optional real sample."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xrayfeat.devices import release_jax_at_exit

# The workers import Keras, and with it jax, in-process: without this, jax's gc hook can print
# "Exception ignored in: <function _xla_gc_callback ...>" and a traceback after pytest's last line.
release_jax_at_exit()

REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-sample" / "all"


def write_tiny_dataset(root: Path, *, classes=("a", "b"), per_split=(("train", 6), ("test", 3)), size=40, seed=0) -> Path:
    """Folder layout DATA/<split>/<class>/*.png of small noisy images; class b has a bright blob."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_split:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(90, 25, (size, size + 7)).clip(0, 255)
                if k:
                    img[size // 4 : size // 2, size // 4 : size // 2] += 60 * k
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{name}_{split}_{i}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture
def real_sample() -> Path:
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real chest X-ray sample not found at {REAL_SAMPLE} (../shared is absent here)")
    return REAL_SAMPLE


def run_cli(*args, cwd=None, env=None, check=False, timeout=600) -> subprocess.CompletedProcess:
    """Run ``xrayfeat ARGS`` as a user would, in a subprocess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "xrayfeat", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"xrayfeat {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc
