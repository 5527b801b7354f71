"""Which Keras backend and which device: cheap guesses first, the framework's word when it is loaded.

:func:`keras_backend_name` and :func:`gpu_likely` never import the framework,
so they can decide things (the store's fingerprint, ``--device auto``) before
anything heavy is loaded; :func:`backend_device` (the one per-backend check),
:func:`gpu_available`, :func:`confirm_device` and :func:`device_scope` import
Keras and ask the backend itself. :func:`release_jax_at_exit` keeps jax's
garbage-collection hook from printing a traceback while the interpreter shuts down.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
from pathlib import Path

from xrayfeat.errors import DeviceError

__all__ = ["backend_device", "confirm_device", "device_scope", "gpu_available", "gpu_likely", "keras_backend_name",
           "release_jax_at_exit", "release_jax_gc_callback"]


def keras_backend_name() -> str:
    """The backend Keras will use, read the way Keras reads it, without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
    try:
        return json.loads(config.read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def gpu_likely() -> bool:
    """A cheap guess (no framework import) whether a GPU is usable; confirmed before computing."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def backend_device() -> str:
    """``"gpu"`` or ``"cpu"``: where the active Keras backend computes, asked of the backend (imports the framework).

    TensorFlow: a physical GPU is listed (the runtime is not started); jax: its
    default device is not the CPU; torch: CUDA is available.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if backend == "jax":
        import jax

        return "cpu" if jax.devices()[0].platform == "cpu" else "gpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU (:func:`backend_device`; imports the framework)."""
    return backend_device() == "gpu"


def confirm_device(requested: str) -> str:
    """Turn ``--device`` into "cpu" or "gpu" using what the backend really sees."""
    has_gpu = gpu_available()
    if requested == "gpu" and not has_gpu:
        import keras

        raise DeviceError(
            f"--device gpu: the {keras.backend.backend()} backend sees no GPU on this machine; "
            f"use --device cpu (or auto), or install a GPU build of the backend"
        )
    if requested == "cpu":
        return "cpu"
    return "gpu" if has_gpu else "cpu"


def device_scope(device: str):
    """The Keras device scope for a resolved device ("cpu" or "gpu"): the first device of that kind."""
    import keras

    return keras.device("gpu:0" if device == "gpu" else "cpu:0")


def release_jax_gc_callback() -> bool:
    """Collect garbage while jax is whole, then take jax's XLA hook out of ``gc.callbacks``; True when it was there.

    jax (which Keras imports on every backend) appends ``_xla_gc_callback`` to
    ``gc.callbacks``. A collection that runs while the interpreter tears the
    modules down calls it after its module's globals are gone, and Python then
    prints ``Exception ignored in: <function _xla_gc_callback ...>`` and a
    traceback on stderr, after the program's own last line (and as the last
    line of a failed head child, where the parent reads its one-line reason).
    Run before that teardown (:func:`release_jax_at_exit`), the last collection
    happens with jax intact and none runs the hook afterwards. Without jax
    loaded, nothing is done.
    """
    callback = getattr(sys.modules.get("jax._src.lib"), "_xla_gc_callback", None)
    if callback is None or callback not in gc.callbacks:
        return False
    gc.collect()
    while callback in gc.callbacks:
        gc.callbacks.remove(callback)
    return True


_released_at_exit = False


def release_jax_at_exit() -> None:
    """Run :func:`release_jax_gc_callback` when the interpreter exits (registered once; cheap, imports nothing).

    Call it before Keras or jax is imported: exit handlers run last-registered
    first, so this one then runs after jax's own.
    """
    global _released_at_exit
    if not _released_at_exit:
        atexit.register(release_jax_gc_callback)
        _released_at_exit = True
