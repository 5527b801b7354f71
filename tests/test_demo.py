"""``xrayfeat demo --quick``: the whole study on phantom X-rays, end to end, as a user runs it.

The suite's longest test, in a file of its own (split from tests/test_cli.py) so that it starts first
on one xdist worker while the other works through the rest.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_demo_quick_runs_end_to_end(tmp_path):
    proc = run_cli("demo", "--out", tmp_path / "demo", "--quick", "--per-class", "8", "--json", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["weights"] in ("none", "imagenet") and len(data["runs"]) == 3
    html = (tmp_path / "demo" / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 3 * 5  # curves, confusion, ROC, t-SNE, UMAP per run
    if data["weights"] == "none":
        assert "RANDOM" in html
