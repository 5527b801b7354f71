"""Synthetic chest X-rays: the built-in data set of the demo and the tests.

Real chest X-rays cannot ship with the package, so this module draws procedural
frontal (PA) radiographs: body outline and soft tissue, two lung fields, posterior
and anterior ribs, clavicles, spine and mediastinum, a left-sided heart shadow,
hila, diaphragm domes, branching lung vessels, soft-tissue mottle and detector
grain. Each patient differs in body size, lung and heart shape, bone density and
normal variants; each image differs in position, rotation, magnification, depth
of inspiration, exposure, contrast, gamma and noise.

The four classes carry the textbook patterns:

``covid``
    bilateral, peripheral, lower-zone ground-glass opacities (hazy and patchy);
``pneumonia_bac``
    dense lobar consolidation, usually in one lung, sometimes with air
    bronchograms, a small pleural effusion or a patch in the other lung;
``pneumonia_vir``
    diffuse bilateral streaky/reticular (interstitial) markings around the hila,
    with perihilar haze;
``normal``
    clear lung fields.

Severity varies from barely visible to obvious, so the classes are learnable but
not trivially.

The ``multilabel`` task draws the same three patterns as findings that co-occur
(:data:`FINDINGS`: ``ground_glass``, ``consolidation``, ``interstitial``): a
patient is infected or not (:data:`_INFECTED_P`); an infected patient has each
finding with its own probability, and an infected patient with ground glass
more often has interstitial markings too (:func:`_draw_present`), so the
findings are correlated as in real data. A finding seen at low severity is
written as uncertain (-1) a share of the time (:data:`_UNSURE_P`), as a
radiologist's hedge would be; each image also gets ``group:sex`` (from the
breast-shadow variant), ``group:age`` in bands and ``group:view`` (PA). Every global nuisance (exposure, contrast, body size, position,
noise, simulated site) is drawn from one distribution for every class, from a
random stream separate from the findings, so a model that sees only the image's
mean and standard deviation stays near chance.

>>> from xrayfeat.data.phantoms import write_phantoms
>>> manifest = write_phantoms("phantoms", task="four", per_class=60)  # doctest: +SKIP

:func:`write_phantoms` seeds every patient (anatomy, findings, whether there is a
re-take) from ``np.random.SeedSequence`` on (seed, class index, patient index)
and every image of that patient (pose, exposure, noise) on (seed, class index,
patient index, take); the class index is the position in :data:`FOUR_CLASSES`
for both tasks. The same arguments therefore give byte-identical files, and
changing ``per_class`` or the task leaves the pixels of the images both runs
share unchanged (only the train/test assignment can move).
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from xrayfeat.data.labels import GROUP_COLUMNS, age_band
from xrayfeat.errors import DatasetError, DiskFullError
from xrayfeat.fileio import atomic_write, csv_text, writing_to
from xrayfeat.options.constraints import Choice, declaration, validate_params
from xrayfeat.options.settings import PHANTOM_TASKS, PhantomOptions

__all__ = [
    "BINARY_CLASSES",
    "FOUR_CLASSES",
    "MANIFEST_COLUMNS",
    "SITES",
    "TASKS",
    "FINDINGS",
    "render",
    "write_phantoms",
]

FOUR_CLASSES = ("covid", "normal", "pneumonia_bac", "pneumonia_vir")
BINARY_CLASSES = ("covid", "normal")
#: The findings of the multi-label task, each drawn with the pattern of one of the four classes.
FINDINGS = ("ground_glass", "consolidation", "interstitial")
_PATTERN = {"ground_glass": "covid", "consolidation": "pneumonia_bac", "interstitial": "pneumonia_vir"}
TASKS = dict(zip(PHANTOM_TASKS, (FOUR_CLASSES, BINARY_CLASSES, FINDINGS)))
#: The multi-label manifest's group columns, after its finding columns.
# Multi-label task: the share of infected patients, each finding's probability given infection (ground glass
# first; interstitial more likely with it), and how often a finding below _UNSURE_SEVERITY is written -1.
_INFECTED_P = 0.65
_GLASS_P, _CONSOLIDATION_P, _INTERSTITIAL_P, _INTERSTITIAL_WITH_GLASS_P = 0.55, 0.4, 0.25, 0.6
_UNSURE_P, _UNSURE_SEVERITY = 0.5, 0.4
SITES = ("site_a", "site_b")
MANIFEST_COLUMNS = ("path", "label", "split", "patient_id", "source")

# Probability that a patient has a second image (a re-take).
_RETAKE_P = 0.3
# Purposes of the seed sequences (the first word after the user's seed).
_PATIENT, _TAKE, _SPLIT = 0, 1, 2
_F = np.float32
# Typical mean attenuation over clear lung fields; the exposure control's target.
_LUNG_REF = 0.7

# Geometry is written in a canonical patient frame: x grows to the image's right
# (the patient's left), y grows downwards, and the image spans [-1, 1] on both
# axes at magnification 1. The lungs lie roughly in x in [-0.8, 0.8] and y in
# [-0.75, 0.6].


# --------------------------------------------------------------------------- utils


def _sig(z):
    """A cheap logistic-like step (smoothstep over |z| < 3)."""
    t = np.asarray(z, dtype=_F) * _F(1 / 6) + _F(0.5)
    np.minimum(t, _F(1), out=t)
    np.maximum(t, _F(0), out=t)
    return t * t * (_F(3) - _F(2) * t)


def _gauss(z):
    return np.exp(-0.5 * np.square(z, dtype=_F))


def _soften(v: np.ndarray, sigma: float) -> np.ndarray:
    """Blur a line drawing: repeated [1, 2, 1] / 4 passes (each adds 0.5 px**2 of
    variance), much cheaper than a Gaussian filter for these small widths."""
    v = v.copy()
    for _ in range(max(1, int(round(2 * sigma * sigma)))):
        for axis in (0, 1):
            a = np.moveaxis(v, axis, 0)
            mid = a[1:-1].copy()
            a[1:-1] = 0.5 * mid + 0.25 * (a[:-2] + a[2:])
    return v


def _seq(seed: int, purpose: int, cls: int, patient: int = 0, take: int = 0) -> np.random.SeedSequence:
    # A fixed-length entropy tuple: SeedSequence treats trailing zeros as absent.
    return np.random.SeedSequence((seed, purpose, cls, patient, take))


# ----------------------------------------------------------------- random draws


def _draw_patient(label: str, rng: np.random.Generator) -> dict:
    """Everything that stays the same across one patient's images.

    Anatomy and findings come from two independent child streams, so the anatomy
    (and the site) has exactly the same distribution in every class.
    """
    a = np.random.default_rng(rng.integers(2**63))
    find_rng = np.random.default_rng(rng.integers(2**63))
    p = {
        "label": label,
        "site": SITES[int(a.integers(2))],
        "body_w": a.uniform(0.88, 1.12),  # half-width of the thorax
        "neck_w": a.uniform(0.26, 0.34),
        "lung_w": a.uniform(0.66, 0.76),  # lateral extent of each lung
        "apex_y": a.uniform(-0.78, -0.66),
        "dome_y": a.uniform(0.30, 0.42),  # right dome; the left one sits lower
        "dome_lr": a.uniform(0.02, 0.07),
        "dome_k": a.uniform(0.30, 0.45),  # dome curvature
        "medi_w": a.uniform(0.08, 0.12),  # half-width of the upper mediastinum
        "heart_x": a.uniform(0.06, 0.14),
        "heart_dy": a.uniform(0.06, 0.16),  # heart centre above the left dome
        "heart_a": a.uniform(0.25, 0.33),
        "heart_b": a.uniform(0.20, 0.27),
        "spine_x": a.normal(0.0, 0.01),
        "spine_period": a.uniform(0.085, 0.11),
        "spine_phase": a.uniform(0, 1),
        "trachea_x": a.normal(0.0, 0.015),
        "rib_amp": a.uniform(0.10, 0.16),
        "rib_sp": a.uniform(0.10, 0.12),
        "rib_first": a.uniform(-0.80, -0.72),
        "rib_a": a.uniform(0.10, 0.20),
        "rib_b": a.uniform(0.35, 0.50),
        "rib_c": a.uniform(0.22, 0.34),
        "rib_jitter": a.normal(0.0, 0.008, size=(2, 11)),
        "rib_gain": a.uniform(0.8, 1.15, size=(2, 11)),
        "clav_y": a.uniform(-0.66, -0.56),
        "clav_amp": a.uniform(0.18, 0.30),
        "clav_tilt": a.uniform(0.10, 0.20),
        "arms": bool(a.random() < 0.5),
        "soft": a.uniform(0.9, 1.1),
        "air": a.uniform(0.46, 0.58),  # how much air darkens the lungs
        "vessel_amp": a.uniform(0.07, 0.12),
        "vessel_seed": int(a.integers(2**63)),
        "mottle_seed": int(a.integers(2**63)),
        "mottle_amp": a.uniform(0.015, 0.035),
        "breasts": a.uniform(0.0, 0.12) if a.random() < 0.45 else 0.0,
        "breast_y": a.uniform(0.35, 0.55),
        "granuloma": (a.uniform(-0.6, 0.6), a.uniform(-0.5, 0.3)) if a.random() < 0.2 else None,
    }
    p["findings"] = _draw_findings(label, find_rng)
    return p


def _draw_findings(label: str, r: np.random.Generator) -> dict:
    # A wide severity range: a good share of the cases are subtle.
    sev = float(0.25 + 0.75 * r.beta(1.5, 1.2))
    f = {"severity": sev, "seed": int(r.integers(2**63))}
    if label == "covid":
        both = r.random() < 0.85
        sides = (-1, 1) if both else ((-1,) if r.random() < 0.5 else (1,))
        blobs = []
        for s in sides:
            for _ in range(int(r.integers(3, 5 + int(6 * sev)))):
                blobs.append(
                    (
                        s,
                        r.uniform(0.55, 1.0),  # relative lateral position (1 = chest wall)
                        0.40 + 0.60 * r.beta(2.2, 1.2),  # relative height (1 = base)
                        r.uniform(0.07, 0.15),  # sigma x
                        r.uniform(0.08, 0.17),  # sigma y
                        r.uniform(0.6, 1.0),  # weight
                    )
                )
        f["blobs"] = blobs
    elif label == "pneumonia_bac":
        f.update(
            side=-1 if r.random() < 0.6 else 1,
            lobe=str(r.choice(["lower", "upper", "middle"], p=[0.5, 0.3, 0.2])),
            centre=(r.uniform(0.3, 0.8), r.uniform(0.0, 1.0)),
            extent=r.uniform(0.8, 1.3),
            fissure=r.uniform(-0.15, 0.0),
            fissure_tilt=r.uniform(-0.08, 0.08),
            fissure_wave=r.uniform(3.0, 8.0),
            bronchograms=bool(r.random() < 0.5),
            effusion=r.uniform(0.04, 0.12) if r.random() < 0.2 else 0.0,
            contra=(r.uniform(0.3, 0.9), r.uniform(0.5, 1.0), r.uniform(0.2, 0.5)) if r.random() < 0.15 else None,
        )
    elif label == "pneumonia_vir":
        f.update(
            spread=r.uniform(0.0, 1.0),  # 0 = tight perihilar, 1 = diffuse
            asym=tuple(r.uniform(0.75, 1.0, size=2)),
            texture=r.uniform(0.018, 0.03),
            haze=r.uniform(0.3, 0.8),
        )
    return f


def _draw_take(rng: np.random.Generator) -> dict:
    """What changes from one image of a patient to the next."""
    return {
        "rot": float(np.clip(rng.normal(0.0, 0.035), -0.1, 0.1)),  # radians, about 2 degrees
        "shift": tuple(np.clip(rng.normal(0.0, 0.04, size=2), -0.12, 0.12)),
        "zoom": rng.uniform(0.88, 1.10),
        "inspiration": rng.normal(0.0, 0.025),  # moves the diaphragm
        "sev_jitter": rng.uniform(0.85, 1.15),
        "level": rng.uniform(0.50, 0.70),
        "aec": rng.uniform(0.25, 0.55),  # how fully exposure control compensates
        "width": rng.uniform(0.17, 0.27),
        "gamma": float(np.exp(rng.normal(0.0, 0.15))),
        "grain": rng.uniform(0.008, 0.03),
        "sharpen": rng.uniform(0.0, 0.6),
        "noise_seed": int(rng.integers(2**63)),
    }


# -------------------------------------------------------------------- rendering


class _Frame:
    """The pixel grid of one image in patient coordinates, and the lung geometry.

    ``x`` is a row vector (1, n) and ``y`` a column vector (n, 1): shapes that
    depend on one axis stay one-dimensional and broadcasting makes the rest.
    """

    def __init__(self, p: dict, take: dict, n: int):
        self.n = n
        self.p = p
        self.zoom = take["zoom"]
        self.shift = take["shift"]
        img = (np.arange(n, dtype=np.float64) + 0.5) * (2.0 / n) - 1.0
        self.xv = ((img - self.shift[0]) / self.zoom).astype(_F)
        self.yv = ((img - self.shift[1]) / self.zoom).astype(_F)
        self.x = self.xv[None, :]
        self.y = self.yv[:, None]
        self.px = 2.0 / (n * self.zoom)  # one pixel in patient units
        self.e = max(0.012, 0.8 * self.px)  # edge softness
        self.h = int(np.searchsorted(self.xv, 0.0))  # first column with x >= 0
        insp = take["inspiration"]
        self.dome = (p["dome_y"] + insp, p["dome_y"] + p["dome_lr"] + insp)

    def half(self, side: int):
        """Column slice and lateral coordinate q (>= 0 towards the chest wall) of one side."""
        cols = slice(0, self.h) if side < 0 else slice(self.h, self.n)
        return cols, side * self.x[:, cols]

    def to_px(self, x: float, y: float):
        """Patient coordinates to PIL pixel coordinates."""
        s = self.n / 2.0
        return ((x * self.zoom + self.shift[0] + 1.0) * s, (y * self.zoom + self.shift[1] + 1.0) * s)

    def lateral(self, y):
        """Lateral edge of a lung at height y."""
        p = self.p
        t = np.clip((y - p["apex_y"]) / 0.6, 0.0, 1.0)
        return p["lung_w"] * t**0.42

    def dome_y(self, side: int, q):
        """Height of the diaphragm at lateral distance q on one side."""
        p = self.p
        base = self.dome[0] if side < 0 else self.dome[1]
        return base + p["dome_k"] * ((q - 0.5 * p["lung_w"]) / p["lung_w"]) ** 2

    def to_patient(self, side: int, rel_lat: float, rel_y: float):
        """Patient (x, y) of a point given by its relative position in a lung."""
        p = self.p
        base = self.dome[0] if side < 0 else self.dome[1]
        y = p["apex_y"] + rel_y * (base + 0.05 - p["apex_y"])
        lat = float(self.lateral(y))
        q = p["medi_w"] + rel_lat * max(lat - p["medi_w"], 0.05)
        return side * q, y

    def noise(self, rng: np.random.Generator, scale: float) -> np.ndarray:
        """Unit-variance smooth noise fixed to the patient, correlation length ~``scale``.

        A sum of Gaussian bumps with random weights on a lattice of step
        ``scale`` in patient coordinates, evaluated separably with four taps per
        axis, so it follows the anatomy from one take to the next. (No matrix
        products: threaded BLAS is slow on small arrays on a busy machine.)
        """
        lo = -1.7
        m = int(math.ceil(3.4 / scale)) + 8
        z = rng.standard_normal((m, m), dtype=_F)

        def taps(v):
            g = (v - lo) / scale
            j0 = np.floor(g).astype(np.intp) - 1
            js = np.clip(j0[None, :] + np.arange(4)[:, None], 0, m - 1)
            ws = _gauss((g[None, :] - js) / _F(0.6))
            return js, ws

        jy, wy = taps(self.yv)
        jx, wx = taps(self.xv)
        rows = sum(wy[t][:, None] * z[jy[t]] for t in range(4)).T.copy()  # (m, n)
        f = sum(wx[t][:, None] * rows[jx[t]] for t in range(4)).T  # (n, n)
        f -= f.mean()
        sd = float(f.std())
        return f / _F(sd if sd > 0 else 1.0)

    def blob(self, x0: float, y0: float, sx: float, sy: float) -> np.ndarray:
        return _gauss((self.y - y0) / _F(sy)) * _gauss((self.x - x0) / _F(sx))


def _draw_tree(fr: _Frame, rng: np.random.Generator, n_roots: tuple[int, int], depth: int, width: float,
               blur: float) -> np.ndarray:
    """Branching lines from each hilum, tapering outwards; values in [0, 1]."""
    n = fr.n
    img = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(img)
    ppu = n * fr.zoom / 2.0  # pixels per patient unit
    p = fr.p
    for side in (-1, 1):
        k = int(rng.integers(*n_roots))
        hx = side * (p["medi_w"] + 0.04)
        hy = -0.10 if side < 0 else -0.15
        # Level by level, all branches at once.
        ang = np.linspace(-1.3, 1.4, k) + rng.normal(0, 0.1, k)
        xs = np.full(k, hx)
        ys = hy + rng.normal(0.0, 0.05, k)
        length = rng.uniform(0.11, 0.16, k)
        w = width
        for level in range(depth + 1):
            bend = rng.normal(0.0, 0.06, (2, ang.size))
            a1 = ang + bend[0]
            xm, ym = xs + side * np.cos(a1) * length * 0.5, ys + np.sin(a1) * length * 0.5
            a2 = a1 + bend[1]
            xe, ye = xm + side * np.cos(a2) * length * 0.5, ym + np.sin(a2) * length * 0.5
            wpx = w * ppu
            fill, lw = int(round(255 * min(1.0, wpx))), max(1, int(round(wpx)))
            pts = np.stack([*fr.to_px(xs, ys), *fr.to_px(xm, ym), *fr.to_px(xe, ye)], axis=1).tolist()
            for x0, y0, x1, y1, x2, y2 in pts:
                draw.line([(x0, y0), (x1, y1), (x2, y2)], fill=fill, width=lw)
            if level == depth:
                break
            spread = rng.uniform(0.15, 0.45, (2, ang.size))
            ang = np.concatenate([a2 - spread[0], a2 + spread[1]])
            xs, ys = np.tile(xe, 2), np.tile(ye, 2)
            length = np.tile(length, 2) * rng.uniform(0.7, 0.9, ang.size)
            w *= 0.6
    v = np.asarray(img, dtype=_F) * _F(1 / 255)
    return _soften(v, blur * ppu)


def _render_patient(p: dict, take: dict, n: int) -> tuple[np.ndarray, float]:
    """Attenuation map (bright = dense) of the patient on the image grid,
    unrotated, and its mean over the lung fields (for exposure control)."""
    fr = _Frame(p, take, n)
    x, y, e = fr.x, fr.y, fr.e
    ax = np.abs(x)

    # Body: neck, sloping shoulders, a chest wall that widens downwards.
    sh = np.clip((y + 1.05) / 0.5, 0.0, 1.0)
    sh = sh * sh * (3 - 2 * sh)
    w = p["body_w"] * (p["neck_w"] + (1 - p["neck_w"]) * sh) * (1.0 + 0.06 * np.clip(y, 0, 1))
    thick = np.sqrt(np.clip(1.0 - np.square(x / w), 0.0, 1.0))
    body = _sig((w - ax) / (1.5 * e))
    A = p["soft"] * body * (0.4 + 0.6 * np.sqrt(thick))
    if p["arms"]:
        xa = ax - p["body_w"] - 0.2
        A = A + 0.75 * np.sqrt(np.clip(1.0 - np.square(xa / 0.16), 0, 1)) * _sig((y + 0.78) / 0.05)
        A = A + 0.35 * np.sqrt(np.clip(1.0 - (np.square(xa) + np.square(y + 0.72)) / 0.01, 0, 1))

    # Heart: a left-sided ellipse, extruded down from its centre onto the
    # diaphragm so that no lung shows under it.
    hy = fr.dome[1] - p["heart_dy"]
    hr = np.sqrt(np.square((x - p["heart_x"]) / p["heart_a"]) + np.square(np.minimum(y - hy, 0.0) / p["heart_b"]))
    heart = _sig((1.0 - hr) * (p["heart_b"] / (1.3 * e)))

    # Lung fields, one half of the image each.
    lat = fr.lateral(y)
    lung = np.zeros((n, n), dtype=_F)
    halves = []
    for side in (-1, 1):
        cols, q = fr.half(side)
        medial = p["medi_w"] + 0.06 * np.clip((-0.5 - y) / 0.25, 0, 1)  # narrower at the apex
        if side > 0:
            medial = medial + 0.04 * _gauss((y + 0.36) / 0.05)  # aortic knob
        lung[:, cols] = _sig((q - medial) / e) * _sig((lat - q) / e) * _sig((fr.dome_y(side, q) - y) / e)
        halves.append((cols, q))
    lung *= 1.0 - heart
    # Air is deepest in the middle of each lung; periphery, apex and bases are
    # thinner (chest wall, breasts and the posterior recesses overlap them).
    rel = np.clip((ax - p["medi_w"]) / np.maximum(lat - p["medi_w"], 0.05), 0, 1)
    vrel = np.clip((y - p["apex_y"]) / (fr.dome[1] - p["apex_y"]), 0, 1)
    depth = (0.62 + 0.38 * np.sqrt(np.clip(1.0 - np.square(1.9 * rel - 0.95), 0, 1))) * (
        1.0 - 0.28 * np.exp(-np.square(vrel / 0.15)) - 0.22 * vrel**3
    )
    A -= p["air"] * lung * depth

    # Mediastinum, heart, hila, spine, trachea.
    A += 0.08 * heart + 0.05 * _sig((0.16 - ax) / 0.04) * _sig((0.2 - y) / 0.1)
    for side in (-1, 1):
        A += 0.10 * fr.blob(side * (p["medi_w"] + 0.04), -0.10 if side < 0 else -0.15, 0.04, 0.09)
    dxs = np.abs(x - p["spine_x"])
    ph = y / p["spine_period"] + p["spine_phase"]
    frac = ph - np.rint(ph)
    A += _sig((0.065 - dxs) / e) * (0.12 - 0.03 * _gauss(frac / 0.085))
    A += 0.05 * _gauss((frac - 0.05) / 0.16) * _gauss((dxs - 0.045) / 0.0085)  # pedicles
    A -= 0.14 * _sig((0.03 - np.abs(x - p["trachea_x"])) / e) * _sig((-0.27 - y) / 0.03)

    # Bones on each half: posterior ribs arch up and then down to the chest wall;
    # anterior ribs run down and in; the clavicle runs up and out.
    bones = np.zeros((n, n), dtype=_F)
    nr = 11
    idx = np.arange(nr, dtype=np.float64)
    knots = p["rib_first"] + p["rib_sp"] * idx * (1.0 + 0.02 * idx)
    for k, (cols, q) in enumerate(halves):
        t = q / (p["lung_w"] + 0.06)
        kn = knots + p["rib_jitter"][k]
        gain = np.append(p["rib_gain"][k], 0.0).astype(_F)
        u = y - (-p["rib_a"] * t + p["rib_b"] * t * t)
        ph = np.interp(u, kn, idx, left=-9.0, right=99.0).astype(_F)
        ri = np.rint(ph)
        d = (ph - ri) * _F(p["rib_sp"])
        hw = 0.025 + 0.01 * np.clip(t, 0, 1)
        prof = _sig((hw - np.abs(d)) / (1.1 * e)) * (0.85 + 0.3 * np.clip(d / hw, -0.5, 1.0))
        span = _sig((t - 0.06) / 0.03) * _sig((1.12 - t) / 0.04)
        part = span * gain[np.clip(ri, 0, nr).astype(np.intp)] * prof
        ta = np.clip(t, 0.0, 1.1)
        ua = y - (p["rib_b"] - p["rib_a"]) - p["rib_c"] * (1.0 - ta) - 0.02
        pha = np.interp(ua, kn, idx, left=-9.0, right=99.0).astype(_F)
        ra = np.rint(pha)
        spana = _sig((t - 0.32) / 0.05) * _sig((1.08 - t) / 0.04)
        part += 0.5 * spana * (ra < 7) * _sig((0.03 - np.abs(pha - ra) * _F(p["rib_sp"])) / (1.2 * e))
        tc = (q - 0.07) / 0.6
        yc = p["clav_y"] - p["clav_tilt"] * tc + 0.04 * np.sin(np.pi * tc)
        hwc = 0.036 - 0.012 * np.clip(tc, 0, 1)
        rows = np.flatnonzero(np.abs(fr.yv - p["clav_y"] + 0.08) < 0.26)  # the clavicle's band
        if rows.size:
            r = slice(rows[0], rows[-1] + 1)
            ac = np.abs(y[r] - yc)
            ends = _sig(tc / 0.03) * _sig((1.0 - tc) / 0.03)
            clav = (_sig((hwc - ac) / e) + 0.6 * _gauss((ac - hwc) / (0.7 * e))) * ends
            part[r] += clav * (p["clav_amp"] / p["rib_amp"])
        bones[:, cols] = part
    A += p["rib_amp"] * bones * body * (0.5 + 0.5 * lung)

    # Lung vessels.
    vessels = _draw_tree(fr, np.random.default_rng(p["vessel_seed"]), (7, 10), 3, 0.02, 0.006)
    A += p["vessel_amp"] * vessels * lung

    # Normal variants, drawn the same way for every class.
    if p["breasts"] > 0:
        for side in (-1, 1):
            r = np.sqrt(np.square((x - side * 0.5) / 0.4) + np.square((y - p["breast_y"] - 0.2) / 0.32))
            A += p["breasts"] * _sig((1.0 - r) / 0.06) * _sig((y - p["breast_y"]) / 0.04)
    if p["granuloma"] is not None:
        gx, gy = p["granuloma"]
        A += 0.3 * fr.blob(gx, gy, 0.01, 0.01) * lung

    # Findings: one class's pattern, or each present finding's (multi-label).
    for pattern, f in p.get("patterns", ((p["label"], p["findings"]),)):
        sev = f["severity"] * take["sev_jitter"]
        rng = np.random.default_rng(f["seed"])
        if pattern == "covid":
            A += _ggo(fr, f, sev, rng) * lung
        elif pattern == "pneumonia_bac":
            A += _consolidation(fr, f, sev, rng, lung)
        elif pattern == "pneumonia_vir":
            A += _interstitial(fr, f, sev, rng, vessels) * lung

    # Soft-tissue mottle everywhere in the body.
    A += p["mottle_amp"] * fr.noise(np.random.default_rng(p["mottle_seed"]), 0.04) * body
    # Automatic exposure control: the detector's sensing fields sit behind the
    # lungs, so denser lungs get more exposure and the picture darkens overall.
    lung_mean = float((A * lung).sum() / max(float(lung.sum()), 1.0))
    return A, lung_mean


def _ggo(fr: _Frame, f: dict, sev: float, rng) -> np.ndarray:
    """COVID-19: hazy, patchy, peripheral, lower-zone opacities."""
    haze = np.zeros((fr.n, fr.n), dtype=_F)
    for side, rl, ry, sx, sy, wgt in f["blobs"]:
        haze += wgt * fr.blob(*fr.to_patient(side, rl, ry), sx, sy)
    haze = 1.0 - np.exp(-1.3 * haze)
    patch = np.clip(0.6 + 0.4 * fr.noise(rng, 0.07), 0.15, 1.3)
    return (0.7 * sev) * haze * patch


def _consolidation(fr: _Frame, f: dict, sev: float, rng, lung) -> np.ndarray:
    """Bacterial pneumonia: dense lobar consolidation, usually in one lung."""
    x, y, e = fr.x, fr.y, fr.e
    side = f["side"]
    on_side = (side * x > 0).astype(_F)
    q = side * x
    ext = f["extent"] * (0.6 + 0.4 * sev)
    fis = f["fissure"] + f["fissure_tilt"] * q + 0.03 * np.sin(q * f["fissure_wave"])
    c0, c1 = f["centre"]
    # Only the right lung has a horizontal (minor) fissure to give a sharp border;
    # the other margins are ragged and fade out.
    edge = 0.8 * e if side < 0 else 0.05
    ragged = 0.05 * fr.noise(rng, 0.07)
    if f["lobe"] == "upper":
        cx, cy = fr.to_patient(side, c0, 0.1 + 0.35 * c1)
        region = _sig((fis - y) / edge) * _sig((0.45 * ext + ragged - np.hypot(x - cx, (y - cy) * 0.8)) / 0.07)
    elif f["lobe"] == "middle":
        cx, cy = fr.to_patient(side, 0.15 + 0.3 * c0, 0.6 + 0.2 * c1)
        region = _sig((y - fis) / edge) * _sig((0.4 * ext + ragged - np.hypot((x - cx) * 0.9, y - cy)) / 0.08)
    else:
        cx, cy = fr.to_patient(side, c0, 0.7 + 0.3 * c1)
        region = _sig((0.45 * ext + ragged - np.hypot(x - cx, (y - cy) * 0.9)) / 0.09)
    region = region * on_side
    density = 0.45 + 0.55 * sev
    dense = density * region * (0.92 + 0.08 * fr.noise(rng, 0.05))
    if f["bronchograms"]:
        dense -= 0.3 * density * region * _draw_tree(fr, rng, (3, 5), 1, 0.018, 0.006)
    out = dense * lung
    if f["effusion"] > 0:
        h = f["effusion"] * (0.5 + sev)
        rel = np.clip(q / fr.p["lung_w"], 0, 1)
        level = fr.dome_y(side, q) - h * (0.3 + 0.7 * rel**2)
        out += 0.45 * _sig((y - level) / 0.02) * lung * on_side
    if f["contra"] is not None:
        rl, ry, s = f["contra"]
        out += (0.2 + 0.3 * sev) * s * fr.blob(*fr.to_patient(-side, rl, ry), 0.08, 0.08) * lung
    return out


def _interstitial(fr: _Frame, f: dict, sev: float, rng, vessels) -> np.ndarray:
    """Viral pneumonia: bilateral perihilar streaky/reticular markings and haze."""
    n = fr.n
    sig = 0.22 + 0.25 * f["spread"]
    hila = [(side * (fr.p["medi_w"] + 0.06), -0.1) for side in (-1, 1)]
    env = np.zeros((n, n), dtype=_F)
    for k, (hx, hy) in enumerate(hila):
        env += f["asym"][k] * fr.blob(hx, hy, 1.3 * sig, sig)
    env = np.minimum(env, 1.0)
    # Streaks radiating from the hila (peribronchial thickening) ...
    img = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(img)
    ppu = n * fr.zoom / 2.0
    lw = max(1, int(round(0.012 * ppu)))
    for k, (hx, hy) in enumerate(hila):
        side = -1 if k == 0 else 1
        m = 90
        r = np.abs(rng.normal(0.0, 1.3 * sig, m))
        ang = rng.uniform(-1.4, 1.5, m)
        x0, y0 = hx + side * np.cos(ang) * r, hy + np.sin(ang) * r
        a2 = ang + rng.normal(0.0, 0.25, m)
        ln = rng.uniform(0.04, 0.1, m)
        x1, y1 = x0 + side * np.cos(a2) * ln, y0 + np.sin(a2) * ln
        fill = rng.integers(120, 256, m).tolist()
        pts = np.stack([*fr.to_px(x0, y0), *fr.to_px(x1, y1)], axis=1).tolist()
        for (u0, v0, u1, v1), fl in zip(pts, fill):
            draw.line([(u0, v0), (u1, v1)], fill=fl, width=lw)
    streaks = _soften(np.asarray(img, dtype=_F) * _F(1 / 255), 0.005 * ppu)
    # ... a fine reticular net ...
    net = _gauss(fr.noise(rng, f["texture"]) / 0.35)
    # ... and perihilar haze.
    haze = f["haze"] * (1.0 + 0.3 * fr.noise(rng, 0.08))
    return sev * env * (0.35 * streaks + 0.18 * net + 0.15 * haze + 0.08 * vessels)


def _shear(a: np.ndarray, shift: np.ndarray, axis: int) -> np.ndarray:
    """Shift each row (axis=1) or column (axis=0) i of ``a`` by ``shift[i]`` pixels
    along that axis: linear interpolation, edges clamped."""
    n = a.shape[0]
    pad = int(np.ceil(np.abs(shift).max())) + 2
    k = np.floor(shift)
    f = (shift - k).astype(_F)
    k = k.astype(np.intp)
    along = np.arange(n)
    if axis == 1:
        ap = np.pad(a, ((0, 0), (pad, pad)), mode="edge")
        stride, step = ap.shape[1], 1
        idx = (along * stride + pad - k)[:, None] + along[None, :]
        f = f[:, None]
    else:
        ap = np.pad(a, ((pad, pad), (0, 0)), mode="edge")
        stride, step = n, n
        idx = ((pad - k)[None, :] + along[:, None]) * stride + along[None, :]
        f = f[None, :]
    flat = ap.ravel()
    a0 = flat[idx]
    a0 += f * (flat[idx - step] - a0)
    return a0


def _rotate(a: np.ndarray, angle: float) -> np.ndarray:
    """Rotate about the centre by two shears: exact to O(angle**2), which is
    plenty for the few degrees of a patient's tilt."""
    if angle == 0:
        return a
    c = np.arange(a.shape[0]) - (a.shape[0] - 1) / 2.0
    a = _shear(a, -angle * c, axis=1)
    return _shear(a, angle * c, axis=0)


