#!/usr/bin/env python
"""``xrayfeat predict`` on new images: its cost against a cold ``extract`` of them plus the head's inference.

    python scripts/bench_predict.py --n 1000                 # the issue's figure: 1,000 new images
    python scripts/bench_predict.py --n 200 --backbone vgg16 # a quick look

Steps, all in one run on the same images and machine:

1. a small run is trained (``fit-head`` on 40 phantom X-rays, random weights,
   the head and the logistic-regression and pixels baselines);
2. ``N`` new phantom X-rays are written;
3. **extract cold**: ``xrayfeat extract`` of the N images into an empty cache
   (the subprocess a user would run, start-up included);
4. **head inference**: the run's head loaded and applied to the N cached spatial
   maps, in-process, as predict runs it (numpy for the plain seed head);
5. **predict cold**: ``xrayfeat predict RUN NEW`` into another empty cache
   (extraction + every model + the CSV);
6. **predict warm**: the same command again, every feature now cached.

Printed ratios: ``ratio_cold`` = predict cold / (extract cold + head inference)
(target at most 1.1) and ``warm_s`` (target at most 10 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cli(*args) -> float:
    """Run ``xrayfeat ARGS`` as a user would; its wall time in seconds."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xrayfeat", *map(str, args)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"xrayfeat {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="new images to predict")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--png-size", type=int, default=256, help="size of the phantom PNGs")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    import xrayfeat as xf

    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    features = ["--weights", "none", "--image-size", args.image_size]
    try:
        xf.write_phantoms(work / "train", task="four", per_class=10, size=args.png_size, seed=0)
        cli("fit-head", work / "train", "-b", args.backbone, *features, "--epochs", 2, "--baselines", "logreg,pixels",
            "--n-bootstrap", 50, "--cache-dir", work / "cache-run", "--out", work / "run")
        per_class = -(-args.n // 4)
        xf.write_phantoms(work / "new", task="four", per_class=per_class, size=args.png_size, seed=1)
        for extra in sorted((work / "new").rglob("*.png"))[args.n:]:
            extra.unlink()
        (work / "new" / "manifest.csv").unlink()
        n = sum(1 for _ in (work / "new").rglob("*.png"))

        extract_s = cli("extract", work / "new", "-b", args.backbone, *features, "--cache-dir", work / "cache-extract")
        run = xf.load_run(work / "run")
        spatial, _, _ = xf.features(work / "new", args.backbone, part="spatial", weights="none",
                                    image_size=args.image_size, cache_dir=work / "cache-extract")
        start = time.perf_counter()
        head = run.head_arrays() or run.head()  # what predict runs: the numpy head, or Keras for a head with a tail
        proba = head.predict_proba(spatial)
        head_s = time.perf_counter() - start
        assert proba.shape == (n, 4)

        shutil.copytree(work / "cache-run", work / "cache-predict")  # the run's cache, without the new images
        out = work / "predictions.csv"
        cold_s = cli("predict", work / "run", work / "new", "--out", out, "--cache-dir", work / "cache-predict")
        warm_s = cli("predict", work / "run", work / "new", "--out", out, "--cache-dir", work / "cache-predict")
        rows = sum(1 for _ in open(out)) - 1
        assert rows == n, (rows, n)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    ratio = cold_s / (extract_s + head_s)
    print(f"{'step':28} {'seconds':>9}")
    print(f"{'extract cold (CLI)':28} {extract_s:9.1f}")
    print(f"{'head inference (in-process)':28} {head_s:9.2f}")
    print(f"{'predict cold (CLI)':28} {cold_s:9.1f}")
    print(f"{'predict warm (CLI)':28} {warm_s:9.1f}")
    print(f"{n} images, {args.backbone} at {args.image_size} px, {os.cpu_count()} cores")
    print(f"ratio_cold={ratio:.3f} warm_s={warm_s:.1f} cold_s={cold_s:.1f} extract_s={extract_s:.1f} "
          f"head_s={head_s:.2f} n={n}")


if __name__ == "__main__":
    main()
