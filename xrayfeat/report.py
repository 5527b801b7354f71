"""The comparison report: run records in, one Markdown file and one self-contained HTML file out.

:func:`write_report` reads nothing but the run folders that ``fit-head`` wrote
(``config.json``, ``metrics.json``, ``history.csv`` and the PNG figures; see
:mod:`xrayfeat.runs`) and renders

* the seed's comparison table, one per task (runs grouped by ``config["task"]``
  and their class list, since accuracies on different label sets do not
  compare): backbone, cut layer, weights (RANDOM flagged), parameters, time
  per epoch, head and extraction time, test loss, accuracy with its bootstrap
  interval, balanced accuracy, ROC-AUC and the test accuracy of every baseline;
* a "Warnings" section that gathers every run's warnings (random weights,
  leakage, tiny test sets, the pixels sentinel, source gaps), de-duplicated and
  attributed to the runs that raised them;
* per run: a configuration summary, each model's test results, per-class and
  per-source tables, the training history, the figures and the run's warnings.

Both outputs come from one document model, so they always say the same thing.
The Markdown refers to copies of the figures under ``OUT/figures/`` by relative
path (the folder can be moved or zipped); the HTML embeds every figure as a
``data:`` URI and carries its own CSS, so it is one file that opens offline,
prints cleanly and loads nothing from anywhere. Every string taken from a run
record is escaped: class names, paths and warnings are data, not markup.

Only the standard library is used; no model is loaded.
"""

from __future__ import annotations

import base64
import csv
import html
import logging
import math
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import XrayfeatError
from .runs import load_run

__all__ = ["write_report", "FIGURES"]

log = logging.getLogger("xrayfeat")

#: The fixed figures of a run, in the order they are shown; ``embed-*.png`` follow.
FIGURES = (("curves.png", "training curves"), ("confusion.png", "confusion matrix (head, test)"),
           ("roc.png", "ROC curves (head, test)"))

_DASH = "—"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A figure at least this much wider than tall gets the full page width.
_WIDE_ASPECT = 1.8

# Warning kinds, most serious first: (label, pattern matched against the text).
_WARNING_KINDS = (
    ("Random weights", re.compile(r"random backbone weights|--weights none", re.I)),
    ("Leakage", re.compile(r"byte-identical|patients in both train and test", re.I)),
    ("Shortcut sentinel", re.compile(r"grayscale pixels", re.I)),
    ("Source gap", re.compile(r"differs by source", re.I)),
    ("Small test set", re.compile(r"^test set (has|is empty)", re.I)),
)
# The same sentence fit-head records, so that de-duplication merges the two.
_RANDOM_WARNING = "RANDOM backbone weights (--weights none): results say nothing about ImageNet transfer"


# --------------------------------------------------------------------------- document model
#
# The report is built once as a list of blocks and rendered twice (Markdown,
# HTML). Inline content is a str, a _Span, or a list of those.


@dataclass(frozen=True)
class _Span:
    """Inline text with a role.

    ``flag`` (RANDOM), ``muted``, ``sub`` (secondary detail: its own small line in
    HTML table cells, inline in Markdown), ``code``, ``strong`` or ``link`` (to the
    anchor ``target``).
    """

    text: str
    role: str = ""
    target: str = ""


@dataclass
class _Heading:
    level: int
    text: str
    anchor: str = ""
    cls: str = ""


@dataclass
class _Para:
    content: object
    cls: str = ""


@dataclass
class _Table:
    header: list
    rows: list
    numeric: set = field(default_factory=set)  # column indices aligned right
    cls: str = ""


@dataclass
class _List:
    items: list
    cls: str = ""


@dataclass
class _Figure:
    caption: str
    data: bytes
    md_path: str  # relative to the report folder
    wide: bool


@dataclass
class _Figures:
    figures: list


# --------------------------------------------------------------------------- loading


