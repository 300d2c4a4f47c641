"""Rules of the code base's structure (docs/architecture.md): no private name crosses a module of
nerflib, and no test module imports another (shared helpers live in tests/helpers/)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_no_private_name_imported_across_nerflib_modules():
    found = [f"{path.relative_to(REPO)}: from {module} import {name}"
             for path in sorted((REPO / "nerflib").rglob("*.py"))
             for module, names in _imports(path) if module.startswith("nerflib")
             for name in names if name.startswith("_")]
    assert not found, found


def test_no_test_module_imports_another():
    found = [f"{path.relative_to(REPO)}: {module}"
             for path in sorted((REPO / "tests").rglob("*.py"))
             for module, _ in _imports(path)
             if module.split(".")[0].startswith("test_") or module.split(".")[0] == "conftest"]
    assert not found, found
