#!/usr/bin/env python
"""What the short-pixel-data check costs PNG decoding: ``read_image`` with and without it, in one run.

    python scripts/bench_decode_checks.py              # 2048² noise and a 1024² phantom X-ray, 20 decodes each

The check (``xrayfeat.data.images``: a PNG whose pixel data inflates to fewer
bytes than its header declares is refused, never decoded to black) inflates the
IDAT chunks once, counting bytes, before Pillow inflates them again to decode.
Both timings decode the same file to 224 px in this process; the ratio is
with / without. Noise compresses worst (most inflating per pixel), a smooth
phantom X-ray as real radiographs do.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xrayfeat.data import images
from xrayfeat.data.phantoms import write_phantoms


def timed(path: Path, repeats: int) -> float:
    images.read_image(str(path), 224)  # warm: file cache, imports
    start = time.perf_counter()
    for _ in range(repeats):
        images.read_image(str(path), 224)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        noise = root / "noise.png"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.normal(120, 30, (2048, 2048)).clip(0, 255).astype(np.uint8)).save(noise)
        write_phantoms(root / "phantoms", task="binary", per_class=2, size=1024, seed=0)
        phantom = sorted((root / "phantoms").rglob("*.png"))[0]
        checked = images._check_png_data
        for name, path in (("noise 2048x2048", noise), ("phantom 1024x1024", phantom)):
            images._check_png_data = checked
            with_check = timed(path, args.repeats)
            images._check_png_data = lambda *a, **k: None  # the check left out, everything else the same
            without = timed(path, args.repeats)
            images._check_png_data = checked
            print(f"{name}: {path.stat().st_size:,} bytes; with the check {with_check * 1e3:.1f} ms, "
                  f"without {without * 1e3:.1f} ms; ratio {with_check / without:.2f}")


if __name__ == "__main__":
    main()
