"""The package's layering and surface: the folder layout is the data flow, and imports only run down it.

``LAYERS`` lists xrayfeat's top-level parts from the foundations (errors, file
writing, the library's logging and quiet frameworks, the notebook display's pieces, devices, provenance, the backbone registry's facts, the options that read them)
through the data flow (data → store → distributed → extraction → models →
analysis → runs → report) to the faces (the Python API, the demo, the CLI). A
module may import its own package and any part listed before its own; an import
that points up the list fails. A new top-level part must be placed here.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import pkgutil
from pathlib import Path

import xrayfeat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xrayfeat"

LAYERS = [
    # foundations
    "errors", "fileio", "devices", "runtime", "display", "provenance", "backbones", "options",
    # the data flow
    "data", "store", "distributed", "extraction", "models", "analysis", "runs", "report",
    # faces
    "api", "demo", "cli",
]


def _part(path: Path) -> str:
    """The top-level part a file belongs to: its subpackage, or its own module name."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """Top-level xrayfeat parts imported by one file (at any depth, absolute or relative)."""
    package = ".".join(("xrayfeat", *path.relative_to(PACKAGE).parts[:-1]))
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names = [module] if module != "xrayfeat" else [f"xrayfeat.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "xrayfeat" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py" and p != PACKAGE / "__init__.py")


def test_every_part_is_placed_in_the_layers():
    parts = {_part(p) for p in _sources()}
    assert sorted(parts - set(LAYERS)) == []
    assert sorted(set(LAYERS) - parts) == []


def test_no_module_imports_a_part_above_its_own():
    position = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in _sources():
        own = position[_part(path)]
        for name in sorted(_imports(path)):
            if name in position and position[name] > own:
                upward.append(f"{path.relative_to(PACKAGE)} imports xrayfeat.{name}")
    assert upward == []


def test_the_layout_is_a_few_packages_not_a_flat_folder():
    top = [p for p in PACKAGE.iterdir() if p.name not in ("__init__.py", "__main__.py", "__pycache__")]
    assert len(top) == len(LAYERS) <= 19


def test_every_subpackage_names_its_concept_and_its_modules():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
        for module in sorted(init.parent.glob("*.py")):
            if module.name != "__init__.py":
                assert f":mod:`.{module.stem}`" in doc, f"{init.relative_to(ROOT)} does not name {module.stem}"


def test_setup_cfg_ships_every_subpackage():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options"]["packages"].strip() == "find:"
    include = config["options.packages.find"]["include"].split()
    assert include == ["xrayfeat", "xrayfeat.*"]
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages and all((PACKAGE / name / "__init__.py").is_file() for name in subpackages)
    # every folder holding code is a package (a folder without __init__.py would be left out of the wheel)
    code_dirs = {p.parent for p in PACKAGE.rglob("*.py")}
    assert sorted(str(d.relative_to(ROOT)) for d in code_dirs if not (d / "__init__.py").is_file()) == []


def test_xf_keeps_exactly_its_public_names():
    assert sorted(xrayfeat.__all__) == sorted([
        "__version__",
        "discover", "extract", "features", "fit_head", "embed", "predict", "evaluate", "explain", "CachedFeatures",
        "inspect", "describe", "export", "cache_ls", "cache_verify", "cache_gc", "import_features", "convert_manifest",
        "load_run", "Run", "RunRecord", "RunWarning", "FeatureStore", "list_stores", "Dataset", "Item",
        "FeatureOptions", "RunOptions", "HeadOptions", "EmbedOptions",
        "write_report", "write_phantoms", "run_demo",
        "XrayfeatError", "DatasetError", "ImageReadError", "StoreError", "WeightsError",
    ])
    for name in xrayfeat.__all__:
        assert getattr(xrayfeat, name) is not None


def test_no_part_of_the_package_is_named_like_a_public_name():
    # importing xrayfeat.<part> binds the attribute <part> on the package: a part named like a public
    # name (a subpackage ``features`` beside ``xf.features``) would replace that name once imported
    assert sorted(set(LAYERS) & set(xrayfeat.__all__)) == []


def test_every_module_imports():
    for info in pkgutil.walk_packages(xrayfeat.__path__, "xrayfeat."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
