"""Grad-CAM of the seed's head, from a cached spatial map and the head's arrays alone.

Grad-CAM (Selvaraju et al., 2017) explains one class score with the feature map
``A`` (H, W, C) at a layer: the weight of channel ``c`` is the spatial mean of
``d score / d A[..., c]``, and the map is ``ReLU(sum_c w_c A[..., c])``. The
seed's head (BatchNormalization → Flatten → Dense(ReLU) → Dropout → Dense) reads
the cached map at the run's cut layer directly, so the gradient needs no
backbone and no framework: at inference BatchNormalization is a per-channel
scale, Dropout does nothing, and the score is piecewise linear in ``A``::

    d score / d A = bn_scale * reshape(hidden_kernel @ (relu'(hidden) * v))

where ``v`` is the output kernel's column for the class. This equals Grad-CAM
computed through the whole backbone + head model at the same layer
(``tests/test_explain.py`` checks it against TensorFlow's autodiff).

The class score is the pre-activation logit, as in the Grad-CAM paper. A
softmax head has one logit per class. A binary (sigmoid) head has one logit
``z``, the log-odds of class 1: the score of class 1 is ``z`` and that of class
0 is ``-z``, so the two classes' maps are the positive and negative parts of
the same weighted sum, and never both positive at one place. A multi-label head
(``multilabel`` in its arrays) has one sigmoid logit per finding, and a
finding's score is its own logit: its map shows where that finding is seen,
whatever the other findings.

The maps have the cut layer's resolution (7×7 for VGG16 ``block5_pool`` at
224 px; 14×14 at an earlier cut). :func:`plot_overlay` draws one map on its
X-ray (decoded as extraction decodes it); :func:`example_grid` draws a few test
images per class, right and wrong, for the run folder and the report.

Only numpy, PIL and matplotlib are used: explaining cached images loads no
deep-learning framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from PIL import Image

from xrayfeat.data.images import read_image
from xrayfeat.analysis.plots import PALETTE, new_figure, save_figure

__all__ = ["CamResult", "choose_examples", "example_grid", "grad_cam", "plot_overlay", "upsample"]

#: The colour map of the overlays: perceptually uniform, readable in grey and under colour-vision deficiencies.
CMAP = "inferno"
#: Opacity of the heat map over the X-ray.
ALPHA = 0.45
_RIGHT, _WRONG = PALETTE[2], PALETTE[3]  # bluish green, vermilion


@dataclass(frozen=True)
class CamResult:
    """Grad-CAM of a batch of images: one map per image, at the map's own resolution."""

    maps: np.ndarray  # (n, H, W) float32: ReLU(sum_c w_c A_c)
    weights: np.ndarray  # (n, C) float32: the channel weights, spatial means of d score / d A
    target: np.ndarray  # (n,) int: the class each map explains
    proba: np.ndarray  # (n, K) float32: the head's class probabilities ([1 - p, p] for a sigmoid head)

    @property
    def predicted(self) -> np.ndarray:
        """The head's predicted class of each image."""
        return self.proba.argmax(axis=1)


def grad_cam(spatial, head: Mapping[str, np.ndarray], target: int | None = None, *,
             batch_size: int = 256) -> CamResult:
    """Grad-CAM of the seed's head for each map of ``spatial`` (n, H, W, C); see the module docstring.

    ``head``: the head's arrays (:func:`xrayfeat.models.head_numpy.arrays_of`, or
    ``NumpyHead(...).arrays``). ``target``: the class index every map explains;
    None explains each image's predicted class.
    """
    a = np.asarray(spatial, dtype=np.float32)
    kernel = head["hidden_kernel"]
    if a.ndim != 4 or int(np.prod(a.shape[1:])) != kernel.shape[0]:
        raise ValueError(f"The 'spatial' parameter of grad_cam must have shape (n, H, W, C) with H*W*C = "
                         f"{kernel.shape[0]} (the head's input). Got shape {a.shape} instead.")
    n_classes = head["out_kernel"].shape[1] if _multilabel(head) else max(2, head["out_kernel"].shape[1])
    if target is not None and not (isinstance(target, (int, np.integer)) and 0 <= target < n_classes):
        raise ValueError(f"The 'target' parameter of grad_cam must be a class index in 0..{n_classes - 1} or None. "
                         f"Got {target!r} instead.")
    scale = (head["bn_gamma"] / np.sqrt(head["bn_variance"] + head["bn_epsilon"])).astype(np.float32)
    shift = (head["bn_beta"] - head["bn_mean"] * scale).astype(np.float32)
    parts = [_batch(a[i:i + batch_size], head, scale, shift, target) for i in range(0, len(a), batch_size)]
    if not parts:
        h, w, c = a.shape[1:]
        return CamResult(np.zeros((0, h, w), np.float32), np.zeros((0, c), np.float32), np.zeros(0, np.int64),
                         np.zeros((0, n_classes), np.float32))
    return CamResult(*(np.concatenate(column) for column in zip(*parts)))