@dataclass
class _Run:
    """One loaded run record and the names the report gives it."""

    path: Path
    name: str
    slug: str  # safe in file names and HTML ids
    config: dict
    metrics: dict
    history: list = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"run-{self.slug}"

    def get(self, *keys, default=None):
        return _get(self.config, *keys, default=default)

    @property
    def head(self) -> dict:
        head = self.metrics.get("head")
        return head if isinstance(head, dict) else {}

    @property
    def baselines(self) -> dict:
        found = self.metrics.get("baselines")
        return {k: v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.get("classes", default=[]) or []]

    @property
    def random_weights(self) -> bool:
        if self.get("weights", "random"):
            return True
        identity = str(self.get("store", "fingerprint", "weights", default="") or "")
        return identity.startswith("none")

    @property
    def warnings(self) -> list[str]:
        """The run's recorded warnings in order, plus the random-weights one if the record lacks it."""
        found = [str(w) for w in self.get("warnings", default=[]) or [] if str(w).strip()]
        if self.random_weights and not any(_warning_kind(w) == "Random weights" for w in found):
            found.insert(0, _RANDOM_WARNING)
        return list(dict.fromkeys(found))


def _get(data, *keys, default=None):
    """``data[k1][k2]...``, or ``default`` when a key is missing, the value is None or not a dict."""
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return default
        data = data[key]
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "run"


def _load_runs(paths) -> list[_Run]:
    """Read each run folder; a clear one-line error for anything that is not one."""
    loaded: list[_Run] = []
    seen: set[Path] = set()
    slugs: set[str] = set()
    for raw in paths:
        path = Path(os.fspath(raw))
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is a file"
            raise XrayfeatError(f"{path}: not a run folder ({what}); pass a folder made by fit-head")
        resolved = path.resolve()
        if resolved in seen:
            log.info("%s: given twice; reported once", path)
            continue
        seen.add(resolved)
        record = load_run(path)
        if not isinstance(record["config"], dict) or not isinstance(record["metrics"], dict):
            raise XrayfeatError(f"{path}: run record is damaged (config.json or metrics.json is not an object)")
        name = resolved.name or str(path)
        slug = _slug(name)
        if slug in slugs:  # two runs named alike in different folders: add the parent's name
            name = f"{resolved.parent.name}-{name}"
            slug = _slug(name)
        base, k = slug, 2
        while slug in slugs:
            slug, k = f"{base}-{k}", k + 1
        if slug != _slug(name):
            name = slug
        slugs.add(slug)
        loaded.append(_Run(path=path, name=name, slug=slug, config=record["config"],
                           metrics=record["metrics"], history=_read_history(path / "history.csv")))
    return loaded