def _expose(A: np.ndarray, p: dict, take: dict, lung_mean: float) -> np.ndarray:
    """Detector response, site processing and grain; returns uint8."""
    rng = np.random.default_rng(take["noise_seed"])
    # The characteristic curve (logistic, then gamma) through a lookup table.
    lo, step = -0.5, 0.0025
    grid = lo + step * np.arange(1001)
    level = take["level"] + take["aec"] * (lung_mean - _LUNG_REF)
    curve = ((1.0 / (1.0 + np.exp((level - grid) / take["width"]))) ** take["gamma"]).astype(_F)
    pos = (A - _F(lo)) * _F(1 / step)
    np.clip(pos, 0, 999.999, out=pos)
    i = pos.astype(np.intp)
    frac = pos - i
    v = curve[i]
    v += frac * (curve[i + 1] - v)
    if p["site"] == "site_b":  # edge-enhancing processing at the second site
        v += _F(0.3 + take["sharpen"]) * (v - ndimage.gaussian_filter(v, 2.0 * v.shape[0] / 256))
    v += _F(take["grain"]) * rng.standard_normal(v.shape, dtype=_F)
    v *= _F(255)
    np.rint(v, out=v)
    return np.clip(v, 0, 255).astype(np.uint8)


def _render(p: dict, take: dict, size: int) -> np.ndarray:
    A, lung_mean = _render_patient(p, take, size)
    return _expose(_rotate(A, take["rot"]), p, take, lung_mean)


