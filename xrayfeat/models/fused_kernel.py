"""One pass over the seed head's large Dense kernel: its gradient, the L2 term and Adam, fused (numba).

Why: the head's cost is its Dense kernel (51,200 × 256 float32, 52 MB, for
InceptionV3's 5×5×2048 maps) and on a CPU a training step is bound by memory
traffic, not arithmetic. Keras' step (XLA, jax) writes the kernel's gradient
out, reads it back for each of Adam's moments and for the update, and makes the
input gradient in another pass: about 16 passes over 52 MB. Here, for a batch
of ``B`` rows, the gradient of each kernel row is a rank-``B`` sum made on the
fly, so one pass reads the kernel and both moments once and writes them once,
and also gives the gradient with respect to the layer's input (the next layer
down, BatchNormalization, needs it) and the sum of squares of the *updated*
kernel (the L2 loss of the next step). With the forward product, about 7
passes in all.

The arithmetic per element is Keras' (``keras.optimizers.Adam.update_step``
and ``keras.regularizers.L2``, float32):

    g = x_nᵀ dz + 2·l2·w          (the kernel's gradient, data and L2 terms)
    m ← m + (g − m)(1 − β₁)
    v ← v + (g² − v)(1 − β₂)
    w ← w − (m·α) / (√v + ε)       α = lr·√(1 − β₂ᵗ) / (1 − β₁ᵗ), as Keras computes it

Only the order of float32 additions differs from Keras' (the rank-``B`` sums and
the input gradient's row sums, which may use fused multiply-adds): no
approximate reciprocal or square root is allowed (numba's ``fastmath`` is
limited to reassociation and contraction). Rows are processed in blocks of
:data:`BLOCK`, each block by one thread, and nothing is summed across blocks
except the sum of squares, which is added in block order: the results are the
same whatever the number of threads.

:func:`check_kernel` compiles the kernel and compares one step on a small problem
with a float64 numpy reference; the fused loop runs only when it passes.
Nothing is imported from numba until a function here is called.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

__all__ = ["BLOCK", "CHUNKS", "adam_alpha", "check_kernel", "forward", "kernel", "reference_step", "step", "warm_up"]

#: Kernel rows per block (one thread's unit of work).
BLOCK = 64

# numba's default threading layer (workqueue) aborts the process when two threads launch parallel kernels at once;
# a notebook training two heads on threads must wait its turn instead.
_LAUNCH = threading.Lock()


@functools.lru_cache(maxsize=1)
def kernel():
    """The compiled kernel (numba; compiled once per process, cached on disk by numba where it can write)."""
    import numba

    def fused_dense_adam(x_t, dz, w, m, v, l2x2, one_minus_b1, one_minus_b2, alpha, eps, dx, sumsq):
        rows, units = w.shape
        batch = dz.shape[0]
        blocks = (rows + BLOCK - 1) // BLOCK
        for block in numba.prange(blocks):
            g = np.empty(units, np.float32)
            total = 0.0
            for j in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
                wj, mj, vj = w[j], m[j], v[j]
                for c in range(units):
                    g[c] = l2x2 * wj[c]
                for b in range(batch):
                    xb = x_t[j, b]
                    acc = np.float32(0.0)
                    for c in range(units):
                        g[c] += xb * dz[b, c]
                        acc += dz[b, c] * wj[c]
                    dx[b, j] = acc
                for c in range(units):
                    gc = g[c]
                    mc = mj[c] + (gc - mj[c]) * one_minus_b1
                    vc = vj[c] + (gc * gc - vj[c]) * one_minus_b2
                    wc = wj[c] - (mc * alpha) / (np.sqrt(vc) + eps)
                    mj[c], vj[c], wj[c] = mc, vc, wc
                    total += np.float64(wc) * np.float64(wc)
            sumsq[block] = total

    return _compiled(fused_dense_adam)


def _compiled(function):
    """``function`` compiled by numba (parallel; reassociation and contraction only), cached on disk where numba can.

    numba keeps its cache beside the module, or in a per-user folder when that
    is read-only; where it finds neither it refuses to cache, and the kernel is
    then compiled in every process (seconds) rather than not used.
    """
    import numba

    options = {"parallel": True, "fastmath": {"reassoc", "contract", "nsz"}, "nogil": True}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(**options)(function)


#: Row chunks of the forward product (a fixed number, so that its sum has one order whatever the threads).
CHUNKS = 32


@functools.lru_cache(maxsize=1)
def forward_kernel():
    """The compiled forward product ``x_n @ w``: partial products per row chunk, summed in chunk order."""
    import numba

    def dense_forward(x_t, w, partial):
        rows, units = w.shape
        batch = x_t.shape[1]
        chunks = partial.shape[0]
        size = (rows + chunks - 1) // chunks
        for chunk in numba.prange(chunks):
            acc = partial[chunk]
            acc[:, :] = 0.0
            for j in range(chunk * size, min(rows, (chunk + 1) * size)):
                wj = w[j]
                for b in range(batch):
                    xb = x_t[j, b]
                    for c in range(units):
                        acc[b, c] += xb * wj[c]

    return _compiled(dense_forward)


def forward(x_n, w, chunks: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x_n @ w`` in float32, one read of ``w``, without BLAS threads: (the product, ``x_n`` transposed for :func:`step`).

    Why not BLAS: its threads and numba's (the fused pass) take turns on the
    same cores every step, and on a busy machine BLAS' waiting threads made the
    product ten times slower than one pass over the kernel. ``chunks``: how
    many partial products to sum (:data:`CHUNKS` by default); another number
    sums the same terms in another order, and 0 leaves the product to BLAS
    (float32 twins of the step, for tests).
    """
    chunks = CHUNKS if chunks is None else chunks
    x_t = np.ascontiguousarray(np.asarray(x_n, np.float32).T)
    if chunks == 0:
        return np.asarray(x_n, np.float32) @ w, x_t
    partial = np.empty((chunks, x_t.shape[1], w.shape[1]), np.float32)
    with _LAUNCH:
        forward_kernel()(x_t, w, partial)
    return partial.sum(axis=0, dtype=np.float32), x_t