def _read_history(path: Path) -> list[dict]:
    """history.csv as a list of {column: float or None}; empty when absent or unreadable."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    return [{k: _float(v) for k, v in row.items() if k} for row in rows]


def _float(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- formatting


def _num(x, digits: int = 3) -> str:
    x = _float(x)
    return _DASH if x is None else f"{x:.{digits}f}"


def _seconds(x) -> str:
    x = _float(x)
    if x is None:
        return _DASH
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _int(x) -> str:
    try:
        return f"{int(x):,}"
    except (TypeError, ValueError):
        return _DASH


def _with_ci(value, ci, role: str = "muted") -> list:
    """``0.812 [0.74, 0.87]`` with the interval in ``role``; the bare value when there is no interval."""
    text = _num(value)
    if text == _DASH or not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return [text]
    lo, hi = _float(ci[0]), _float(ci[1])
    if lo is None or hi is None:
        return [text]
    return [text, _Span(f" [{lo:.3f}, {hi:.3f}]", role)]


def _ci_level(runs) -> str:
    levels = {_float(r.head.get("ci_level")) for r in runs} - {None}
    return f"{100 * levels.pop():g}%" if len(levels) == 1 else "95%"


def _warning_kind(text: str) -> str:
    for label, pattern in _WARNING_KINDS:
        if pattern.search(text):
            return label
    return "Other"


def _ranked(texts) -> list[str]:
    """Warnings most serious kind first (stable within a kind)."""
    order = {label: i for i, (label, _) in enumerate(_WARNING_KINDS)}
    return sorted(texts, key=lambda text: order.get(_warning_kind(text), len(order)))


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk; None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _baseline_order(runs) -> list[str]:
    """The union of baseline names in order of first appearance, the pixels sentinel last."""
    names = list(dict.fromkeys(name for r in runs for name in r.baselines))
    return [n for n in names if n != "pixels"] + [n for n in names if n == "pixels"]


# --------------------------------------------------------------------------- content


def _groups(runs) -> list[tuple[str, list[str], list[_Run]]]:
    """Runs grouped by (task, class list), in order of first appearance."""
    groups: dict[tuple, list[_Run]] = {}
    for r in runs:
        groups.setdefault((str(r.get("task", default="?")), tuple(r.classes)), []).append(r)
    return [(task, list(classes), members) for (task, classes), members in groups.items()]


def _weights_cell(r: _Run) -> list:
    if r.random_weights:
        return [_Span("RANDOM", "flag")]
    kind = str(r.get("weights", "kind", default="") or r.get("features", "weights", default="") or _DASH)
    path = r.get("weights", "path")
    if kind == "file" and path:
        return [f"file {Path(str(path)).name}"]
    return [kind]


def _layer_text(r: _Run) -> str:
    layer = r.get("store", "fingerprint", "layer") or r.get("features", "layer") or "final"
    return f"{layer} + trained tail" if r.get("head", "train_tail") else str(layer)


def _backbone_cell(r: _Run) -> list:
    backbone = r.get("features", "backbone") or r.get("store", "fingerprint", "backbone") or _DASH
    size = r.get("store", "fingerprint", "image_size") or r.get("features", "image_size")
    return [str(backbone), _Span(f" ({size} px)", "sub")] if size else [str(backbone)]


def _comparison(task: str, classes: list[str], runs: list[_Run]) -> list:
    """One task's table (the seed's comparison) and the notes that make it readable."""
    baselines = _baseline_order(runs)
    level = _ci_level(runs)
    header = ["Run", "Backbone", "Layer", "Weights", "Params", "s / epoch", "Head s",
              "Extraction s", "Test loss", f"Accuracy [{level} CI]", "Balanced acc.", "ROC-AUC"]
    header += [f"{name} acc." + (" (sentinel)" if name == "pixels" else "") for name in baselines]
    rows = []
    for r in runs:
        head = r.head
        params = r.get("params", default={})
        extracted = r.get("timings", "extracted_images")
        extraction = [_seconds(r.get("timings", "extraction_seconds"))]
        if extracted is not None:
            extraction.append(_Span(" (all cached)" if extracted == 0 else f" ({_int(extracted)} new)", "sub"))
        row = [
            _Span(r.name, "link", r.anchor), _backbone_cell(r), _layer_text(r), _weights_cell(r),
            [_int(params.get("total")), _Span(f" ({_int(params.get('trainable'))} trainable)", "sub")],
            _seconds(r.get("timings", "seconds_per_epoch")), _seconds(r.get("timings", "head_seconds")),
            extraction, _num(head.get("loss")), _with_ci(head.get("accuracy"), _get(head, "ci", "accuracy"), "sub"),
            _num(head.get("balanced_accuracy")), _num(head.get("roc_auc")),
        ]
        row += [_num(_get(r.baselines, name, "accuracy")) for name in baselines]
        rows.append(row)
    numeric = set(range(5, len(header)))
    blocks: list = [
        _Heading(3, f"Task {task}: {', '.join(classes) or '(no classes recorded)'}"
                    f" ({len(runs)} run{'s' if len(runs) != 1 else ''})"),
        _Table(header, rows, numeric, cls="compare"),
    ]
    tested_on = {(str(r.get("data", default="")), r.get("counts", "test")) for r in runs}
    if len(tested_on) > 1:
        blocks.append(_Para("These runs were tested on different data or test sets: compare them with care.",
                            cls="note"))
    return blocks


def _comparison_note(runs: list[_Run]) -> _Para:
    """What the comparison columns mean, said once under all the tables."""
    methods = sorted({str(r.head.get("ci_method")) for r in runs if r.head.get("ci_method")})
    text = (f"All figures are on the test split. Accuracy intervals: {_ci_level(runs)}, "
            f"{'; '.join(methods) or 'method not recorded'}. Test loss is the mean log-loss of the true class. "
            "Params count the trained model (the head, and the backbone tail when it is trained). "
            "s / epoch is the mean over epochs, the first of which includes compilation; extraction time "
            "covers only the features the cache lacked.")
    if any("pixels" in r.baselines for r in runs):
        text += (" The pixels sentinel is a logistic regression on 32×32 grayscale pixels: a deep result "
                 "close to it says the data, not the model, does the work.")
    return _Para(text, cls="note")


def _warnings_section(runs: list[_Run]) -> list:
    """Every run's warnings, de-duplicated, most serious kind first, each naming its runs."""
    by_text: dict[str, list[_Run]] = {}
    for r in runs:
        for text in r.warnings:
            by_text.setdefault(text, []).append(r)
    blocks: list = [_Heading(2, "Warnings", "warnings")]
    if not by_text:
        blocks.append(_Para("No run recorded a warning."))
        return blocks
    items = []
    for text in _ranked(by_text):
        owners = by_text[text]
        item: list = [_Span(_warning_kind(text) + ": ", "strong"), text, _Span(" — ", "muted"),
                      _Span("runs: " if len(owners) > 1 else "run: ", "muted")]
        for i, r in enumerate(owners):
            if i:
                item.append(", ")
            item.append(_Span(r.name, "link", r.anchor))
        items.append(item)
    blocks.append(_List(items, cls="warnings"))
    return blocks


