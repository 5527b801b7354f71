"""jax's compiled programs kept on disk for the head's child: where, per processor, and when not at all.

The child using them (and training the same head from them): tests/test_headproc.py.
"""

from __future__ import annotations

import os
import stat
import sys

import pytest

from xrayfeat.models import compile_cache


def test_the_folder_is_per_processor_under_the_user_cache(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    folder = compile_cache.cache_folder(env)
    assert folder == tmp_path / "xrayfeat" / "jax" / compile_cache.cpu_identity()
    assert compile_cache.cache_env(env) == {"JAX_COMPILATION_CACHE_DIR": str(folder),
                                            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    assert folder.is_dir()


def test_the_processor_identity_is_stable_and_short():
    first = compile_cache.cpu_identity()
    assert first == compile_cache.cpu_identity() and len(first) == 16 and int(first, 16) >= 0


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="the processor's flags are read from /proc/cpuinfo (Linux)")
def test_another_processor_gets_another_folder(monkeypatch):
    """Two processors that differ only in their instruction-set flags do not share compiled programs."""
    import builtins
    import io

    real_open = builtins.open

    def cpuinfo(flags):
        text = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
        return lambda path, *a, **k: io.StringIO(text) if path == "/proc/cpuinfo" else real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse2 avx2"))
    with_avx2 = compile_cache.cpu_identity()
    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse2 avx2 avx512f"))
    assert compile_cache.cpu_identity() != with_avx2


def test_off_or_the_users_own_jax_folder_give_nothing(tmp_path):
    assert compile_cache.cache_folder({"XRAYFEAT_COMPILE_CACHE": "off"}) is None
    assert compile_cache.cache_env({"XRAYFEAT_COMPILE_CACHE": "OFF"}) == {}
    assert compile_cache.cache_env({"JAX_COMPILATION_CACHE_DIR": str(tmp_path)}) == {}
    moved = compile_cache.cache_env({"XRAYFEAT_COMPILE_CACHE": str(tmp_path / "here")})
    assert moved["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "here" / compile_cache.cpu_identity())


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="permissions do not bind root")
def test_a_folder_that_cannot_be_made_means_no_cache(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert compile_cache.cache_env({"XRAYFEAT_COMPILE_CACHE": str(locked / "cc")}) == {}
    finally:
        locked.chmod(stat.S_IRWXU)


def test_a_file_where_the_folder_should_be_means_no_cache(tmp_path):
    (tmp_path / "cc").write_text("not a folder")
    assert compile_cache.cache_env({"XRAYFEAT_COMPILE_CACHE": str(tmp_path / "cc")}) == {}