def adam_alpha(learning_rate: float, beta_1: float, beta_2: float, step: int) -> np.float32:
    """Adam's step size at 1-based ``step`` in float32, as ``keras.optimizers.Adam.update_step`` computes it."""
    f = np.float32
    t = f(step)
    b1_power, b2_power = f(beta_1) ** t, f(beta_2) ** t
    return f(f(learning_rate) * np.sqrt(f(1) - b2_power) / (f(1) - b1_power))


def step(x_t, dz, w, m, v, *, l2: float, beta_1: float, beta_2: float, epsilon: float, alpha) -> tuple[np.ndarray, float]:
    """One fused pass: update ``w``, ``m``, ``v`` in place; return (the gradient w.r.t. ``x_n``, Σ w² after the update).

    ``x_t``: the layer's input transposed, (rows, B) float32 (as :func:`forward`
    returns it); ``dz``: the loss gradient w.r.t. the layer's pre-activation
    output (bias excluded), (B, units); ``w``, ``m``, ``v``: (rows, units)
    float32, C-contiguous, written in place.
    """
    f = np.float32
    x_t = np.ascontiguousarray(x_t, f)
    # a writable copy (10 × 256 floats): a read-only array, as jax hands out, is another type to numba, and would
    # compile the kernel a second time at the first training step instead of using the one warm_up compiled
    dz = np.array(dz, f, order="C")
    dx = np.empty((dz.shape[0], w.shape[0]), f)
    sumsq = np.empty(-(-w.shape[0] // BLOCK), np.float64)
    with _LAUNCH:
        kernel()(x_t, dz, w, m, v, f(2 * l2), f(1 - beta_1), f(1 - beta_2), f(alpha), f(epsilon), dx, sumsq)
    return dx, float(sumsq.sum())


def reference_step(x_n, dz, w, m, v, *, l2: float, beta_1: float, beta_2: float, epsilon: float, alpha):
    """The same step in float64 numpy, unfused: (new w, new m, new v, the input gradient, Σ new w²)."""
    x_n, dz, w, m, v = (np.asarray(a, np.float64) for a in (x_n, dz, w, m, v))
    g = x_n.T @ dz + 2 * l2 * w
    m = m + (g - m) * (1 - beta_1)
    v = v + (g * g - v) * (1 - beta_2)
    new_w = w - (m * float(alpha)) / (np.sqrt(v) + epsilon)
    return new_w, m, v, dz @ w.T, float((new_w * new_w).sum())


def warm_up() -> None:
    """Compile both kernels now (or load them from numba's cache), if numba is here; never raises.

    For a process that will train soon (the head's child process) and has time
    to spare now; :func:`check_kernel` reports any failure when it matters.
    """
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        return
    try:
        rng = np.random.default_rng(0)
        w = rng.standard_normal((BLOCK + 1, 3)).astype(np.float32)
        z, x_t = forward(rng.standard_normal((2, BLOCK + 1)).astype(np.float32), w)
        step(x_t, z, w, np.zeros_like(w), np.zeros_like(w), l2=0.0, beta_1=0.9, beta_2=0.999, epsilon=1e-7, alpha=1e-3)
    except Exception:  # noqa: BLE001 - reported by check_kernel() when the fused step is chosen
        return


def check_kernel() -> str | None:
    """Compile the kernel and compare three steps on a small problem with :func:`reference_step`; None when it agrees.

    What it guards against: numba missing or failing to compile, or a kernel
    that computes something else (a broken compiler or a threading layer that
    skips blocks). The tolerance is float32's: the two differ by float32
    rounding only. Returns one phrase saying what is wrong otherwise.
    """
    try:
        kernel()
        forward_kernel()
    except ImportError:
        return "numba is not installed (pip install numba)"
    except Exception as exc:  # a compiler failure of any kind means the fused step is not used
        return f"the fused kernel does not compile ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
    rng = np.random.default_rng(0)
    rows, units, batch = 3 * BLOCK + 5, 19, 4  # a partial last block, an odd width
    w = rng.standard_normal((rows, units)).astype(np.float32) * 0.05
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    want = [w.astype(np.float64), m.astype(np.float64), v.astype(np.float64)]
    settings = {"l2": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    for t in range(1, 4):
        x_n = rng.standard_normal((batch, rows)).astype(np.float32)
        dz = rng.standard_normal((batch, units)).astype(np.float32) * 0.1
        alpha = adam_alpha(1e-3, 0.9, 0.999, t)
        z, x_t = forward(x_n, w)
        if not np.allclose(z, x_n.astype(np.float64) @ w.astype(np.float64), rtol=1e-4, atol=1e-5):
            return "the fused kernel's forward product differs from the numpy reference"
        dx, sumsq = step(x_t, dz, w, m, v, alpha=alpha, **settings)
        *want, want_dx, want_sumsq = reference_step(x_n, dz, *want, alpha=alpha, **settings)
        got = [w, m, v, dx]
        for name, a, b in zip(("kernel", "first moment", "second moment", "input gradient"), got, [*want, want_dx]):
            if not np.allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max()))):
                return f"the fused kernel's {name} differs from the numpy reference (max abs diff {np.abs(a - b).max():.3g})"
        if not np.isclose(sumsq, want_sumsq, rtol=1e-5):
            return "the fused kernel's sum of squares differs from the numpy reference"
    return None