def _config_rows(r: _Run) -> list:
    counts = r.get("counts", default={})
    head = r.get("head", default={})
    fp = r.get("store", "fingerprint", default={})
    rows = [
        ("Data", [_Span(str(r.get("data", default=_DASH)), "code")]),
        ("Classes", f"{', '.join(r.classes) or _DASH} (task {r.get('task', default='?')})"),
        ("Images", " · ".join(f"{k} {_int(v)}" for k, v in counts.items()) or _DASH),
        ("Validation", str(r.get("validation", default=_DASH))),
        ("Features", ", ".join(f"{k} {fp[k]}" for k in ("backbone", "layer", "image_size", "preprocess",
                                                         "precision", "store_dtype") if k in fp) or _DASH),
    ]
    weights = [str(r.get("weights", "identity", default=r.get("features", "weights", default=_DASH)))]
    if r.get("weights", "path"):
        weights.append(f" from {r.get('weights', 'path')}")
    if r.random_weights:
        weights = [_Span("RANDOM", "flag"), " ", *weights]
    rows.append(("Weights", weights))
    keys = (("epochs", "epochs"), ("batch_size", "batch"), ("steps_per_epoch", "steps/epoch"),
            ("validation_steps", "validation steps"), ("lr", "lr"), ("units", "units"),
            ("dropout", "dropout"), ("l2", "l2"))
    head_text = " · ".join(f"{label} {head[k]}" for k, label in keys if head.get(k) is not None)
    if head.get("train_tail"):
        head_text += " · trains the backbone tail"
    rows.append(("Head", head_text or _DASH))
    rows.append(("Baselines", ", ".join(head.get("baselines") or r.baselines) or "none"))
    rows.append(("Seed", str(head.get("seed", r.get("features", "seed", default=_DASH)))))
    store = [_Span(str(r.get("store", "fingerprint_id", default=_DASH)), "code")]
    if r.get("store", "path"):
        store += [_Span(f" {r.get('store', 'path')}", "muted")]
    rows.append(("Store fingerprint", store))
    device = r.get("run", "device")
    backend = r.get("training", "backend") or r.get("versions", "keras_backend")
    if device or backend:
        rows.append(("Device", " · ".join(x for x in (f"device {device}" if device else "",
                                                     f"backend {backend}" if backend else "") if x)))
    timings = r.get("timings", default={})
    if timings:
        rows.append(("Timings", " · ".join(
            f"{label} {_seconds(timings[k])} s" for k, label in (
                ("extraction_seconds", "extraction"), ("head_seconds", "head"),
                ("baselines_seconds", "baselines"), ("total_seconds", "total")) if timings.get(k) is not None)
            or _DASH))
    ci_method = r.head.get("ci_method")
    if ci_method:
        rows.append(("Intervals", f"{_ci_level([r])} {ci_method}"))
    versions = r.get("versions", default={})
    shown = [f"xrayfeat {r.get('xrayfeat', default='?')}"] + [
        f"{k} {v}" for k, v in versions.items() if k != "keras_backend"]
    rows.append(("Versions", " · ".join(shown)))
    rows.append(("Created", str(r.get("created", default=_DASH))))
    return [[_Span(k, "strong"), v] for k, v in rows]


