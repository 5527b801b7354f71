"""The package's layering: every module imports only modules listed before it.

The list runs from the foundations (errors, file writing, option declarations)
through the data flow (datasets → images → store → extract → heads, baselines,
embed → runs) to the study layer, the report, the Python API and the CLI. A new
module must be placed here; an import that points up the list fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xrayfeat"

LAYERS = [
    # foundations
    "errors", "fileio", "params", "backbones", "devices", "options",
    # data flow
    "images", "filehashes", "datasets", "summary", "phantoms",
    "fingerprint", "shards", "store", "rows", "cluster", "extraction",
    "heads_jax", "head_numpy", "heads", "headproc", "baselines", "metrics", "plots", "gradcam", "embedding",
    # records and their use
    "runs", "study", "prediction", "external", "explanation", "trained", "report_doc", "report", "export", "demo",
    # faces
    "api", "clikit", "cli",
]


def _imports(path: Path) -> set[str]:
    """xrayfeat modules imported by one file (relative or absolute, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or module.startswith("xrayfeat"):
                name = module.removeprefix("xrayfeat").lstrip(".")
                if name:
                    found.add(name.split(".")[0])
                else:  # from . import a, b
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("xrayfeat."):
                    found.add(alias.name.split(".")[1])
    return found


def test_every_module_is_placed_in_the_layers():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert sorted(modules - set(LAYERS)) == []


def test_no_module_imports_one_above_it():
    position = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in ("__init__", "__main__"):
            continue
        for name in sorted(_imports(path) - {"__version__"}):
            if name in position and position[name] >= position[path.stem]:
                upward.append(f"{path.stem} imports {name}")
    assert upward == []
