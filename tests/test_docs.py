"""The Python API guide (docs/python-api.md) runs as written: every ```python block, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_guide_has_examples():
    assert len(_blocks(DOC.read_text())) >= 8


@pytest.mark.slow
def test_python_api_guide_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(_blocks(DOC.read_text()), 1):
        try:
            exec(compile(block, f"{DOC.name}[block {number}]", "exec"), namespace)
        except Exception as exc:  # name the block that broke, with its code
            raise AssertionError(f"block {number} of {DOC.name} failed: {exc!r}\n{block}") from exc