def _results_table(r: _Run) -> _Table:
    header = ["Model", "Accuracy", "Balanced acc.", "ROC-AUC", "Loss", "n", "CV accuracy (train)"]
    rows = []
    for name, m in [("head", r.head), *r.baselines.items()]:
        if not m:
            continue
        cv = _get(r.config, "baselines", name, default={})
        cv_text = _DASH
        if isinstance(cv, dict) and _float(cv.get("cv_accuracy")) is not None:
            cv_text = _num(cv["cv_accuracy"])
            if _float(cv.get("cv_accuracy_std")) is not None:
                cv_text += f" ± {_num(cv['cv_accuracy_std'])}"
        label = name + (" (sentinel)" if name == "pixels" else "")
        rows.append([label, _with_ci(m.get("accuracy"), _get(m, "ci", "accuracy")),
                     _with_ci(m.get("balanced_accuracy"), _get(m, "ci", "balanced_accuracy")),
                     _with_ci(m.get("roc_auc"), _get(m, "ci", "roc_auc")), _num(m.get("loss")),
                     _int(m.get("n")), cv_text])
    return _Table(header, rows, set(range(1, len(header))))


def _per_class_table(r: _Run) -> _Table | None:
    per_class = r.head.get("per_class")
    if not isinstance(per_class, dict) or not per_class:
        return None
    auc = r.head.get("roc_auc_per_class") or {}
    rows = [[name, _num(m.get("precision")), _num(m.get("recall")), _num(m.get("f1")),
             _num(auc.get(name)), _int(m.get("support"))]
            for name, m in per_class.items() if isinstance(m, dict)]
    return _Table(["Class", "Precision", "Recall", "F1", "ROC-AUC (one vs rest)", "Support"], rows, {1, 2, 3, 4, 5})


def _by_source_table(r: _Run) -> _Table | None:
    by_source = r.head.get("by_source")
    if not isinstance(by_source, dict) or not by_source:
        return None
    names = [n for n in r.baselines if isinstance(r.baselines[n].get("by_source"), dict)]
    header = ["Source", "n", "Head accuracy", "Head balanced acc."] + [f"{n} acc." for n in names]
    rows = []
    for source, m in by_source.items():
        row = [str(source), _int(m.get("n")), _with_ci(m.get("accuracy"), m.get("ci_accuracy")),
               _num(m.get("balanced_accuracy"))]
        row += [_num(_get(r.baselines[n], "by_source", source, "accuracy")) for n in names]
        rows.append(row)
    return _Table(header, rows, set(range(1, len(header))))


def _history_text(r: _Run) -> str | None:
    rows = r.history
    if not rows:
        return None
    parts = [f"{len(rows)} epoch{'s' if len(rows) != 1 else ''}"]
    val = [(row.get("val_accuracy"), i) for i, row in enumerate(rows) if row.get("val_accuracy") is not None]
    if val:
        best, i = max(val, key=lambda t: (t[0], -t[1]))
        parts.append(f"best validation accuracy {best:.3f} at epoch {i + 1}")
    last = rows[-1]
    if last.get("accuracy") is not None:
        parts.append(f"last training accuracy {last['accuracy']:.3f}")
    secs = [row.get("seconds") for row in rows if row.get("seconds") is not None]
    if secs:
        text = f"first epoch {_seconds(secs[0])} s (includes compilation)"
        if len(secs) > 1:
            later = sorted(secs[1:])
            mid = len(later) // 2
            median = later[mid] if len(later) % 2 else (later[mid - 1] + later[mid]) / 2
            text += f", later epochs median {_seconds(median)} s"
        parts.append(text)
    return "; ".join(parts) + "."