def _batch(a: np.ndarray, head, scale: np.ndarray, shift: np.ndarray, target: int | None):
    """(maps, weights, target, proba) of one batch: the head's forward pass, then its gradient back to ``a``."""
    n = len(a)
    hidden = (a * scale + shift).reshape(n, -1) @ head["hidden_kernel"] + head["hidden_bias"]
    logits = np.maximum(hidden, 0) @ head["out_kernel"] + head["out_bias"]
    sigmoid = str(head["activation"]) == "sigmoid"
    multilabel = _multilabel(head)
    proba = _sigmoid(logits) if multilabel else _probabilities(logits, sigmoid)
    k = proba.argmax(axis=1) if target is None else np.full(n, target)
    out = head["out_kernel"]
    if sigmoid and not multilabel:  # one logit z: score z for class 1, -z for class 0
        d_score = out[:, 0][None, :] * np.where(k == 1, 1.0, -1.0).astype(np.float32)[:, None]
    else:
        d_score = out[:, k].T
    d_hidden = d_score * (hidden > 0)  # ReLU's gradient (0 at 0, as the frameworks take it)
    grad = (d_hidden @ head["hidden_kernel"].T).reshape(a.shape) * scale  # back through Flatten and BatchNorm
    weights = grad.mean(axis=(1, 2))
    maps = np.maximum(np.einsum("nhwc,nc->nhw", a, weights), 0)
    return maps.astype(np.float32), weights.astype(np.float32), k.astype(np.int64), proba.astype(np.float32)


def _multilabel(head) -> bool:
    """Whether the head gives one sigmoid per finding (each finding's map is its own logit's gradient)."""
    return bool(head.get("multilabel", False))


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # a logit below -88 gives exp = inf and p = 0, as it should
        return 1 / (1 + np.exp(-logits))


def _probabilities(logits: np.ndarray, sigmoid: bool) -> np.ndarray:
    if sigmoid:
        p = _sigmoid(logits)
        return np.concatenate([1 - p, p], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def upsample(cam, size: int) -> np.ndarray:
    """A map (H, W) resized to (size, size) by bilinear interpolation, as float32."""
    image = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32))  # 2-D float32: PIL mode "F"
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


# --------------------------------------------------------------------------- figures


def _draw(ax, pixels: np.ndarray, cam: np.ndarray) -> None:
    """The X-ray, and over it the map upsampled to its size and scaled to its own maximum."""
    heat = upsample(cam, pixels.shape[0])
    top = float(heat.max())
    ax.imshow(pixels, interpolation="nearest")
    ax.imshow(heat / top if top > 0 else heat, cmap=CMAP, vmin=0.0, vmax=1.0, alpha=ALPHA, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_overlay(pixels, cam, path, *, title: str = "", note: str = "") -> Path:
    """One X-ray (S, S, 3 uint8) with its Grad-CAM map (H, W) on top and a colour bar; written as a PNG.

    ``note`` (e.g. the map's resolution and layer) is printed under the image.
    """
    pixels = np.asarray(pixels)
    fig = new_figure(5.2, 5.0)
    ax = fig.subplots()
    _draw(ax, pixels, np.asarray(cam, dtype=np.float32))
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), CMAP), ax=ax, fraction=0.046, pad=0.03)  # opaque
    bar.set_label("Grad-CAM, fraction of this image's maximum", fontsize=8.5)
    bar.outline.set_visible(False)
    if not np.any(np.asarray(cam) > 0):
        note = "the map is zero: no part of the image raises this class's score" + (f"\n{note}" if note else "")
    if title:
        ax.set_title(title, fontsize=11, fontweight="bold")
    if note:
        ax.set_xlabel(note, fontsize=8.5, color="0.3")
    return save_figure(fig, path, tight_layout=False)


