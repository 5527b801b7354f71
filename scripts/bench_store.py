#!/usr/bin/env python
"""The feature store at scale: open, 1,000 lookups, verify and gc on a 200,000-row store, with peak memory.

    python scripts/bench_store.py                           # 50,000 then 200,000 rows, in a temporary folder
    python scripts/bench_store.py --rows 20000 --small 5000 --dir /tmp/bench --keep

Rows are synthetic features written through the store API (``FeatureStore.writer``):
a 2,048-d pooled vector and a 2×2×512 spatial map per row, float16, so 200,000
rows take about 1.7 GB. Every phase runs in a fresh process (``--phase``), as
a user's command would, and reports its wall time and its peak resident memory:

* build   — write the rows in batches of ``--batch`` (not a budgeted figure);
* open    — ``FeatureStore.open`` and ``len``: the index read and its digest checked;
* lookup  — ``missing`` and ``read`` (both parts) of 1,000 random hashes, after open;
  ``check_ms`` is the part of it spent checking the rows' digests;
* verify  — ``FeatureStore.verify`` (``cache verify``): every byte of every shard;
* gc      — ``FeatureStore.gc`` on the healthy store (it checks every shard too).

verify runs at ``--small`` rows and again at ``--rows``; the ratio of the two
peak RSS shows that it streams. The page cache is warm (the store was just
written); a cold disk adds its read time. The last line holds the figures as
key=value, ratios first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FINGERPRINT = {
    "backbone": "bench", "weights": "none:seed=0", "image_size": 224, "preprocess": "torch", "decode": "v1",
    "layer": "synthetic", "precision": "float32", "store_dtype": "float16", "keras": "-", "backend": "-",
}
POOLED = 2048
SPATIAL = (2, 2, 512)
LOOKUPS = 1000


def _key(i: int) -> str:
    return hashlib.sha256(b"row %d" % i).hexdigest()


def _store(cache: Path, create: bool = False):
    from xrayfeat.store.feature_store import FeatureStore

    return FeatureStore.open(cache, FINGERPRINT, create=create)


def build(cache: Path, start: int, stop: int, batch: int) -> dict:
    """Append rows ``start``..``stop`` in batches; synthetic float16-range values."""
    store = _store(cache, create=True)
    rng = np.random.default_rng(start)
    with store.writer() as w:
        for first in range(start, stop, batch):
            n = min(batch, stop - first)
            spatial = rng.uniform(0, 4, (n, *SPATIAL)).astype(np.float32)
            w.append([_key(i) for i in range(first, first + n)], spatial, spatial.mean(axis=(1, 2)).repeat(4, axis=1))
    return {"rows": stop - start}


def open_store(cache: Path) -> dict:
    return {"rows": len(_store(cache))}


def lookup(cache: Path, rows: int) -> dict:
    from xrayfeat.store.shards import row_digests

    rng = np.random.default_rng(7)
    wanted = [_key(int(i)) for i in rng.choice(rows, LOOKUPS, replace=False)]
    started = time.perf_counter()
    store = _store(cache)
    len(store)
    opened = time.perf_counter()
    assert store.missing(wanted) == []
    arrays = store.read(wanted)
    looked = time.perf_counter()
    keys = np.array(wanted, dtype="S64")
    for part in ("pooled", "spatial"):
        row_digests(keys, arrays[part].astype(np.float16))
    checked = time.perf_counter()
    return {"open_ms": round((opened - started) * 1e3, 1), "lookup_ms": round((looked - opened) * 1e3, 1),
            "check_ms": round((checked - looked) * 1e3, 1)}


def verify(cache: Path) -> dict:
    problems = _store(cache).verify()
    if problems:
        raise SystemExit(f"verify found problems: {problems[:3]}")
    return {}


def gc(cache: Path) -> dict:
    result = _store(cache).gc()
    return {"merged_shards": result["merged_shards"], "damaged_shards": len(result["damaged_shards"])}


PHASES = {"build": build, "open": open_store, "lookup": lookup, "verify": verify, "gc": gc}


def _run_phase(args) -> None:
    """Child: run one phase, print its wall time, peak RSS and results as JSON."""
    started = time.perf_counter()
    extra = {"build": (args.start, args.stop, args.batch), "lookup": (args.stop,)}.get(args.phase, ())
    result = PHASES[args.phase](args.cache, *extra)
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def _phase(name: str, cache: Path, **kw) -> dict:
    args = [sys.executable, __file__, "--phase", name, "--cache", str(cache)]
    for key, value in kw.items():
        args += [f"--{key}", str(value)]
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 3)
    return result


def _size_gb(cache: Path) -> float:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e9


def _report(label: str, result: dict) -> None:
    figures = " ".join(f"{k}={v}" for k, v in result.items())
    print(f"{label:14s} {figures}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="Rows of the large store (default 200,000).")
    parser.add_argument("--small", type=int, default=50_000, help="Rows at the first verify (default 50,000).")
    parser.add_argument("--batch", type=int, default=25_000, help="Rows per appended batch (default 25,000).")
    parser.add_argument("--dir", type=Path, default=None, help="Where to build the store (default: a temporary folder).")
    parser.add_argument("--keep", action="store_true", help="Keep the store afterwards.")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        _run_phase(args)
        return 0
    folder = Path(tempfile.mkdtemp(prefix="xrayfeat-bench-store-", dir=args.dir))
    cache = folder / "cache"
    try:
        figures = {}
        _report("build", _phase("build", cache, start=0, stop=args.small, batch=args.batch))
        small = _phase("verify", cache)
        _report(f"verify {args.small}", small)
        _report("build", _phase("build", cache, start=args.small, stop=args.rows, batch=args.batch))
        print(f"store          rows={args.rows} gb={_size_gb(cache):.2f} folder={cache}", flush=True)
        for name, kw in (("open", {}), ("lookup", {"stop": args.rows}), ("verify", {}), ("gc", {})):
            figures[name] = _phase(name, cache, **kw)
            _report(f"{name} {args.rows}" if name == "verify" else name, figures[name])
        ratio = figures["verify"]["peak_rss_mib"] / small["peak_rss_mib"]
        gb = _size_gb(cache)
        print(f"ratio_verify_rss={ratio:.3f} verify_rss_mib_small={small['peak_rss_mib']} "
              f"verify_rss_mib_large={figures['verify']['peak_rss_mib']} rows={args.rows} small={args.small} "
              f"gb={gb:.2f} open_s={figures['open']['seconds']} open_rss_mib={figures['open']['peak_rss_mib']} "
              f"lookup_ms={figures['lookup']['lookup_ms']} lookup_check_ms={figures['lookup']['check_ms']} "
              f"lookup_rss_mib={figures['lookup']['peak_rss_mib']} verify_s={figures['verify']['seconds']} "
              f"verify_gb_per_s={gb / figures['verify']['seconds']:.2f} gc_s={figures['gc']['seconds']} "
              f"gc_rss_mib={figures['gc']['peak_rss_mib']}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
