"""The design card's layering, enforced: each package imports only what it may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"node", "serving", "router", "audit", "bench"}
# package -> packages of ours it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "node": {"serving", "router", "audit", "bench"},
    "serving": {"audit"},
    "router": {"serving", "audit"},
    "audit": set(),
    "bench": set(),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    offenders = {
        str(f.relative_to(ROOT)): sorted(bad)
        for f in files
        if (bad := _imports(f) - ALLOWED[package] - {package})
    }
    assert offenders == {}, f"{package} imports packages its layer forbids: {offenders}"


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom node.app import create_app\nimport router.policy\n")
    assert _imports(bad) == {"node", "router"}
