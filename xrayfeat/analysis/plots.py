"""Figures for runs and reports: training curves, confusion matrix, ROC, calibration, embedding.

Each function draws one figure, writes it as a PNG and returns the path. Figures
are built with :class:`matplotlib.figure.Figure` on an Agg canvas, never through
``pyplot``: no backend is selected, nothing is registered with a figure manager
and nothing is left open, so the functions are safe in worker processes, servers
and tests. Font sizes are applied with a ``rc_context`` that is restored when
each function returns; nothing changes at import. Colours come from the Okabe-Ito palette,
which stays distinguishable under the common colour-vision deficiencies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from xrayfeat.fileio import atomic_path

__all__ = ["plot_curves", "plot_confusion", "plot_roc", "plot_calibration", "plot_embedding", "class_colours",
           "PALETTE"]

DPI = 110

#: Okabe & Ito (2008) colour-blind-safe palette, black left to last.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

_SPLIT_MARKERS = {"train": "o", "test": "^", "val": "s", "validation": "s", "valid": "s"}
_OTHER_MARKERS = ["D", "v", "P", "X", "<", ">", "h", "*"]
_SPLIT_ORDER = ["train", "val", "validation", "valid", "test"]

_STYLE = {
    "font.size": 9.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def class_colours(n: int) -> list[str]:
    """``n`` distinguishable colours: Okabe-Ito first, then tab20b beyond eight classes.

    Past eight classes colour alone cannot stay colour-blind safe; tab20b's hues
    at least do not repeat the first eight.
    """
    if n <= len(PALETTE):
        return PALETTE[:n]
    from matplotlib import colormaps

    extra = [to_hex(colormaps["tab20b"](i % 20)) for i in range(n - len(PALETTE))]
    return PALETTE + extra


def new_figure(width: float, height: float) -> Figure:
    """A figure drawn off-screen (no pyplot state, safe in worker threads); write it with :func:`save_figure`."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path, *, tight_layout: bool = True) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically (a killed run never leaves half an image), then clear it."""
    out = Path(os.fspath(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    if tight_layout:
        fig.tight_layout()
    # "tight" also keeps legends placed outside the axes, and long tick labels, inside the image.
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.12)
    fig.clear()
    return out


def _rc():
    from matplotlib import rc_context

    return rc_context(_STYLE)


# --------------------------------------------------------------------------- curves


def _series(history: Mapping[str, Sequence[float]], *names: str) -> np.ndarray | None:
    for name in names:
        values = history.get(name)
        if values is not None and len(values):
            return np.asarray(values, dtype=np.float64).reshape(-1)
    return None


def plot_curves(history: Mapping[str, Sequence[float]], path, title: str = "", best_epoch: int | None = None) -> Path:
    """Accuracy (left) and loss (right) per epoch, training against validation.

    ``history`` is a Keras-style dict (``accuracy``, ``val_accuracy``, ``loss``,
    ``val_loss``; ``acc``/``val_acc`` also read). Missing series are skipped and an
    empty panel says so. The best validation epoch is marked, since that is the
    epoch early stopping would keep. ``best_epoch`` (1-based), when given, is the
    epoch whose weights the run kept: a dashed vertical line on each panel with
    data says so, since it may differ from the best of either panel.
    """
    if best_epoch is not None and (isinstance(best_epoch, bool) or not isinstance(best_epoch, int) or best_epoch < 1):
        raise ValueError(f"The 'best_epoch' parameter must be an int >= 1 or None. Got {best_epoch!r} instead.")
    panels = [
        ("accuracy", ("accuracy", "acc"), ("val_accuracy", "val_acc"), np.nanargmax),
        ("loss", ("loss",), ("val_loss",), np.nanargmin),
    ]
    with _rc():
        fig = new_figure(10.0, 4.0)
        axes = fig.subplots(1, 2)
        for ax, (label, train_keys, val_keys, best_of) in zip(axes, panels):
            train = _series(history, *train_keys)
            val = _series(history, *val_keys)
            drawn = [s for s in (train, val) if s is not None and np.isfinite(s).any()]
            ax.set_title(label)
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
            if not drawn:
                ax.text(0.5, 0.5, f"no {label} recorded", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            longest = max(len(s) for s in drawn)
            marker = "o" if longest <= 30 else None
            for series, name, colour in ((train, "train", PALETTE[0]), (val, "validation", PALETTE[1])):
                if series is None:
                    continue
                epochs = np.arange(1, len(series) + 1)
                ax.plot(epochs, series, color=colour, marker=marker, markersize=3.5, lw=1.8, label=name)
            if val is not None and np.isfinite(val).any():
                i = int(best_of(val))
                ax.scatter([i + 1], [val[i]], s=90, facecolors="none", edgecolors="0.15", lw=1.3, zorder=5,
                           label=f"best validation: {val[i]:.3f} (epoch {i + 1})")
            if best_epoch is not None:
                ax.axvline(best_epoch, color="0.3", ls="--", lw=1.2, zorder=1, label=f"kept: epoch {best_epoch}")
            all_values = np.concatenate([s[np.isfinite(s)] for s in drawn])
            if label == "accuracy":
                lo = max(0.0, float(all_values.min()) - 0.05)
                ax.set_ylim(lo, 1.0 + 0.02 * (1.0 - lo))
            else:
                hi = float(all_values.max())
                ax.set_ylim(0.0, hi * 1.08 if hi > 0 else 1.0)
            ax.set_xlim(0.5, max(longest, best_epoch or 0) + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(loc="lower right" if label == "accuracy" else "upper right", frameon=False)
        if title:
            fig.suptitle(title, fontsize=12, fontweight="bold")
        return save_figure(fig, path)


# --------------------------------------------------------------------------- confusion


def plot_confusion(confusion, classes: Sequence[str], path, title: str = "") -> Path:
    """Confusion matrix: rows are true classes, columns predictions.

    Cells show the count and the fraction of the true class; the colour is that
    fraction (row-normalised), so a rare class's errors are as visible as a
    common one's. Row totals appear beside the class names.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"'confusion' must be {k}x{k} for {k} classes. Got shape {cm.shape} instead.")
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(totals[:, None] > 0, cm / np.maximum(totals[:, None], 1), 0.0)
    cell = 0.95 if k <= 6 else 0.7
    side = max(3.2, cell * k + 2.4)
    with _rc():
        fig = new_figure(side + 1.0, side)
        ax = fig.subplots()
        im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
        font = 10 if k <= 6 else (8 if k <= 10 else 6.5)
        for i in range(k):
            for j in range(k):
                colour = "white" if frac[i, j] > 0.55 else "0.1"
                text = f"{cm[i, j]}\n{frac[i, j]:.0%}" if totals[i] > 0 else "0"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=font,
                        fontweight="bold" if i == j else "normal")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        slant = max(len(str(c)) for c in classes) > 6  # long names would overlap
        ax.set_xticklabels([str(c) for c in classes], rotation=30 if slant else 0, ha="right" if slant else "center")
        ax.set_yticklabels([f"{c}\n(n={t})" for c, t in zip(classes, totals)])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(np.arange(k + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(k + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=1.5)
        ax.tick_params(which="minor", length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        n = int(cm.sum())
        acc = np.trace(cm) / n if n else float("nan")
        ax.set_title(f"{title}\n" if title else "", loc="center", fontweight="bold")
        ax.set_title(f"n={n}, accuracy {acc:.3f}", loc="right", fontsize=9, color="0.35")
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label("fraction of true class")
        cbar.outline.set_visible(False)
        return save_figure(fig, path)


# --------------------------------------------------------------------------- ROC


def plot_roc(y_true, proba, classes: Sequence[str], path, title: str = "", *, mask=None) -> Path:
    """ROC curves, one-vs-rest per class, with each AUC in the legend.

    Two classes give one curve, for ``classes[1]`` (a sigmoid output (n,) or
    (n, 1) is accepted). A class that is absent from ``y_true`` (or is all of
    it) has no ROC curve; the legend says so instead of failing.

    Multi-label: ``y_true`` is (n, K) 0/1 targets, ``proba`` (n, K) and
    ``mask`` (n, K) says which entries count (the others are left out of that
    finding's curve); every finding gets a curve.
    """
    from sklearn.metrics import auc as _auc
    from sklearn.metrics import roc_curve

    from xrayfeat.analysis.metrics import as_proba

    k = len(classes)
    multilabel = np.ndim(y_true) == 2
    p = np.asarray(proba, dtype=np.float64) if multilabel else as_proba(proba, k)
    y = np.asarray(y_true).astype(np.int64) if multilabel else np.asarray(y_true).astype(np.int64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"'proba' has {len(p)} rows but 'y_true' has {len(y)} labels.")
    if multilabel:
        counted = np.ones(y.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        columns = [(y[counted[:, c], c] == 1, p[counted[:, c], c]) for c in range(k)]
    else:
        columns = [(y == c, p[:, c]) for c in range(k)]
    which = list(range(k)) if multilabel or k != 2 else [1]
    colours = class_colours(k)
    with _rc():
        fig = new_figure(5.6, 5.2)
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance (0.500)")
        aucs = []
        for c in which:
            pos, score = columns[c]
            name = str(classes[c])
            if pos.all() or not pos.any():
                ax.plot([], [], color=colours[c], lw=2, ls=":", label=f"{name}: undefined (class {'absent' if not pos.any() else 'only'})")
                continue
            fpr, tpr, _ = roc_curve(pos, score)
            a = float(_auc(fpr, tpr))
            aucs.append(a)
            ax.plot(fpr, tpr, color=colours[c], lw=2, label=f"{name} (AUC {a:.3f})", drawstyle="default")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 − specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]  # chance line last
        header = "per finding" if multilabel else "one-vs-rest" if k > 2 else f"positive class: {classes[1]}"
        if (k > 2 or multilabel) and len(aucs) == k:
            header += f", macro AUC {np.mean(aucs):.3f}"
        ax.legend(handles, labels, loc="lower right", title=header, frameon=True, framealpha=0.9,
                  fontsize=8.5 if k <= 6 else 7, title_fontsize=8.5)
        if title:
            ax.set_title(title, fontweight="bold")
        return save_figure(fig, path)


# --------------------------------------------------------------------------- calibration


def plot_calibration(curves: Mapping[str, Mapping], path, title: str = "") -> Path:
    """Reliability diagram: accuracy against top-label confidence, one line per model.

    ``curves`` maps a model's name to its :func:`xrayfeat.analysis.metrics.calibration`
    result (``M["calibration"]``). Each point is a non-empty bin (its mean
    confidence, its accuracy); on the dashed diagonal a model's confidence means
    what it says, below it the model is overconfident. ECE and Brier score are in
    the legend. The panel below counts the images in each bin, so that a point
    resting on three images is not read like one resting on three hundred.
    """
    if not curves:
        raise ValueError("'curves' must hold at least one model's calibration. Got an empty mapping instead.")
    for name, cal in curves.items():
        if not {"curve", "ece", "brier"} <= set(cal):
            raise ValueError(f"'curves' must map names to metrics.calibration() results. "
                             f"Got keys {sorted(cal)!r} for {name!r} instead.")
    share = 0.9 / len(curves)  # of each bin's width, per model's bar
    with _rc():
        fig = new_figure(5.6, 6.4)
        ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfectly calibrated")
        for i, ((name, cal), colour) in enumerate(zip(curves.items(), class_colours(len(curves)))):
            bins = cal["curve"]
            filled = [b for b in bins if b["n"]]
            ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], color=colour, marker="o",
                    markersize=4, lw=1.8, label=f"{name} (ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f})")
            counts.bar([b["lo"] + (b["hi"] - b["lo"]) * (0.05 + i * share) for b in bins], [b["n"] for b in bins],
                       width=[(b["hi"] - b["lo"]) * share for b in bins], align="edge", color=colour, alpha=0.85)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(-0.01, 1.01)
        ax.set_ylabel("accuracy")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[1:] + handles[:1], labels[1:] + labels[:1], loc="upper left", frameon=True,
                  framealpha=0.9, fontsize=8.5)  # the diagonal last, as in the ROC legend
        counts.set_xlabel("confidence (top-label)")
        counts.set_ylabel("images")
        counts.grid(True, axis="y", alpha=0.3)
        if title:
            ax.set_title(title, fontweight="bold")
        return save_figure(fig, path)


# --------------------------------------------------------------------------- embedding


def _marker_for(split: str, others: dict[str, str]) -> str:
    key = split.lower()
    if key in _SPLIT_MARKERS:
        return _SPLIT_MARKERS[key]
    if key not in others:
        others[key] = _OTHER_MARKERS[len(others) % len(_OTHER_MARKERS)]
    return others[key]


def plot_embedding(
    coords,
    labels,
    classes: Sequence[str],
    path,
    *,
    splits=None,
    title: str = "",
    subtitle: str = "",
) -> Path:
    """2-D embedding scatter: colour is the class, marker the split.

    Markers: ``o`` train, ``s`` validation, ``^`` test (others get further
    shapes). Two legends keep the two encodings apart. Axes carry no ticks: t-SNE
    and UMAP coordinates have no units. Point size shrinks with the number of
    points so that dense clouds stay readable. ``subtitle`` (e.g. the method and
    its parameters, or a neighbourhood-preservation score) is printed under the
    title.
    """
    xy = np.asarray(coords, dtype=np.float64)
    lab = np.asarray(labels).astype(np.int64).reshape(-1)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"'coords' must have shape (n, 2). Got shape {xy.shape} instead.")
    if len(lab) != len(xy):
        raise ValueError(f"'labels' has {len(lab)} entries but 'coords' has {len(xy)} rows.")
    if splits is None:
        spl = np.full(len(xy), "", dtype=object)
    else:
        spl = np.asarray([("" if s is None else str(s)) for s in splits], dtype=object)
        if len(spl) != len(xy):
            raise ValueError(f"'splits' has {len(spl)} entries but 'coords' has {len(xy)} rows.")
    k = len(classes)
    colours = class_colours(k)
    n = len(xy)
    size = float(np.clip(3000.0 / max(n, 1) ** 0.85, 5.0, 60.0))
    present_splits = [s for s in _SPLIT_ORDER if s in set(spl)]
    present_splits += sorted(set(spl) - set(present_splits))
    others: dict[str, str] = {}
    with _rc():
        fig = new_figure(7.2, 6.0)
        ax = fig.subplots()
        # Draw train first so that the (usually fewer) test points sit on top.
        for split in present_splits:
            marker = _marker_for(split, others) if split else "o"
            in_split = spl == split
            for c in range(k):
                m = in_split & (lab == c)
                if not m.any():
                    continue
                ax.scatter(xy[m, 0], xy[m, 1], s=size * (1.3 if marker == "^" else 1.0), c=colours[c],
                           marker=marker, alpha=0.8, linewidths=0.4, edgecolors="white", rasterized=n > 5000)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color("0.8")
        counts = np.bincount(lab[(lab >= 0) & (lab < k)], minlength=k)
        class_handles = [
            Line2D([], [], ls="", marker="o", markersize=7, markerfacecolor=colours[c], markeredgecolor="white",
                   label=f"{classes[c]} ({counts[c]})")
            for c in range(k)
        ]
        leg = ax.legend(handles=class_handles, title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                        frameon=False, borderaxespad=0.0, alignment="left")
        if splits is not None and present_splits:
            ax.add_artist(leg)
            leg.set_clip_on(False)  # add_artist clips to the axes, which would hide it from the layout
            split_handles = [
                Line2D([], [], ls="", marker=_marker_for(s, others) if s else "o", markersize=7,
                       markerfacecolor="0.45", markeredgecolor="white", label=f"{s or 'unknown'} ({int((spl == s).sum())})")
                for s in present_splits
            ]
            ax.legend(handles=split_handles, title="split", loc="lower left", bbox_to_anchor=(1.01, 0.0),
                      frameon=False, borderaxespad=0.0, alignment="left")
        if title:
            fig.suptitle(title, fontsize=12, fontweight="bold", x=0.02, ha="left")
        if subtitle:
            ax.set_title(subtitle, fontsize=9, color="0.35", loc="left")
        return save_figure(fig, path)


def calibration_curves(models: Mapping[str, Mapping]) -> dict:
    """What :func:`plot_calibration` draws for scored models (``{name: metrics}``): each model's reliability curve.

    A multi-label model's calibration is one curve per finding; the head's
    findings are drawn (``head: <finding>``), as one line per model would
    mix findings of very different prevalence.
    """
    curves = {}
    for name, figures in models.items():
        calibration = figures.get("calibration")
        if not calibration:
            continue
        if "curve" in calibration:
            curves[name] = calibration
        elif name == "head":
            curves.update({f"head: {finding}": cal for finding, cal in calibration.items() if cal})
    return curves
