"""xrayfeat.analysis.plots: every figure writes a valid, non-trivial PNG and leaves nothing open."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xrayfeat.analysis import plots

BINARY = ["normal", "pneumonia"]
FOUR = ["COVID-19", "normal", "bacterial pneumonia", "viral pneumonia"]


def _data(classes, n=120, seed=0):
    rng = np.random.default_rng(seed)
    k = len(classes)
    y = np.arange(n) % k
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return y, p


def _check_png(path, min_w=300, min_h=250):
    assert path.exists() and path.stat().st_size > 2000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert w >= min_w and h >= min_h, im.size
        # not a blank canvas
        assert len(im.convert("L").getcolors(maxcolors=1 << 20)) > 10


@pytest.fixture(autouse=True)
def _no_open_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before == []


def _confusion(y, p, k):
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, p.argmax(axis=1)), 1)
    return cm.tolist()


@pytest.mark.parametrize("classes", [BINARY, FOUR], ids=["binary", "four"])
@pytest.mark.parametrize("kind", ["curves", "confusion", "roc", "embedding"])
def test_each_plot_writes_a_png(tmp_path, classes, kind):
    y, p = _data(classes)
    path = tmp_path / "sub" / f"{kind}.png"  # parent folders are created
    if kind == "curves":
        h = {"accuracy": [0.5, 0.7, 0.8, 0.85], "val_accuracy": [0.5, 0.65, 0.7, 0.68],
             "loss": [1.0, 0.6, 0.4, 0.3], "val_loss": [1.1, 0.8, 0.7, 0.75]}
        out = plots.plot_curves(h, path, title="head")
        _check_png(out, min_w=700)
    elif kind == "confusion":
        out = plots.plot_confusion(_confusion(y, p, len(classes)), classes, path, title="test")
        _check_png(out)
    elif kind == "roc":
        out = plots.plot_roc(y, p, classes, path, title="ROC")
        _check_png(out)
    else:
        rng = np.random.default_rng(1)
        coords = rng.normal(size=(len(y), 2)) + y[:, None] * 2.0
        splits = np.array(["train", "test", "val"])[np.arange(len(y)) % 3]
        out = plots.plot_embedding(coords, y, classes, path, splits=splits, title="t-SNE", subtitle="perplexity 30")
        _check_png(out)
    assert out == path


def test_curves_tolerate_missing_keys(tmp_path):
    _check_png(plots.plot_curves({"loss": [1.0, 0.5]}, tmp_path / "a.png"))
    _check_png(plots.plot_curves({"acc": [0.5], "val_acc": [0.6], "val_loss": [float("nan")]}, tmp_path / "c.png"))
    long = {"accuracy": list(np.linspace(0.5, 0.99, 200)), "val_accuracy": list(np.linspace(0.5, 0.9, 200))}
    _check_png(plots.plot_curves(long, tmp_path / "d.png"))


def test_roc_binary_sigmoid_and_absent_class(tmp_path):
    y, p = _data(BINARY)
    _check_png(plots.plot_roc(y, p[:, 1], BINARY, tmp_path / "sigmoid.png"))
    _check_png(plots.plot_roc(y, p[:, 1:], BINARY, tmp_path / "sigmoid1.png"))
    y4, p4 = _data(FOUR)
    y4[y4 == 3] = 2  # "viral pneumonia" absent from the truth: no curve, no crash
    _check_png(plots.plot_roc(y4, p4, FOUR, tmp_path / "absent.png"))


def test_confusion_with_empty_row_and_many_classes(tmp_path):
    _check_png(plots.plot_confusion([[3, 1], [0, 0]], BINARY, tmp_path / "empty_row.png"))
    k = 9
    cm = np.random.default_rng(0).integers(0, 30, size=(k, k))
    _check_png(plots.plot_confusion(cm, [f"class {i}" for i in range(k)], tmp_path / "many.png"))
    with pytest.raises(ValueError, match="confusion"):
        plots.plot_confusion([[1, 2]], BINARY, tmp_path / "bad.png")


def test_embedding_variants(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    coords = rng.normal(size=(n, 2))
    labels = rng.integers(0, 10, n)
    # no splits, more classes than the colour-blind palette, unknown split names
    _check_png(plots.plot_embedding(coords, labels, [f"c{i}" for i in range(10)], tmp_path / "a.png"))
    splits = rng.choice(["train", "holdout", None], n)
    _check_png(plots.plot_embedding(coords, labels % 2, BINARY, tmp_path / "b.png", splits=splits))
    with pytest.raises(ValueError, match="coords"):
        plots.plot_embedding(coords[:, :1], labels, BINARY, tmp_path / "bad.png")


def test_palette_is_distinct():
    assert len(set(plots.class_colours(8))) == 8
    assert len(set(plots.class_colours(14))) == 14
    assert plots.class_colours(2) == plots.PALETTE[:2]


def test_plotting_leaves_global_matplotlib_state_alone(tmp_path):
    import matplotlib

    backend, rc = matplotlib.get_backend(), dict(matplotlib.rcParams)
    plots.plot_curves({"loss": [1.0, 0.5]}, tmp_path / "x.png")
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == rc


@pytest.fixture
def drawn(monkeypatch):
    """The axes of each figure as it is saved: (legend texts, x of vertical lines, axis labels) per panel."""
    saved = []
    save = plots.save_figure

    def spy(fig, path, **kw):
        saved.append([
            {
                "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
                "vlines": [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"
                           and len(set(line.get_xdata())) == 1],
                "labels": (ax.get_xlabel(), ax.get_ylabel()),
            }
            for ax in fig.axes
        ])
        return save(fig, path, **kw)

    monkeypatch.setattr(plots, "save_figure", spy)
    return saved


HISTORY = {"accuracy": [0.5, 0.7, 0.8, 0.85], "val_accuracy": [0.5, 0.65, 0.7, 0.68],
           "loss": [1.0, 0.6, 0.4, 0.3], "val_loss": [1.1, 0.8, 0.7, 0.75]}


def test_curves_mark_the_kept_epoch(tmp_path, drawn):
    plain = plots.plot_curves(HISTORY, tmp_path / "plain.png")
    marked = plots.plot_curves(HISTORY, tmp_path / "marked.png", best_epoch=2)
    _check_png(marked, min_w=700)
    assert [panel["vlines"] for panel in drawn[0]] == [[], []]
    assert [panel["vlines"] for panel in drawn[1]] == [[2], [2]]
    assert all("kept: epoch 2" in panel["legend"] for panel in drawn[1])
    assert plain.read_bytes() != marked.read_bytes()
    with pytest.raises(ValueError, match="'best_epoch'"):
        plots.plot_curves(HISTORY, tmp_path / "bad.png", best_epoch=0)


def test_calibration_plot(tmp_path, drawn):
    from xrayfeat.analysis.metrics import calibration

    y, p = _data(FOUR)
    curves = {"head": calibration(y, p, FOUR), "pixels": calibration(y, np.full_like(p, 0.25), FOUR)}
    out = plots.plot_calibration(curves, tmp_path / "calibration.png", title="test")
    assert out == tmp_path / "calibration.png"
    _check_png(out)
    reliability, counts = drawn[0]
    head = curves["head"]
    assert reliability["legend"] == [f"head (ECE {head['ece']:.3f}, Brier {head['brier']:.3f})",
                                     "pixels (ECE 0.000, Brier 0.750)", "perfectly calibrated"]
    assert reliability["labels"][1] == "accuracy"
    assert counts["labels"] == ("confidence (top-label)", "images")
    with pytest.raises(ValueError, match="'curves'"):
        plots.plot_calibration({}, tmp_path / "empty.png")
