#!/usr/bin/env python
"""Extraction efficiency, in one run: decode only, model only, extract cold, extract warm, peak memory.

    python scripts/bench_extract.py --n 1000 --backbone inception_v3
    python scripts/bench_extract.py --n 200 --rss-scale 10 --rss-size 64    # memory at N and 10·N
    python scripts/bench_extract.py --compare-backends --n 128              # the model on TensorFlow vs jax

Phantom PNGs are written first (not timed). Each measurement runs in a fresh
subprocess, as a user would run it, so imports and start-up are counted where a
user pays them:

* decode   — every image decoded to uint8 with the same worker pool and chunking as extract;
* model    — the compiled extractor on pre-decoded uint8 arrays, same batch size (no decoding);
* cold     — ``xrayfeat extract`` into an empty cache;
* warm     — the same command again (everything cached);
* rss      — peak resident memory of ``extract`` (main process and decode workers) at N and at ``--rss-scale``·N images.

Targets (issue 6): cold ≤ 1.1 × (decode + model) on CPU; warm ≤ 5% of cold at
1,000 images; peak RSS at 10,000 ≤ 1.15 × at 1,000.
The last line holds the figures as key=value, ratios first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sh(args, env=None) -> tuple[float, str]:
    started = time.perf_counter()
    args = [str(a) for a in args]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def phantoms(out: Path, n: int, size: int) -> Path:
    """n phantom images (four classes), written once and reused between runs of this script."""
    per_class = max(2, n // 4)
    if not out.exists():
        sh([sys.executable, "-m", "xrayfeat", "phantoms", out, "--task", "four", "--per-class", per_class,
            "--size", size, "--seed", "1"])
    return out


# The pieces below run in child processes (python -c), so each is measured cold, like the CLI.
DECODE = """
import sys, time
from xrayfeat.data.datasets import discover
from xrayfeat.extraction.decoding import decoded, default_workers
ds = discover(sys.argv[1])
paths = [str(i.path) for i in ds.items]
workers = default_workers(len(paths), int(sys.argv[3]))
t = time.perf_counter()
n = sum(1 for a, e in decoded(paths, int(sys.argv[2]), workers) if e is None)
print(n, time.perf_counter() - t)
"""

MODEL = """
import sys, time, numpy as np
from xrayfeat.backbones import get_spec, WeightsInfo, build_extractor
size, batch, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, _ = build_extractor(get_spec(sys.argv[1]), WeightsInfo("none", seed=0), image_size=size)
x = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
t = time.perf_counter()
for _ in range(-(-n // batch)):
    model.predict_on_batch(x)
print(n, time.perf_counter() - t)
"""

# the extractor's steady speed: one batch to compile, then timed batches (for --compare-backends)
MODEL_STEADY = """
import sys, time, numpy as np
from xrayfeat.backbones import get_spec, WeightsInfo, build_extractor
size, batch, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, _ = build_extractor(get_spec(sys.argv[1]), WeightsInfo("none", seed=0), image_size=size)
x = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
model.predict_on_batch(x)
t = time.perf_counter()
for _ in range(-(-n // batch)):
    model.predict_on_batch(x)
print(n, time.perf_counter() - t)
"""

RSS = """
import resource, sys
from xrayfeat.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("RSS", self_kb, child_kb, code)
"""


def compare_backends(args) -> None:
    """The extractor on pre-decoded uint8 batches, steady state, on TensorFlow and on jax: which extracts faster."""
    import statistics

    seconds = {"tensorflow": [], "jax": []}
    for r in range(args.rounds):
        for backend in (("tensorflow", "jax") if r % 2 == 0 else ("jax", "tensorflow")):
            _, out = sh([sys.executable, "-c", MODEL_STEADY, args.backbone, args.size, args.batch, args.n],
                        env={"KERAS_BACKEND": backend})
            seconds[backend].append(float(out.split()[1]))
            print(f"round {r + 1}/{args.rounds} {backend:10s}: {args.n / seconds[backend][-1]:6.1f} img/s", file=sys.stderr)
    tf_s, jax_s = statistics.median(seconds["tensorflow"]), statistics.median(seconds["jax"])
    print(f"{args.backbone} at {args.size} px, batch {args.batch}, random weights, {args.n} images after one "
          f"compiling batch, median of {args.rounds}: TensorFlow {args.n / tf_s:.1f} img/s, jax {args.n / jax_s:.1f} img/s")
    print(f"ratio_jax_vs_tf_seconds={jax_s / tf_s:.3f} tf_img_s={args.n / tf_s:.2f} jax_img_s={args.n / jax_s:.2f} "
          f"n={args.n} backbone={args.backbone} size={args.size} batch={args.batch} rounds={args.rounds}")


def extract_args(data, cache, backbone, size, batch):
    return ["extract", data, "-b", backbone, "--weights", "none", "--image-size", size, "--batch-size", batch,
            "--cache-dir", cache, "--json"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--backbone", default="inception_v3", choices=["vgg16", "inception_v3"])
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--png-size", type=int, default=512, help="phantom PNG size on disk")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rss-scale", type=int, default=10, help="peak RSS at N and at this many times N (0: skip)")
    parser.add_argument("--rss-size", type=int, default=64, help="model input size for the RSS runs (memory, not speed)")
    parser.add_argument("--work", default=None, help="folder for phantoms and caches (default: a temp folder)")
    parser.add_argument("--compare-backends", action="store_true",
                        help="only the model's steady speed on TensorFlow vs jax (child processes, interleaved)")
    parser.add_argument("--rounds", type=int, default=2, help="--compare-backends: interleaved rounds")
    args = parser.parse_args()
    if args.compare_backends:
        compare_backends(args)
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="xrayfeat-bench-"))
    data = phantoms(work / f"phantoms-{args.n}-{args.png_size}", args.n, args.png_size)
    n_images = sum(1 for _ in data.glob("*/*/*.png"))
    py = [sys.executable, "-c"]
    print(f"{n_images} phantom PNGs ({args.png_size} px) in {data}; {args.backbone} at {args.size} px, batch {args.batch}, "
          f"{os.cpu_count()} cores, KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'tensorflow')}")

    decode_wall, out = sh([*py, DECODE, data, args.size, args.batch])
    decode_s = float(out.split()[1])
    model_wall, out = sh([*py, MODEL, args.backbone, args.size, args.batch, n_images])
    model_s = float(out.split()[1])
    cache = work / f"cache-{time.time_ns()}"
    cold_s, out = sh([sys.executable, "-m", "xrayfeat", *extract_args(data, cache, args.backbone, args.size, args.batch)])
    assert json.loads(out)["extracted"] == n_images
    warm_s, out = sh([sys.executable, "-m", "xrayfeat", *extract_args(data, cache, args.backbone, args.size, args.batch)])
    assert json.loads(out)["extracted"] == 0

    rows = [
        ("decode only (pool, in-loop time)", decode_s, decode_wall),
        ("model only (in-loop time)", model_s, model_wall),
        ("extract cold (whole command)", cold_s, cold_s),
        ("extract warm (whole command)", warm_s, warm_s),
    ]
    print(f"\n{'measurement':36} {'seconds':>9} {'process wall':>13} {'img/s':>8}")
    for name, s, wall in rows:
        print(f"{name:36} {s:9.2f} {wall:13.2f} {n_images / s:8.1f}")
    # the whole command vs the two stages measured inside their loops, plus their start-up as a user pays it
    ratio_cold = cold_s / (decode_wall + model_wall)
    ratio_cold_loops = cold_s / (decode_s + model_s)
    ratio_warm = warm_s / cold_s
    figures = {"ratio_cold_vs_decode_plus_model": ratio_cold, "ratio_cold_vs_loops": ratio_cold_loops,
               "ratio_warm_vs_cold": ratio_warm}

    if args.rss_scale:
        peaks = {}
        for scale in (1, args.rss_scale):
            n = n_images * scale
            rdata = phantoms(work / f"phantoms-{n}-128", n, 128)
            rcache = work / f"rss-cache-{scale}-{time.time_ns()}"
            _, out = sh([*py, RSS, *extract_args(rdata, rcache, args.backbone, args.rss_size, args.batch)])
            line = [ln for ln in out.splitlines() if ln.startswith("RSS")][0].split()
            peaks[scale] = (int(line[1]) / 1024, int(line[2]) / 1024)
            print(f"peak RSS at {n:6} images ({args.rss_size} px): main {peaks[scale][0]:7.1f} MiB, largest decode worker {peaks[scale][1]:6.1f} MiB")
        figures["ratio_rss"] = peaks[args.rss_scale][0] / peaks[1][0]
        figures["rss_mib_n"] = peaks[1][0]
        figures[f"rss_mib_{args.rss_scale}n"] = peaks[args.rss_scale][0]

    figures.update({"n": n_images, "decode_s": decode_s, "model_s": model_s, "decode_wall_s": decode_wall,
                    "model_wall_s": model_wall, "cold_s": cold_s, "warm_s": warm_s})
    print()
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
