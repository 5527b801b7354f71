"""Run directories: where one experiment's record lives, and how it is read back.

``runs/<name>/`` holds ``config.json`` (every option, the store fingerprint,
versions, weights identity, file checksums), ``metrics.json`` (head and each
baseline on test), ``history.csv``, ``predictions.csv`` (every test image with
each model's class probabilities, so metrics can be recomputed), ``head.keras``,
``baselines/<name>.joblib`` and the plots. Files are written under a temporary
name and renamed, so a record never holds half a file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

from .errors import XrayfeatError


def default_name(task: str, backbone: str) -> str:
    """``<task>-<backbone>-<UTC time>``, e.g. ``four-inception_v3-20261126-071502``."""
    return f"{task}-{backbone}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def task_name(classes) -> str:
    """A short task label from the class names (``binary`` for two classes, else ``<K>class``)."""
    return "binary" if len(classes) == 2 else f"{len(classes)}class"


def new_run_dir(out: str | os.PathLike | None, task: str, backbone: str, root="runs") -> Path:
    path = Path(out) if out else Path(root) / default_name(task, backbone)
    if path.exists() and any(path.iterdir()):
        raise XrayfeatError(f"{path}: run folder exists and is not empty; pass another --out or delete it")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    _atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_history(path: Path, history: dict, epoch_seconds) -> None:
    keys = list(history)
    rows = ["epoch," + ",".join(keys) + ",seconds"]
    n = max((len(v) for v in history.values()), default=0)
    for i in range(n):
        values = [f"{history[k][i]:.6g}" if i < len(history[k]) else "" for k in keys]
        seconds = f"{epoch_seconds[i]:.4f}" if i < len(epoch_seconds) else ""
        rows.append(",".join([str(i + 1), *values, seconds]))
    _atomic_write(path, "\n".join(rows) + "\n")


def write_predictions(path: Path, items, y_true, classes, probabilities: dict) -> None:
    """One row per test image: path, sha256, patient, source, true label, then P(class) per model."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        header = ["path", "sha256", "patient_id", "source", "label", "y_true"]
        for model in probabilities:
            header += [f"{model}:{c}" for c in classes]
        writer.writerow(header)
        for i, item in enumerate(items):
            row = [item.relpath, item.sha256, item.patient_id or "", item.source or "", item.label, int(y_true[i])]
            for proba in probabilities.values():
                row += [f"{p:.6g}" for p in proba[i]]
            writer.writerow(row)
    os.replace(tmp, path)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_run(path: str | os.PathLike) -> dict:
    """A run's config and metrics (what ``report`` needs); a clear error when it is not a run."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text())
    except FileNotFoundError:
        raise XrayfeatError(f"{path}: not a run folder (no config.json/metrics.json); pass a folder made by fit-head") from None
    except ValueError as exc:
        raise XrayfeatError(f"{path}: run record is damaged ({exc})") from None
    return {"path": str(path), "config": config, "metrics": metrics}


def load_run_head(path: str | os.PathLike):
    """The trained head of a run, loaded only after its sha256 matches the one the run recorded."""
    from .heads import load_head

    record = load_run(path)
    entry = record["config"].get("files", {}).get("head", {})
    head_file = Path(path) / entry.get("file", "head.keras")
    if not head_file.is_file():
        raise XrayfeatError(f"{head_file}: missing; the run folder is incomplete")
    if file_sha256(head_file) != entry.get("sha256"):
        raise XrayfeatError(f"{head_file}: sha256 differs from the one recorded in config.json; refusing to load it")
    return record, load_head(head_file)


def run_feature_options(record: dict):
    """The FeatureOptions a run was trained on (to read the same store)."""
    from .extract import FeatureOptions

    return FeatureOptions(**record["config"]["features"])
