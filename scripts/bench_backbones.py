"""Benchmark: every backbone of the registry, extraction images/s and the seed head's ms/step, against VGG16.

For each backbone, in one process and one run:

* **extraction**: xrayfeat's extractor (uint8 pixels → preprocessing → backbone → spatial map and its
  average; random weights, float32) on a batch of phantom X-rays decoded at 224 px, as ``extract`` feeds it
  (``predict_on_batch``); warm: the first call (tracing) is left out, the figure is the median of the
  timed calls, in images per second. Decoding is not included (it is the same for every backbone).
* **head**: the seed's head (BatchNormalization → Flatten → Dense(256) → Dropout → Dense(K)) trained by
  ``heads.train_head`` on random features of that backbone's spatial shape at 224 px, batch 10, 10 steps
  per epoch; the median step time after the first (compiling) epoch, in ms.

    python scripts/bench_backbones.py                     # all backbones, 8 images, 3 timed batches
    python scripts/bench_backbones.py -b vgg16,resnet50 --images 16

The last line holds the key=value figures, ratios to VGG16 first (above 1: faster extraction, slower head).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _pixels(n: int, size: int):
    """``n`` phantom X-rays, decoded as extraction decodes them (uint8 RGB, ``size`` px)."""
    import numpy as np

    from xrayfeat.data.images import read_image
    from xrayfeat.data.phantoms import write_phantoms

    with tempfile.TemporaryDirectory() as tmp:
        write_phantoms(Path(tmp), task="four", per_class=max(2, -(-n // 4)), size=256, seed=0)
        paths = sorted(p for p in Path(tmp).rglob("*.png"))[:n]
        return np.stack([read_image(p, size) for p in paths])


def _extraction(name: str, pixels, batches: int) -> dict:
    import numpy as np

    from xrayfeat.backbones import get_spec
    from xrayfeat.extraction.building import build_extractor
    from xrayfeat.extraction.weights import WeightsInfo

    spec = get_spec(name)
    started = time.perf_counter()
    model, backbone = build_extractor(spec, WeightsInfo("none", seed=0), image_size=pixels.shape[1])
    built = time.perf_counter()
    spatial, _ = model.predict_on_batch(pixels)  # traces: not timed
    first = time.perf_counter()
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        model.predict_on_batch(pixels)
        times.append(time.perf_counter() - t)
    return {"img_s": len(pixels) / statistics.median(times), "build_s": built - started, "first_s": first - built,
            "shape": tuple(np.asarray(spatial).shape[1:]), "params": backbone.count_params()}


def _head(shape, classes: int, epochs: int) -> dict:
    import numpy as np

    from xrayfeat.models import head as heads

    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, *shape), dtype="float32")
    y = rng.integers(0, classes, len(x))
    timing = heads._timing_callback()
    heads.train_head(x, y, n_classes=classes, epochs=epochs, batch_size=10, steps_per_epoch=10, seed=0,
                     callbacks=[timing], step_timing=True)
    return {"ms": timing.mean_step() * 1e3, "params": heads.count_params(heads.build_head(shape, classes))["total"]}


def main(argv=None) -> int:
    from xrayfeat.backbones import REGISTRY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--backbones", default=",".join(REGISTRY),
                        help="comma-separated backbones (default: every one); vgg16 is added as the reference")
    parser.add_argument("--images", type=int, default=8, help="images per batch (phantoms)")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per backbone (after one untimed)")
    parser.add_argument("--classes", type=int, default=4, help="classes of the head")
    parser.add_argument("--epochs", type=int, default=3, help="head epochs (the first is not timed)")
    args = parser.parse_args(argv)
    names = list(dict.fromkeys(["vgg16", *(b.strip() for b in args.backbones.split(",") if b.strip())]))
    unknown = [b for b in names if b not in REGISTRY]
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}: choose from {', '.join(REGISTRY)}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch compiles and is not timed")

    import keras

    start = time.perf_counter()
    pixels = _pixels(args.images, args.size)
    rows = {}
    for name in names:
        ext = _extraction(name, pixels, args.batches)
        head = _head(ext["shape"], args.classes, args.epochs)
        rows[name] = {**ext, "head_ms": head["ms"], "head_params": head["params"]}
        print(f"{name:16s} {ext['img_s']:7.2f} img/s  head {head['ms']:7.1f} ms/step  "
              f"(build {ext['build_s']:.1f} s, first batch {ext['first_s']:.1f} s)", file=sys.stderr, flush=True)

    ref = rows["vgg16"]
    print(f"\n{args.images} phantom X-rays at {args.size} px, random weights, float32, backend "
          f"{keras.backend.backend()}; head: {args.classes} classes, batch 10; ratios to vgg16")
    print(f"{'backbone':16s} {'params':>11s} {'map':>12s} {'img/s':>8s} {'x vgg16':>8s} "
          f"{'head params':>12s} {'head ms/step':>13s} {'x vgg16':>8s}")
    for name, r in rows.items():
        print(f"{name:16s} {r['params']:11,d} {'x'.join(map(str, r['shape'])):>12s} {r['img_s']:8.2f} "
              f"{r['img_s'] / ref['img_s']:8.2f} {r['head_params']:12,d} {r['head_ms']:13.1f} "
              f"{r['head_ms'] / ref['head_ms']:8.2f}")
    figures = {}
    for name, r in rows.items():
        if name != "vgg16":
            figures[f"ratio_extract_{name}"] = r["img_s"] / ref["img_s"]
            figures[f"ratio_head_{name}"] = r["head_ms"] / ref["head_ms"]
    for name, r in rows.items():
        figures[f"img_s_{name}"] = r["img_s"]
        figures[f"head_ms_{name}"] = r["head_ms"]
    figures.update(images=args.images, size=args.size, batches=args.batches, backend=keras.backend.backend(),
                   load=f"{os.getloadavg()[0]:.2f}", wall_s=time.perf_counter() - start)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
