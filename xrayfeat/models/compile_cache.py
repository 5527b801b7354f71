"""jax's persistent compilation cache for the head's child process: its XLA programs compiled once per machine.

Why: every head trained on jax compiles the same programs again (the weights'
initialisers, the fused step's five pieces, prediction): about 2.4 s of XLA
compilation in each ``fit-head`` on 2 cores, on the critical path of a warm run
(BENCHMARKS.md, issue 26). jax can keep compiled programs on disk, keyed by
the program, the compile options, the flags and the platform's version, and
reuse them; the results are the same programs, so nothing changes but time.

Where: ``$XRAYFEAT_COMPILE_CACHE`` (``off`` turns the cache off), else
``$XDG_CACHE_HOME/xrayfeat/jax`` or ``~/.cache/xrayfeat/jax``, in a folder per
CPU (:func:`cpu_identity`). jax's key names the platform ("cpu") but not the
processor, and XLA compiles for the processor it runs on, so a home folder
shared by machines with different processors must not share programs. A
``JAX_COMPILATION_CACHE_DIR`` the user set is left as it is. Where the folder
cannot be made, jax compiles as it would without a cache.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

__all__ = ["cache_env", "cache_folder", "cpu_identity"]

#: The environment variable that moves the cache (or turns it off with ``off``).
ENV = "XRAYFEAT_COMPILE_CACHE"


def cpu_identity() -> str:
    """A short digest of this processor: its architecture, model and instruction-set flags (Linux), else what
    :mod:`platform` says of it."""
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
                    parts.append(line.strip())
                elif not line.strip() and len(parts) > 2:  # the first processor's block is enough
                    break
    except OSError:
        pass
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_folder(environ=os.environ) -> Path | None:
    """The folder this machine's compiled programs go to, or None when the cache is off."""
    chosen = environ.get(ENV, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        root = Path(chosen).expanduser()
    else:
        root = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xrayfeat" / "jax"
    return root / cpu_identity()


def cache_env(environ=os.environ) -> dict:
    """The variables that give a jax process the cache (every program kept, however quick to compile); {} when
    the cache is off, the user chose a jax cache folder, or the folder cannot be made."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return {}
    folder = cache_folder(environ)
    if folder is None:
        return {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return {}
    if not os.access(folder, os.W_OK | os.X_OK):
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": str(folder), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
