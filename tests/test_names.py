"""One word per concept: no public name is defined by two modules of the package.

A public name (no leading underscore) defined at the top of two modules means two
things under one word (two ``ExportResult`` classes, four ``evaluate`` functions).
The one exception is the Python face, :mod:`xrayfeat.api`: its ``extract`` is the
library's ``extract`` over a folder, so an api function may share the name of the
function it calls, and only that.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xrayfeat"


def _defined(tree: ast.Module) -> dict[str, ast.AST]:
    """Public names bound at a module's top level by def, class or assignment (imports excluded)."""
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return {name: node for name, node in names.items() if not name.startswith("_") and name not in ("log", "logger")}


def _calls(node: ast.AST) -> set[str]:
    """Names a function calls, directly (``f(...)``) or as an attribute (``m.f(...)``), imported aliases undone."""
    aliases = {a.asname: a.name for sub in ast.walk(node) if isinstance(sub, ast.ImportFrom) for a in sub.names if a.asname}
    called = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            called.add(aliases.get(name, name))
    return called


def _face_calls(node: ast.AST, tree: ast.Module) -> set[str]:
    """What an api function calls, with the module's top-level import aliases undone too."""
    aliases = {a.asname: a.name for sub in tree.body if isinstance(sub, ast.ImportFrom) for a in sub.names if a.asname}
    return {aliases.get(name, name) for name in _calls(node)}


def _modules() -> dict[str, ast.Module]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): ast.parse(path.read_text())
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
    }


def test_no_public_name_is_defined_by_two_modules():
    owners = defaultdict(list)
    api_nodes = {}
    for module, tree in _modules().items():
        for name, node in _defined(tree).items():
            owners[name].append(module)
            if module == "xrayfeat.api":
                api_nodes[name] = (node, tree)
    clashes = []
    for name, modules in sorted(owners.items()):
        others = [m for m in modules if m != "xrayfeat.api"]
        if "xrayfeat.api" in modules and len(others) == 1 and name in _face_calls(*api_nodes[name]):
            continue  # the face of the function it calls
        if len(modules) > 1:
            clashes.append(f"{name}: {', '.join(modules)}")
    assert clashes == []
