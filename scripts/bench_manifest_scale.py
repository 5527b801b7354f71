#!/usr/bin/env python
"""A full-size NIH ChestX-ray14 (and CheXpert) manifest: conversion, then discovery and the label table, timed.

    python scripts/bench_manifest_scale.py                      # NIH: 112,120 images of 30,805 patients
    python scripts/bench_manifest_scale.py --chexpert           # and CheXpert: 224,316 images of 65,240 patients

NIH: a synthetic ``Data_Entry_2017.csv`` in the official format, with its split
lists, over 112,120 distinct one-pixel PNG files in the Kaggle layout
(``images_001/images`` ... ``images_012/images``). CheXpert: ``train.csv`` and
``valid.csv`` over 224,316 paths in CheXpert's ``patient/study/view`` folders;
the files there are hard links to ``--distinct`` one-pixel JPEG-named files
(creating 224k distinct files costs minutes of disk writes and changes nothing
that is measured: the hash cache keys by path, and a warm discovery reads none).

For each: ``convert_manifest`` (tables in, manifest out, one ``stat`` or listing
per image), a cold ``discover`` (every file hashed, the hash cache written), then,
in a fresh process each, the warm ``discover`` (the cache current: one ``stat``
per file) plus ``Dataset.targets``: its seconds, the process's CPU seconds (on a
busy machine, wall time above them is time spent waiting for a core), and its peak RSS (and,
with ``--tracemalloc``, again under tracemalloc for the peak of Python's own
allocations). Ends with one line of ``key=value`` pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from xrayfeat.data.converters import convert_manifest
from xrayfeat.data.converters.chexpert import OBSERVATIONS
from xrayfeat.data.converters.nih import NIH_FINDINGS
from xrayfeat.data.datasets import discover

NIH_IMAGES, NIH_PATIENTS = 112_120, 30_805
CHEXPERT_IMAGES, CHEXPERT_PATIENTS = 224_316, 65_240
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(OBSERVATIONS)


def png(n: int) -> bytes:
    """A valid 1x1 RGB PNG whose pixel is ``n`` (so every file differs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixel = bytes([0, n >> 16 & 255, n >> 8 & 255, n & 255])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(pixel)) + chunk(b"IEND", b""))


def counts_per_patient(images: int, patients: int, rng: random.Random) -> list[int]:
    """Images per patient, at least one each, summing to ``images`` (a skewed spread, as follow-ups are)."""
    counts = [1] * patients
    for _ in range(images - patients):
        counts[min(int(rng.expovariate(1 / (patients / 6))), patients - 1)] += 1
    return counts


