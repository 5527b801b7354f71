"""Benchmark scale-out: per-image stage costs, one process vs ``--cluster local:2``, streaming head vs in memory.

Everything is measured in ONE run, so the ratios compare under the same load:

1. Stage costs per image, in this process (decoding on one core, the backbone on all): decoding (``images.read_image``),
   the backbone (``predict_on_batch`` on full batches, after a warm-up) and
   writing a shard (``FeatureStore.write_rows``, float16), plus the store's bytes
   per image for ``--keep both`` and ``pooled``. docs/SCALING.md extrapolates
   from these.
2. The same images extracted by ``xrayfeat extract`` as a user runs it: once in
   one process (today's path: a decode pool and the backbone here), once with
   ``--cluster local:2``. Wall time of each command (start-up, framework import
   and model build included) and the extraction's own seconds; the ratio says
   what the cluster path costs or gains on this machine. The two ``cache export``
   files must be identical (``identical=1``).
3. The streaming head vs the in-memory head, seconds per step
   (``scripts/bench_stream.py``'s ``measure``).

4. With ``--decode`` (only this): decoding on ONE Dask worker (``local:1``), as a
   chunk decodes (:func:`~xrayfeat.extraction.decoding.decoded` with the pool kept
   between chunks), without the backbone: in the task's own thread (N=0, one core:
   what a worker did before issue 26) and with N=1 and N=2 decode processes. Rounds
   interleave the three (the order rotates), each timed alone, after a warm-up
   round that starts the pools; the median per N gives images/s, and the ratio
   ``N=2 / one core`` is what the issue's target (≥ 0.8 × 2) is about: feeding a GPU.
   Beside the wall-clock rates, the CPU seconds per image of the worker and its
   decode processes together: what the pool adds to each image's work, which
   load from other processes does not change the way it changes wall time.

    python scripts/bench_cluster.py                      # the real sample if ../shared is there, else phantoms
    python scripts/bench_cluster.py --n 96 --backbone vgg16 --image-size 224
    python scripts/bench_cluster.py --decode --rounds 7  # decode images/s on one worker: N = 0 (one core), 1, 2

Ends with one ``key=value`` line, ratios first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "cxr-sample" / "all"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def cli(*args, env=None) -> tuple[float, str]:
    """Run ``xrayfeat ARGS``; (wall seconds, stdout)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xrayfeat", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    if proc.returncode:
        sys.exit(f"failed: xrayfeat {' '.join(map(str, args))}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc.stdout


def dataset_folder(work: Path, n: int) -> Path:
    """The first ``n`` images of the real sample (copied by link), or phantoms at 1024 px."""
    out = work / "data"
    if REAL.is_dir():
        files = sorted(p for p in REAL.rglob("*") if p.is_file())[:n]
        for path in files:
            target = out / path.relative_to(REAL)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
        return out
    cli("phantoms", out, "--task", "four", "--per-class", max(2, n // 4), "--size", 1024, "--seed", "1")
    return out


def stage_costs(data: Path, backbone: str, size: int | None, batch: int, work: Path) -> dict:
    """Milliseconds per image of decoding, the backbone and writing; bytes per image of each --keep."""
    from xrayfeat.data import images
    from xrayfeat.data.datasets import discover
    from xrayfeat.extraction.config import resolve
    from xrayfeat.extraction.runner import build_model
    from xrayfeat.options.settings import FeatureOptions
    from xrayfeat.store.feature_store import FeatureStore

    paths = [str(item.path) for item in discover(data).items]
    config = resolve(FeatureOptions(backbone=backbone, weights="none", image_size=size), "cpu")
    side = config.fingerprint["image_size"]
    t = time.perf_counter()
    pixels = np.stack([images.read_image(p, side) for p in paths])
    decode = (time.perf_counter() - t) / len(paths)
    model, _ = build_model(config, "cpu")
    full = np.resize(pixels, (max(batch, len(pixels) // batch * batch), *pixels.shape[1:]))
    model.predict_on_batch(full[:batch])  # warm-up: compilation
    t = time.perf_counter()
    outputs = [model.predict_on_batch(full[i : i + batch]) for i in range(0, len(full), batch)]
    backbone_s = (time.perf_counter() - t) / len(full)
    spatial = np.concatenate([np.asarray(o[0]) for o in outputs])[: len(paths)]
    pooled = np.concatenate([np.asarray(o[1]) for o in outputs])[: len(paths)]
    hashes = [f"{i:064x}" for i in range(len(paths))]
    sizes = {}
    write = None
    for keep in ("both", "pooled"):
        fingerprint = dict(config.fingerprint, **({} if keep == "both" else {"keep": keep}))
        store = FeatureStore.open(work / f"stage-{keep}", fingerprint, create=True)
        t = time.perf_counter()
        path, _ = store.write_rows(hashes, spatial, pooled, {})
        write = write if keep == "pooled" else (time.perf_counter() - t) / len(paths)
        sizes[keep] = path.stat().st_size / len(paths)
    return {"decode_ms": decode * 1e3, "backbone_ms": backbone_s * 1e3, "write_ms": write * 1e3,
            "bytes_both": sizes["both"], "bytes_pooled": sizes["pooled"], "images": len(paths),
            "spatial_shape": list(spatial.shape[1:]), "input": side}


def extraction(data: Path, work: Path, features: list[str], batch: int, workers: int, chunk: int) -> dict:
    """One process vs ``--cluster local:W`` on the same images: wall and extraction seconds, identical exports."""
    out = {}
    for name, extra in (("single", []), ("cluster", ["--cluster", f"local:{workers}", "--chunk-images", chunk])):
        cache = work / f"cache-{name}"
        wall, stdout = cli("extract", data, *features, "--batch-size", batch, "--cache-dir", cache, "--json", *extra)
        result = json.loads(stdout)
        cli("cache", "export", data, *features, "--cache-dir", cache, "--out", work / f"{name}.npz")
        out[name] = {"wall_s": wall, "extract_s": result["seconds"], "images": result["extracted"]}
    with np.load(work / "single.npz") as a, np.load(work / "cluster.npz") as b:
        out["identical"] = all(np.array_equal(a[k], b[k]) for k in a.files) and set(a.files) == set(b.files)
    return out


def _cpu_seconds() -> float:
    """CPU seconds so far of this process and of its decode processes (idle kept pools add next to nothing)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children():
        try:
            if "decode_worker" in " ".join(child.cmdline()):
                total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def decode_for(paths: list[str], size: int, workers: int) -> tuple[float, float]:
    """(On the Dask worker) wall and CPU seconds (this worker and its decode processes) to decode ``paths`` as a
    chunk does: ``workers`` kept processes, 0 = this thread."""
    from xrayfeat.extraction.decoding import decoded

    cpu = _cpu_seconds()
    started = time.perf_counter()
    for pixels, failure in decoded(paths, size, workers, keep=True):
        if failure is not None:
            raise RuntimeError(failure.reason)
    return time.perf_counter() - started, _cpu_seconds() - cpu


def decode_rates(data: Path, size: int, rounds: int) -> dict:
    """Images/s decoded on one ``local:1`` worker with N = 0 (its thread), 1 and 2 decode processes, interleaved."""
    from statistics import median

    from xrayfeat.data.datasets import discover
    from xrayfeat.distributed.session import session

    paths = [str(item.path) for item in discover(data).items]
    live = session("local:1")
    modes = (0, 1, 2)
    for workers in modes:  # warm-up: the pools start, the decoders load
        live.client.submit(decode_for, paths[:16], size, workers, pure=False).result()
    seconds: dict[int, list[float]] = {n: [] for n in modes}
    cpu: dict[int, list[float]] = {n: [] for n in modes}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        order = modes[r % 3:] + modes[: r % 3]
        for workers in order:
            wall, used = live.client.submit(decode_for, paths, size, workers, pure=False).result()
            seconds[workers].append(wall)
            cpu[workers].append(used)
        line = ", ".join(f"N={n} {len(paths) / seconds[n][-1]:.1f}" for n in modes)
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}: images/s {line} (load {load[-1]:.2f})", flush=True)
    rates = {n: len(paths) / median(seconds[n]) for n in modes}
    cpu_ms = {n: median(cpu[n]) / len(paths) * 1e3 for n in modes}
    return {"rates": rates, "cpu_ms": cpu_ms, "images": len(paths), "load_min": min(load), "load_max": max(load)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160, help="Images (default 160; --decode: up to 284 here).")
    parser.add_argument("--backbone", default="inception_v3", choices=["vgg16", "inception_v3"])
    parser.add_argument("--image-size", type=int, default=None, help="Model input size (default: the backbone's).")
    parser.add_argument("--batch", type=int, default=32, help="Backbone batch size (the CLI's default).")
    parser.add_argument("--workers", type=int, default=2, help="Workers of the local cluster (default 2).")
    parser.add_argument("--chunk", type=int, default=32, help="--chunk-images of the cluster run (default 32).")
    parser.add_argument("--stream-rows", type=int, default=2000, help="Rows of the streaming-head store (0: skip).")
    parser.add_argument("--decode", action="store_true",
                        help="Only decoding on one Dask worker: N=0 (its thread), 1 and 2 decode processes.")
    parser.add_argument("--rounds", type=int, default=5, help="--decode: interleaved rounds (default 5).")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        data = dataset_folder(work, args.n)
        if args.decode:
            size = args.image_size or 224
            found = decode_rates(data, size, args.rounds)
            rates = found["rates"]
            print(f"decode on one Dask worker ({found['images']} images to {size} px, median of {args.rounds} "
                  f"rounds): one core {rates[0]:.1f}/s, N=1 {rates[1]:.1f}/s, N=2 {rates[2]:.1f}/s; CPU per image "
                  f"(the worker and its decode processes) {found['cpu_ms'][0]:.1f}, {found['cpu_ms'][1]:.1f}, "
                  f"{found['cpu_ms'][2]:.1f} ms", flush=True)
            figures = {
                "ratio_n2_vs_one_core": rates[2] / rates[0], "ratio_n2_vs_n1": rates[2] / rates[1],
                "ratio_n1_vs_one_core": rates[1] / rates[0],
                "ratio_cpu_per_image_n2_vs_one_core": found["cpu_ms"][2] / found["cpu_ms"][0],
                "cpu_ms_one_core": found["cpu_ms"][0], "cpu_ms_n1": found["cpu_ms"][1], "cpu_ms_n2": found["cpu_ms"][2],
                "rate_one_core": rates[0], "rate_n1": rates[1], "rate_n2": rates[2], "images": found["images"],
                "input": size, "load1_min": found["load_min"], "load1_max": found["load_max"],
                "cores": len(os.sched_getaffinity(0)),
            }
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
            return 0
        features = ["--backbone", args.backbone, "--weights", "none",
                    *(["--image-size", args.image_size] if args.image_size else [])]
        stages = stage_costs(data, args.backbone, args.image_size, args.batch, work)
        print(f"stages ({stages['images']} images, {args.backbone} at {stages['input']} px, this process): decode "
              f"{stages['decode_ms']:.1f} ms, backbone {stages['backbone_ms']:.1f} ms, write {stages['write_ms']:.2f} ms "
              f"per image; store {stages['bytes_both'] / 1024:.1f} KiB (both) / {stages['bytes_pooled'] / 1024:.2f} KiB "
              f"(pooled) per image", flush=True)
        runs = extraction(data, work, features, args.batch, args.workers, args.chunk)
        for name in ("single", "cluster"):
            r = runs[name]
            print(f"{name:8} {r['images']} images: command {r['wall_s']:.1f} s, extraction {r['extract_s']:.1f} s",
                  flush=True)
        stream = {}
        if args.stream_rows:
            from bench_stream import measure

            stream = measure(n_rows=args.stream_rows, repeats=1)
            print(f"head: {stream['step_s_stream'] * 1e3:.0f} ms per step streamed vs {stream['step_s_memory'] * 1e3:.0f} "
                  f"ms in memory ({stream['rows']} rows of 5x5x2048, {stream['backend']})", flush=True)
        figures = {
            "ratio_cluster_vs_single_command": runs["single"]["wall_s"] / runs["cluster"]["wall_s"],
            "ratio_cluster_vs_single_extraction": runs["single"]["extract_s"] / runs["cluster"]["extract_s"],
            "ratio_stream_vs_memory_step": stream.get("ratio_step", float("nan")),
            "identical": int(runs["identical"]),
            "decode_ms": stages["decode_ms"], "backbone_ms": stages["backbone_ms"], "write_ms": stages["write_ms"],
            "kib_both": stages["bytes_both"] / 1024, "kib_pooled": stages["bytes_pooled"] / 1024,
            "images": stages["images"], "backbone": args.backbone, "input": stages["input"],
            "load1": os.getloadavg()[0], "cores": os.cpu_count(),
        }
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
