"""The whole study in one call: phantoms → extract (both backbones) → heads → maps → report.

Task 1: COVID-19 vs normal with VGG16 (the seed's 40 epochs). Task 2: four
classes with InceptionV3 and VGG16 (the seed's 100 epochs). Each with the
baselines, t-SNE and UMAP maps of the head's features, and one report. Uses
ImageNet weights when installed, else says loudly that weights are random.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from xrayfeat.backbones import SEED_BACKBONES
from xrayfeat.extraction.weights import weights_status
from xrayfeat.data.datasets import discover
from xrayfeat.errors import XrayfeatError, another_out
from xrayfeat.fileio import writing_to
from xrayfeat.extraction.pipeline import extract
from xrayfeat.options.settings import EmbedOptions, FeatureOptions, HeadOptions, RunOptions
from xrayfeat.data.phantoms import write_phantoms
from xrayfeat.report.writer import write_report
from xrayfeat.runs.fit import fit_head
from xrayfeat.runs.maps import METHOD_NAMES, embed_map
from xrayfeat.runs.loaded import load_run
from xrayfeat.runs.outputs import check_new_folder
from xrayfeat.runtime import library_call

log = logging.getLogger("xrayfeat")

#: (task, backbone, classes or None for all, epochs as the seed trained them)
STUDIES = (("binary", "vgg16", ("covid", "normal"), 40),
           ("four", "inception_v3", None, 100),
           ("four", "vgg16", None, 100))


@dataclass
class DemoResult:
    report: str
    markdown: str
    weights: str
    runs: list
    seconds: float

    def as_json(self) -> dict:
        return {"report": self.report, "markdown": self.markdown, "weights": self.weights, "runs": self.runs,
                "seconds": self.seconds}


@library_call
def run_demo(out="demo_out", *, per_class: int = 60, quick: bool = False, progress: bool = True,
             say=log.info) -> DemoResult:
    """Run the demo into ``out`` (phantoms, cache, runs, report); ``quick`` is a smoke run (tiny images, 3 epochs).

    ``say`` receives one line per stage (the CLI prints them on stderr).
    """
    started = time.perf_counter()
    root = Path(out)
    if root.exists() and any(p.name in ("runs", "report") for p in root.iterdir()):
        raise XrayfeatError(f"{root}: holds an earlier demo; {another_out('pass another --out or delete it')}")
    check_new_folder(root, "demo")  # never a study inside a run or a feature cache
    installed = all(r["verified"] for r in weights_status() if r["backbone"] in SEED_BACKBONES)
    weights = "imagenet" if installed else "none"
    if not installed:
        log.warning("ImageNet weights are not installed (see `xrayfeat weights status`): the demo runs with RANDOM "
                    "weights; every figure is a random-feature baseline and the report says so")
    size, png = (80, 96) if quick else (224, 256)
    data = root / "data"
    if not data.exists():
        with writing_to(root, option="--out"):  # a full disk: the demo's folder and option, not the phantoms'
            write_phantoms(data, task="four", per_class=per_class, size=png, seed=0)
    dataset = discover(data, hash_cache=None)
    run = RunOptions(cache_dir=root / "cache", progress=progress)
    features = {b: FeatureOptions(b, weights=weights, image_size=size) for b in SEED_BACKBONES}
    say(f"demo: extracting {len(dataset)} phantom X-rays with {' and '.join(features)} (one decoding pass)")
    extract(dataset, list(features.values()), run)

    summary = []
    for task, backbone, classes, epochs in STUDIES:
        epochs = 3 if quick else epochs
        subset = dataset.select_classes(classes) if classes else dataset
        say(f"demo: {task} task, {backbone} head, {epochs} epochs, baselines, t-SNE and UMAP maps")
        head = HeadOptions(epochs=epochs, n_bootstrap=100 if quick else 1000,
                           baselines=("logreg", "pixels") if quick else ("logreg", "svm", "pixels"))
        result = fit_head(subset, features[backbone], head, run, out=root / "runs" / f"{task}-{backbone}")
        for method in ("tsne", "umap"):
            embed_map(subset, None, Path(result.run) / f"embed-{method}.png", EmbedOptions(method=method),
                      from_run=load_run(result.run), run=RunOptions(cache_dir=run.cache_dir),
                      title=f"{METHOD_NAMES[method]} of the {backbone} head's features ({task} task)")
        summary.append({"task": task, "backbone": backbone, "run": result.run, "test": result.test,
                        "baselines": result.baselines})
    report = write_report([s["run"] for s in summary], root / "report")
    return DemoResult(report=report["html"], markdown=report["markdown"], weights=weights, runs=summary,
                      seconds=round(time.perf_counter() - started, 1))