@validate_params({"label": Choice(FOUR_CLASSES), "size": declaration(PhantomOptions, "size")})
def render(label: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One synthetic frontal chest X-ray of class ``label``.

    Returns a ``(size, size)`` uint8 array (bright = dense). All randomness comes
    from ``rng``; the same generator state gives the same picture.
    """
    patient = _draw_patient(label, rng)
    return _render(patient, _draw_take(rng), size)


# ---------------------------------------------------------------------- data set


def _plan_class(seed: int, cls: int, per_class: int, test_fraction: float):
    """[(patient index, number of takes, split)] for one class, split by patient."""
    patients = []
    used = 0
    while used < per_class:
        i = len(patients)
        rng = np.random.default_rng(_seq(seed, _PATIENT, cls, i))
        takes = 2 if rng.random() < _RETAKE_P else 1
        # Never more than the remaining images, and at least two patients.
        takes = min(takes, per_class - used, per_class - 1 if i == 0 else takes)
        patients.append((i, takes))
        used += takes
    target = min(max(round(test_fraction * per_class), 1), per_class - 1)
    order = np.random.default_rng(_seq(seed, _SPLIT, cls)).permutation(len(patients))
    test, n_test = set(), 0
    for j in order:
        if n_test + patients[j][1] <= target:
            test.add(int(j))
            n_test += patients[j][1]
    if not test:  # every patient too big for the target: take the first one
        test.add(int(order[0]))
    return [(i, k, "test" if i in test else "train") for i, k in patients]


def _draw_present(r: np.random.Generator) -> list[str]:
    """The findings one multi-label patient has: none, or a correlated set (see the module docstring)."""
    if r.random() >= _INFECTED_P:
        return []
    glass = r.random() < _GLASS_P
    present = ["ground_glass"] if glass else []
    if r.random() < _CONSOLIDATION_P:
        present.append("consolidation")
    if r.random() < (_INTERSTITIAL_WITH_GLASS_P if glass else _INTERSTITIAL_P):
        present.append("interstitial")
    return present


def _multilabel_patient(seed: int, patient: int) -> tuple[dict, list[str]]:
    """A multi-label patient: anatomy as any patient's, then each present finding's pattern, and its manifest cells.

    The cells are one per :data:`FINDINGS` (``1``, ``0``, or ``-1`` for a subtle
    finding written as uncertain) and one per :data:`GROUP_COLUMNS`.
    """
    rng = np.random.default_rng(_seq(seed, _PATIENT, len(FOUR_CLASSES), patient))
    rng.random()  # the re-take draw of _plan_class
    p = _draw_patient("normal", rng)
    r = np.random.default_rng(rng.integers(2**63))
    present = _draw_present(r)
    p["patterns"] = tuple((_PATTERN[name], _draw_findings(_PATTERN[name], r)) for name in present)
    cells = []
    for name in FINDINGS:
        found = dict(zip(present, p["patterns"])).get(name)
        unsure = r.random() < _UNSURE_P
        if found is None:
            cells.append("0")
        else:
            cells.append("-1" if found[1]["severity"] < _UNSURE_SEVERITY and unsure else "1")
    age = int(r.integers(18, 90))
    cells += ["F" if p["breasts"] > 0 else "M", age_band(age), "PA"]
    return p, cells


def _write_multilabel_patient(job) -> list[tuple[str, ...]]:
    """Render and save one multi-label patient's images into ``OUT/<split>/``; return their manifest rows."""
    out, patient, takes, split, seed, size = job
    pat, cells = _multilabel_patient(seed, patient)
    rows = []
    for take in range(takes):
        image = _render(pat, _draw_take(np.random.default_rng(_seq(seed, _TAKE, len(FOUR_CLASSES), patient, take))),
                        size)
        name = f"p{patient:05d}_{take}.png"
        Image.fromarray(image).save(out / split / name, format="PNG", compress_level=1)
        rows.append((f"{split}/{name}", split, f"p{patient:05d}", pat["site"], *cells))
    return rows


def _write_patient(job) -> list[tuple[str, ...]]:
    """Render and save one patient's images; return their manifest rows."""
    out, label, cls, patient, takes, split, seed, size = job
    rng = np.random.default_rng(_seq(seed, _PATIENT, cls, patient))
    rng.random()  # the re-take draw of _plan_class
    pat = _draw_patient(label, rng)
    rows = []
    for take in range(takes):
        image = _render(pat, _draw_take(np.random.default_rng(_seq(seed, _TAKE, cls, patient, take))), size)
        name = f"{label}_p{patient:04d}_{take}.png"
        Image.fromarray(image).save(out / split / label / name, format="PNG", compress_level=1)
        rows.append((f"{split}/{label}/{name}", label, split, f"{label}_p{patient:04d}", pat["site"]))
    return rows


@validate_params({name: declaration(PhantomOptions, name)
                  for name in ("task", "per_class", "size", "seed", "test_fraction")})
def write_phantoms(
    out,
    task: str = "four",
    per_class: int = 60,
    size: int = 256,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> pathlib.Path:
    """Write a synthetic chest X-ray data set and return the manifest's path.

    Layout: ``OUT/<split>/<class>/<class>_p<patient>_<take>.png`` (8-bit grayscale
    PNG) and ``OUT/manifest.csv`` with the columns :data:`MANIFEST_COLUMNS`, paths
    relative to ``OUT``. The ``multilabel`` task writes ``per_class`` times 4
    images as ``OUT/<split>/p<patient>_<take>.png`` and a manifest with one column
    per finding of :data:`FINDINGS` (1, 0, -1 uncertain) and :data:`GROUP_COLUMNS`
    instead of ``label``; pass that manifest, not the folder, to the commands. ``per_class`` images per class; about 30% of the patients
    have a second image (a re-take: new position, exposure and noise, same anatomy
    and findings). Splits are drawn by patient, stratified by class, with about
    ``test_fraction`` of each class's images in ``test``. ``source`` is one of
    :data:`SITES`, drawn independently of the class. ``OUT`` must be new or empty.
    Images are rendered on a few threads; the output does not depend on their
    number or order.

    The arguments are the options of :class:`~xrayfeat.options.settings.PhantomOptions`
    (the CLI's flags): a bad one raises :class:`~xrayfeat.options.constraints.OptionError`
    (a ``ValueError``; :class:`~xrayfeat.options.constraints.OptionTypeError` for a
    wrong type) before anything is written. An ``OUT`` that is not an empty
    folder raises :class:`~xrayfeat.errors.DatasetError`. A full disk raises
    :class:`~xrayfeat.errors.DiskFullError` naming ``OUT``, after removing what
    was written into it, so the same command can be run again once there is room.
    """
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: folder is not empty; choose a new folder or delete it")
    created = not out.exists()
    try:
        with writing_to(out):
            return _write_all(out, task, per_class, size, seed, test_fraction)
    except DiskFullError:  # OUT was new or empty: all it holds is ours
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for child in out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def _write_all(out: pathlib.Path, task: str, per_class: int, size: int, seed: int, test_fraction: float) -> pathlib.Path:
    """The images and the manifest of :func:`write_phantoms` into the new or empty folder ``out``."""
    if task == "multilabel":
        return _write_multilabel(out, per_class * len(FOUR_CLASSES), size, seed, test_fraction)
    jobs = []
    for label in TASKS[task]:
        cls = FOUR_CLASSES.index(label)
        for patient, takes, split in _plan_class(seed, cls, per_class, float(test_fraction)):
            (out / split / label).mkdir(parents=True, exist_ok=True)
            jobs.append((out, label, cls, patient, takes, split, seed, size))
    rows = sorted(_render_jobs(_write_patient, jobs))
    manifest = out / "manifest.csv"
    atomic_write(manifest, csv_text([MANIFEST_COLUMNS, *rows], lineterminator="\n"))
    return manifest


def _render_jobs(work, jobs: list) -> list:
    """``work(job)`` for every job, on a few threads when there are enough.

    Every image has its own seed, so the order of the work does not matter;
    numpy, scipy and PIL release the GIL in their inner loops.
    """
    workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 8:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [row for rows in pool.map(work, jobs) for row in rows]
    return [row for job in jobs for row in work(job)]


def _write_multilabel(out: pathlib.Path, n_images: int, size: int, seed: int, test_fraction: float) -> pathlib.Path:
    """The multi-label task: ``n_images`` images of patients with co-occurring findings, split by patient."""
    jobs = []
    for patient, takes, split in _plan_class(seed, len(FOUR_CLASSES), n_images, float(test_fraction)):
        (out / split).mkdir(parents=True, exist_ok=True)
        jobs.append((out, patient, takes, split, seed, size))
    rows = sorted(_render_jobs(_write_multilabel_patient, jobs))
    manifest = out / "manifest.csv"
    header = ("path", "split", "patient_id", "source", *FINDINGS, *GROUP_COLUMNS)
    atomic_write(manifest, csv_text([header, *rows], lineterminator="\n"))
    return manifest