def write_nih(root: Path, rng: random.Random) -> None:
    folders = [root / f"images_{i:03d}" / "images" for i in range(1, 13)]
    for folder in folders:
        folder.mkdir(parents=True)
    lines, train, test = [NIH_HEADER], [], []
    n = 0
    per_folder = -(-NIH_IMAGES // len(folders))
    for patient, count in enumerate(counts_per_patient(NIH_IMAGES, NIH_PATIENTS, rng), start=1):
        age, sex = rng.randint(1, 95), rng.choice("MF")
        for follow in range(count):
            name = f"{patient:08d}_{follow:03d}.png"
            (folders[n // per_folder] / name).write_bytes(png(n))
            labels = "|".join(sorted(rng.sample(NIH_FINDINGS, rng.choice((1, 1, 2, 3))))) if rng.random() < 0.46 else "No Finding"
            lines.append(f"{name},{labels},{follow},{patient},{age},{sex},{rng.choice(('PA', 'AP'))},2500,2048,"
                         f"0.168,0.168,")
            (test if patient % 4 == 0 else train).append(name)  # patient-grouped, as the official lists
            n += 1
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")


def write_chexpert(root: Path, rng: random.Random, distinct: int) -> None:
    pool = root.parent / "pool"
    pool.mkdir()
    sources = []
    for i in range(distinct):
        source = pool / f"{i}.jpg"
        source.write_bytes(png(i))  # existence and bytes are all that is read
        sources.append(source)
    cells = ("1.0", "0.0", "-1.0", "", "", "", "")
    tables = {"train": [CHEXPERT_HEADER], "valid": [CHEXPERT_HEADER]}
    n = 0
    for patient, count in enumerate(counts_per_patient(CHEXPERT_IMAGES, CHEXPERT_PATIENTS, rng), start=1):
        split = "valid" if patient > CHEXPERT_PATIENTS - 200 else "train"
        sex, age = rng.choice(("Male", "Female", "Unknown")), rng.randint(18, 90)
        for view in range(count):
            study, frontal = view // 2 + 1, view % 2 == 0
            folder = root / split / f"patient{patient:05d}" / f"study{study}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"view{view % 2 + 1}_{'frontal' if frontal else 'lateral'}.jpg"
            os.link(sources[n % distinct], folder / name)
            row = [f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/{name}", sex, str(age),
                   "Frontal" if frontal else "Lateral", rng.choice(("AP", "PA")) if frontal else ""]
            tables[split].append(",".join(row + [rng.choice(cells) for _ in OBSERVATIONS]))
            n += 1
    for split, lines in tables.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


_CHILD = """
import json, sys, time, tracemalloc
from xrayfeat.data.datasets import discover


def high_water_mib():  # this process's peak RSS: VmHWM starts afresh at exec (ru_maxrss keeps the forking parent's)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


manifest, cache, traced = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
before = high_water_mib()
if traced:
    tracemalloc.start()
start, cpu_start = time.perf_counter(), time.process_time()
dataset = discover(manifest, hash_cache=cache)
found = time.perf_counter()
targets = dataset.targets
done, cpu_done = time.perf_counter(), time.process_time()
peak = tracemalloc.get_traced_memory()[1] if traced else None
print(json.dumps({"discover_s": found - start, "targets_s": done - found, "cpu_s": cpu_done - cpu_start,
                  "items": len(dataset),
                  "shape": list(targets.shape), "rss_before_mib": before, "peak_rss_mib": high_water_mib(),
                  "traced_peak_mib": None if peak is None else peak / 2**20}))
"""


def warm(manifest: Path, cache: Path, traced: bool) -> dict:
    """The warm discovery and label table in a fresh process (its own peak memory)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(manifest), str(cache), "1" if traced else "0"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def measure(name: str, dataset: str, root: Path, manifest: Path, traced: bool) -> str:
    start = time.perf_counter()
    result = convert_manifest(dataset, root, manifest)
    convert_s = time.perf_counter() - start
    cache = manifest.parent / "file-hashes.json"
    start = time.perf_counter()
    discover(manifest, hash_cache=cache)
    cold_s = time.perf_counter() - start
    plain = warm(manifest, cache, False)
    total = plain["discover_s"] + plain["targets_s"]
    assert plain["items"] == result.images and plain["shape"] == [result.images, len(result.findings)]
    print(f"{name}: {result.images:,} images of {result.patients:,} patients; convert {convert_s:.2f} s; "
          f"discover cold {cold_s:.2f} s; warm discover {plain['discover_s']:.2f} s + targets {plain['targets_s']:.2f} s "
          f"= {total:.2f} s (target 10 s; this process's CPU time {plain['cpu_s']:.2f} s: more wall time than that is "
          f"waiting for a core, or for the disk); peak RSS {plain['peak_rss_mib']:.0f} MiB ({plain['rss_before_mib']:.0f} "
          f"MiB after imports)")
    line = (f"{name}_warm_s={total:.3f} {name}_discover_s={plain['discover_s']:.3f} "
            f"{name}_targets_s={plain['targets_s']:.3f} {name}_cpu_s={plain['cpu_s']:.3f} {name}_convert_s={convert_s:.3f} {name}_cold_s={cold_s:.3f} "
            f"{name}_peak_rss_mib={plain['peak_rss_mib']:.0f} {name}_images={result.images}")
    if traced:
        peak = warm(manifest, cache, True)["traced_peak_mib"]
        print(f"{name}: Python's allocations peak at {peak:.0f} MiB during the warm discovery and targets (tracemalloc)")
        line += f" {name}_traced_peak_mib={peak:.0f}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chexpert", action="store_true", help="Also the 224,316-image CheXpert case.")
    parser.add_argument("--distinct", type=int, default=1000, help="CheXpert: distinct files behind the hard links.")
    parser.add_argument("--dir", default=None, help="Where to write the data (default: a temporary folder, removed).")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="Also the peak of Python's allocations (a third discovery, 3-4x slower under tracemalloc).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rng = random.Random(0)
        lines = []
        start = time.perf_counter()
        write_nih(Path(tmp) / "nih", rng)
        print(f"wrote the NIH tables and {NIH_IMAGES:,} PNG files in {time.perf_counter() - start:.1f} s")
        lines.append(measure("nih", "nih", Path(tmp) / "nih", Path(tmp) / "nih.csv", args.tracemalloc))
        if args.chexpert:
            start = time.perf_counter()
            write_chexpert(Path(tmp) / "CheXpert-v1.0-small", rng, args.distinct)
            print(f"wrote the CheXpert tables and {CHEXPERT_IMAGES:,} paths (hard links to {args.distinct:,} files) in "
                  f"{time.perf_counter() - start:.1f} s")
            lines.append(measure("chexpert", "chexpert", Path(tmp) / "CheXpert-v1.0-small", Path(tmp) / "chexpert.csv",
                                 args.tracemalloc))
        print(" ".join(lines))


if __name__ == "__main__":
    main()