def choose_examples(y_true, proba, per_class: int = 2) -> list[tuple[list[int], list[int]]]:
    """For each class: up to ``per_class`` right and ``per_class`` wrong images of that true class.

    Row indices, the most confident prediction first (ties: the earlier row),
    so the choice is the same on every call.
    """
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"The 'per_class' parameter of choose_examples must be an int >= 1. Got {per_class!r} instead.")
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"The 'proba' parameter of choose_examples must have shape ({len(y)}, K). "
                         f"Got shape {p.shape} instead.")
    predicted = p.argmax(axis=1)
    order = np.lexsort((np.arange(len(y)), -p.max(axis=1)))  # confidence descending, then row ascending
    chosen = []
    for k in range(p.shape[1]):
        right = [int(i) for i in order if y[i] == k and predicted[i] == k][:per_class]
        wrong = [int(i) for i in order if y[i] == k and predicted[i] != k][:per_class]
        chosen.append((right, wrong))
    return chosen


def example_grid(paths: Sequence, spatial, head_arrays: Mapping[str, np.ndarray], y_true, proba,
                 classes: Sequence[str], out_path, *, image_size: int, per_class: int = 2,
                 title: str = "") -> Path | None:
    """A grid of Grad-CAM overlays of test images: one row per true class, right predictions then wrong.

    ``paths``, ``spatial`` (n, H, W, C), ``y_true`` (n,) and ``proba`` (n, K,
    the head's test probabilities) describe the same images; :func:`choose_examples`
    picks the cells and each map explains the class ``proba`` predicts. Images are decoded at ``image_size`` as
    extraction decodes them. None (and nothing written) when there is no image.
    """
    if len(paths) == 0:
        return None
    chosen = choose_examples(y_true, proba, per_class)
    spatial = np.asarray(spatial)
    p = np.asarray(proba, dtype=np.float64)
    cols = 2 * per_class
    fig = new_figure(2.1 * cols + 0.6, 2.35 * len(classes) + 0.7)
    axes = np.asarray(fig.subplots(len(classes), cols, squeeze=False))
    for k, (right, wrong) in enumerate(chosen):
        for j, ax in enumerate(axes[k]):
            ax.set_xticks([])
            ax.set_yticks([])
            half = right if j < per_class else wrong
            slot = j if j < per_class else j - per_class
            if slot >= len(half):
                _empty(ax, "right" if j < per_class else "wrong", first=slot == 0)
                continue
            i = half[slot]
            predicted = int(p[i].argmax())
            cam = grad_cam(spatial[i:i + 1], head_arrays, predicted).maps[0]
            _draw(ax, read_image(paths[i], image_size), cam)
            _caption(ax, classes[predicted], float(p[i].max()), correct=j < per_class)
        axes[k][0].set_ylabel(f"true: {classes[k]}", fontsize=10, fontweight="bold")
    h, w = spatial.shape[1:3]
    note = f"Grad-CAM of the predicted class ({h}×{w} map); per true class, right then wrong, most confident first"
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=10)
    return save_figure(fig, out_path, tight_layout=False)


def _caption(ax, predicted: str, probability: float, *, correct: bool) -> None:
    colour = _RIGHT if correct else _WRONG
    ax.set_title(f"{'right' if correct else 'wrong'}: {predicted} {probability:.2f}", fontsize=8.5, color=colour)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color(colour)
        spine.set_linewidth(2.5)


def _empty(ax, kind: str, *, first: bool) -> None:
    for spine in ax.spines.values():
        spine.set_visible(False)
    if first:
        ax.text(0.5, 0.5, f"no {kind}\npredictions", ha="center", va="center", color="0.5", fontsize=9,
                transform=ax.transAxes)
