"""The ``embed`` command: a 2-D map of a dataset's cached features (t-SNE or UMAP), drawn and scored.

Features come from the store (extracting what it lacks first); the map itself is
:func:`xrayfeat.analysis.maps.embed_features`, cached beside the figure by its inputs' digest.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrayfeat.data.datasets import Dataset
from xrayfeat.errors import DatasetError
from xrayfeat.fileio import writing_to
from xrayfeat.extraction.pipeline import extract
from xrayfeat.extraction.selection import store_for
from xrayfeat.options.settings import EmbedOptions, FeatureOptions, RunOptions
from xrayfeat.runs.lock import run_lock
from xrayfeat.runs.outputs import check_output
from xrayfeat.store.feature_store import FeatureStore


log = logging.getLogger("xrayfeat")

#: Display names of the map methods.
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


@dataclass
class EmbedOutcome:
    """A map: the embed result (coordinates, scores, files) and what was projected.

    ``images`` counts the images on the map; ``skipped_files`` lists those left
    out by ``on_error="skip"`` ("path: reason", as the extraction gives them).
    """

    result: object
    method: str
    source: str
    images: int
    skipped_files: list = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """How many image files were left out of the map."""
        return len(self.skipped_files)

    def as_json(self) -> dict:
        r = self.result
        out = {"out": str(r.plot_path), "coords": str(r.coords_path), "method": self.method,
               "source": self.source, "images": self.images, "skipped": self.skipped, "reused": r.reused,
               "seconds": round(r.seconds, 3), "scores": r.scores}
        if self.skipped_files:
            out["skipped_files"] = self.skipped_files
        return out


#: The colours of a multi-label map besides one per finding: images with several positive findings, and with none.
SEVERAL, NONE = "several findings", "no finding"


def map_colours(dataset: Dataset) -> tuple[np.ndarray, list[str]]:
    """(label index per image, the names they index) for a map's colours and its neighbour score.

    A single-label dataset colours by class. A multi-label one colours each
    image by its positive finding when it has exactly one, else as
    :data:`SEVERAL` or :data:`NONE`: a bounded legend, where colouring by
    combination would need hundreds of colours on NIH's fifteen findings.
    """
    if not dataset.multilabel:
        return dataset.labels, list(dataset.classes)
    names = [*dataset.classes, SEVERAL, NONE]
    positive = dataset.targets == 1
    count = positive.sum(axis=1)
    labels = np.where(count == 1, positive.argmax(axis=1), np.where(count > 1, len(names) - 2, len(names) - 1))
    return labels.astype(np.int64), names


def embed_map(dataset: Dataset, features: FeatureOptions | None, out, embed: EmbedOptions = EmbedOptions(), *,
              from_run=None, run: RunOptions = RunOptions(), title: str = "") -> EmbedOutcome:
    """Pooled store features, or a run head's penultimate activations, → a 2-D map PNG (+ coordinates).

    With ``from_run`` (a loaded :class:`~xrayfeat.runs.loaded.Run`) the run's own
    feature options select the store and its head (loaded after its sha256 is
    checked) projects the spatial maps; ``features`` is then ignored. Images
    left out by ``run.on_error="skip"`` (at discovery or at decoding) are not
    on the map, as fit-head leaves them out of its study; the outcome lists them.

    ``out`` is never a run's or a cache's file (:func:`~xrayfeat.runs.outputs.check_output`),
    except ``embed-<method>.png`` in ``from_run``'s own folder, which is drawn under the run's lock.
    """
    from xrayfeat.analysis.maps import embed_features

    embed.validate()
    owner = check_output(out, "embed", run=from_run.path if from_run is not None else None, cache=run.cache_dir)
    head = None
    if from_run is not None:
        if list(dataset.classes) != from_run.classes:
            raise DatasetError(f"{from_run.path} was trained on classes {from_run.classes}, {dataset.root} has "
                               f"{list(dataset.classes)}; pass --classes {','.join(from_run.classes)}")
        features, head = from_run.feature_options(), from_run.head()
    elif features is None:
        raise ValueError("embed_map needs features (a FeatureOptions) or from_run")
    part = "pooled" if head is None else from_run.record.head_input
    purpose = "embed" if head is None else f"embed --from-run (its head reads {part} features)"
    features = store_for(features, run.cache_dir, (part,), purpose, run.device)
    [extraction] = extract(dataset, features, run)
    store = FeatureStore.at(extraction.store)
    dataset = extraction.kept(dataset)
    if extraction.skipped:
        log.warning("%d of %d images left out of the map (they cannot be read; see the lines above)",
                    extraction.skipped, extraction.images)
    if head is not None:
        values = head.embed(store.read(dataset.hashes, (part,))[part])
        source = f"head penultimate layer ({from_run.path.name})"
    else:
        values = store.read(dataset.hashes, ("pooled",))["pooled"]
        source = f"{features.backbone} pooled features"
    with run_lock(owner, "embed") if owner is not None else contextlib.nullcontext(), \
            writing_to(Path(out).parent, option="--out"):  # one writer per run; a full disk: one line naming the folder
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        labels, classes = map_colours(dataset)
        result = embed_features(values, labels, out, method=embed.method, seed=embed.seed,
                                classes=classes, splits=[item.split for item in dataset.items],
                                title=title or f"{METHOD_NAMES[embed.method]} of {source}")
    return EmbedOutcome(result=result, method=embed.method, source=source, images=len(dataset),
                        skipped_files=extraction.skipped_files)