def _figures(r: _Run, out: Path) -> list[_Figure]:
    """The run's figures, copied to ``out/figures/<run>-<file>.png`` for the Markdown."""
    found = [(r.path / name, caption) for name, caption in FIGURES]
    found += [(p, "embedding " + p.name[len("embed-"):-len(".png")])
              for p in sorted(r.path.glob("embed-*.png")) if p.is_file()]
    figures = []
    for src, caption in found:
        try:
            data = src.read_bytes()
        except OSError:
            continue
        size = _png_size(data)
        if size is None:
            log.warning("%s: not a PNG; left out of the report", src)
            continue
        name = f"{r.slug}-{src.name}"
        (out / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / "figures" / name)
        width, height = size
        figures.append(_Figure(caption, data, f"figures/{name}", wide=height > 0 and width / height >= _WIDE_ASPECT))
    return figures


def _run_section(r: _Run, out: Path) -> list:
    blocks: list = [_Heading(2, f"Run {r.name}", r.anchor, cls="run"),
                    _Para([_Span(str(r.path), "code")], cls="note")]
    blocks += [_Heading(3, "Configuration"), _Table(["Setting", "Value"], _config_rows(r), cls="kv")]
    blocks += [_Heading(3, "Test results"), _results_table(r)]
    per_class = _per_class_table(r)
    if per_class:
        blocks += [_Heading(3, "Per class (head)"), per_class]
    by_source = _by_source_table(r)
    if by_source:
        blocks += [_Heading(3, "By source"), by_source]
    history = _history_text(r)
    if history:
        blocks += [_Heading(3, "Training"), _Para(history)]
    figures = _figures(r, out)
    blocks += [_Heading(3, "Figures"), _Figures(figures) if figures else _Para("No figures in the run folder.", "note")]
    blocks.append(_Heading(3, "Warnings"))
    warnings = r.warnings
    items = [[_Span(_warning_kind(text) + ": ", "strong"), text] for text in _ranked(warnings)]
    blocks.append(_List(items, cls="warnings") if items else _Para("None."))
    return blocks


def _document(runs: list[_Run], out: Path) -> tuple[list, int]:
    groups = _groups(runs)
    n_warn = len({w for r in runs for w in r.warnings})
    summary = (f"{len(runs)} run{'s' if len(runs) != 1 else ''} in {len(groups)} task"
               f"{'s' if len(groups) != 1 else ''}; {n_warn} distinct warning{'s' if n_warn != 1 else ''}. "
               f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by xrayfeat {__version__}.")
    contents: list = [[_Span("Comparison", "link", "comparison")], [_Span("Warnings", "link", "warnings")]]
    contents += [[_Span(f"Run {r.name}", "link", r.anchor)] for r in runs]
    blocks: list = [_Heading(1, "xrayfeat report"), _Para(summary, cls="lead"), _List(contents, cls="toc"),
                    _Heading(2, "Comparison", "comparison")]
    for task, classes, members in groups:
        blocks += _comparison(task, classes, members)
    blocks.append(_comparison_note(runs))
    blocks += _warnings_section(runs)
    for r in runs:
        blocks += _run_section(r, out)
    return blocks, len(groups)


# --------------------------------------------------------------------------- Markdown


def _md_text(text: str) -> str:
    """Escape what would break a table or turn record text into markup."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace("\r", " ").replace("\n", " "))


def _md_inline(content) -> str:
    if isinstance(content, list):
        return "".join(_md_inline(c) for c in content)
    if isinstance(content, _Span):
        text = _md_text(content.text)
        if content.role in ("flag", "strong"):
            stripped = text.strip()
            return text.replace(stripped, f"**{stripped}**") if stripped else text
        if content.role == "code":
            return "`" + str(content.text).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"
        if content.role == "link":
            return f"[{text.replace('[', '(').replace(']', ')')}](#{content.target})"
        return text
    return _md_text(content)


def _render_markdown(blocks) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, _Heading):
            out.append("#" * b.level + " " + _md_text(b.text))
        elif isinstance(b, _Para):
            text = _md_inline(b.content)
            out.append(f"*{text}*" if b.cls == "note" and not text.startswith("`") else text)
        elif isinstance(b, _List):
            out.append("\n".join("- " + _md_inline(item) for item in b.items))
        elif isinstance(b, _Table):
            lines = ["| " + " | ".join(_md_text(h) for h in b.header) + " |",
                     "|" + "|".join("---:" if i in b.numeric else "---" for i in range(len(b.header))) + "|"]
            lines += ["| " + " | ".join(_md_inline(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, _Figures):
            out.append("\n\n".join(
                f"![{_md_text(f.caption).replace('[', '(').replace(']', ')')}]({f.md_path})  \n*{_md_text(f.caption)}*"
                for f in b.figures))
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: #1f2328;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 32px 56px; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 5px; border-bottom: 2px solid #d8dee4; }
h3 { font-size: 15.5px; margin: 22px 0 8px; }
p { margin: 6px 0 10px; }
p.lead { color: #424a53; }
p.note { color: #57606a; font-size: 12.5px; max-width: 78em; }
a { color: #0550ae; text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  background: #f3f4f6; padding: 1px 4px; border-radius: 3px; word-break: break-all; }
ul.toc { list-style: none; padding: 0; margin: 8px 0 0; display: flex; flex-wrap: wrap; gap: 4px 18px; }
ul.warnings { padding-left: 20px; }
ul.warnings li { margin: 4px 0; }
h2 + ul.warnings { border-left: 4px solid #bf8700; background: #fff8c5; padding: 8px 12px 8px 30px; }
.scroll { overflow-x: auto; margin: 4px 0 8px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 5px 9px; border-bottom: 1px solid #d8dee4; text-align: left; vertical-align: top; }
thead th { background: #f6f8fa; border-bottom: 1px solid #afb8c1; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
.sub { color: #6e7781; }
td .sub { display: block; font-size: 11.5px; }
table.compare { font-size: 12.5px; }
table.compare thead th { vertical-align: bottom; }
table.compare td:first-child { white-space: nowrap; }
table.kv { width: 100%; }
table.kv td:first-child { width: 11em; color: #424a53; white-space: nowrap; }
table.kv tbody tr:nth-child(even) { background: none; }
.muted { color: #6e7781; }
.flag { display: inline-block; background: #cf222e; color: #fff; font-weight: 700; font-size: 11.5px;
  letter-spacing: .04em; padding: 0 6px; border-radius: 3px; line-height: 1.6; }
.figs { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; max-width: calc(50% - 7px); border: 1px solid #d8dee4; border-radius: 4px; padding: 6px; }
figure.wide { max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #57606a; margin-top: 4px; }
@media (max-width: 800px) { figure { max-width: 100%; } main { padding: 16px; } }
@media print {
  body { font-size: 11px; }
  main { max-width: none; padding: 0; }
  h2.run { break-before: page; }
  h2, h3 { break-after: avoid; }
  figure, tr, ul.warnings li { break-inside: avoid; }
  .scroll { overflow: visible; }
  table, table.compare { font-size: 9.5px; }
  td .sub { font-size: 8.5px; }
  th, td { padding: 3px 3px; }
  p.note, figcaption { font-size: 9.5px; }
  .flag { font-size: 8.5px; padding: 0 3px; }
  h1 { font-size: 20px; } h2 { font-size: 16px; } h3 { font-size: 13px; }
  figure { max-width: calc(50% - 7px); }
  figure.wide { max-width: 100%; }
  a { color: inherit; }
  ul.toc { display: none; }
  .flag, h2 + ul.warnings, thead th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _html_inline(content) -> str:
    if isinstance(content, list):
        return "".join(_html_inline(c) for c in content)
    if isinstance(content, _Span):
        text = _esc(content.text)
        if content.role == "link":
            return f'<a href="#{_esc(content.target)}">{text}</a>'
        if content.role == "code":
            return f"<code>{text}</code>"
        if content.role == "strong":
            return f"<strong>{text}</strong>"
        if content.role in ("flag", "muted", "sub"):
            return f'<span class="{content.role}">{text}</span>'
        return text
    return _esc(content)


def _cls(name: str) -> str:
    return f' class="{_esc(name)}"' if name else ""


def _render_html(blocks, title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, _Heading):
            anchor = f' id="{_esc(b.anchor)}"' if b.anchor else ""
            body.append(f"<h{b.level}{anchor}{_cls(b.cls)}>{_esc(b.text)}</h{b.level}>")
        elif isinstance(b, _Para):
            body.append(f"<p{_cls(b.cls)}>{_html_inline(b.content)}</p>")
        elif isinstance(b, _List):
            items = "".join(f"<li>{_html_inline(item)}</li>" for item in b.items)
            body.append(f"<ul{_cls(b.cls)}>{items}</ul>")
        elif isinstance(b, _Table):
            def cell(tag, i, content):
                return f"<{tag}{_cls('num' if i in b.numeric else '')}>{_html_inline(content)}</{tag}>"

            head = "".join(cell("th", i, h) for i, h in enumerate(b.header))
            rows = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in b.rows)
            if b.cls == "kv":  # a settings list: no header row
                body.append(f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>')
            else:
                body.append(f'<div class="scroll"><table{_cls(b.cls)}><thead><tr>{head}</tr></thead>'
                            f"<tbody>{rows}</tbody></table></div>")
        elif isinstance(b, _Figures):
            figs = []
            for f in b.figures:
                uri = "data:image/png;base64," + base64.b64encode(f.data).decode("ascii")
                figs.append(f'<figure{_cls("wide" if f.wide else "")}><img src="{uri}" alt="{_esc(f.caption)}">'
                            f"<figcaption>{_esc(f.caption)}</figcaption></figure>")
            body.append('<div class="figs">' + "".join(figs) + "</div>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


# --------------------------------------------------------------------------- entry point


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(runs: list[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Write ``OUT/report.md`` and a self-contained ``OUT/report.html`` comparing ``runs``.

    ``runs`` are run folders written by ``fit-head``; each is read from its
    ``config.json``/``metrics.json`` (plus ``history.csv`` and PNG figures when
    present). Runs are grouped into one comparison table per task (task name and
    class list), so runs of different tasks or feature fingerprints can share a
    report. ``OUT`` is created when missing; the figures are copied to
    ``OUT/figures/<run>-<file>.png`` for the Markdown and embedded in the HTML.

    Returns ``{"markdown": path, "html": path, "runs": n, "tables": k}`` (paths as
    str). Raises :class:`~xrayfeat.errors.XrayfeatError` naming the folder when one
    is not a run, and when no run is given.
    """
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    paths = list(runs or [])
    if not paths:
        raise XrayfeatError("no runs given; pass one or more run folders made by fit-head (runs/<name>)")
    loaded = _load_runs(paths)
    out = Path(os.fspath(out))
    if out.exists() and not out.is_dir():
        raise XrayfeatError(f"{out}: exists and is not a folder; pass a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    blocks, n_tables = _document(loaded, out)
    md_path, html_path = out / "report.md", out / "report.html"
    _write(md_path, _render_markdown(blocks))
    title = "xrayfeat report: " + ", ".join(r.name for r in loaded[:6]) + (" …" if len(loaded) > 6 else "")
    _write(html_path, _render_html(blocks, title))
    log.info("report: %s and %s (%d runs, %d tables)", md_path, html_path, len(loaded), n_tables)
    return {"markdown": str(md_path), "html": str(html_path), "runs": len(loaded), "tables": n_tables}
