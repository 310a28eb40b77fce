"""The design card's layering, enforced: each package imports only what it may."""

from __future__ import annotations

import ast
import itertools
import re
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


# "-m pkg.mod" inside one string ("python -m node.cli serve"), its module named
_RUN_MODULE = re.compile(r"(?:^|\s)-m\s+([A-Za-z_][\w.]*)")


def _package_of(path: Path, root: Path) -> list[str]:
    """The dotted package a module file belongs to, as parts (``serving/sub/a.py`` -> serving, sub)."""
    return list(path.resolve().relative_to(root.resolve()).parent.parts)


def _relative_targets(node: ast.ImportFrom, package: list[str]) -> set[str]:
    """Top-level packages a relative ``from ..x import y`` reaches (``..`` past the top included)."""
    up = node.level - 1
    if up > len(package):
        return {"<beyond the repository>"}
    base = package[: len(package) - up]
    if node.module:
        return {[*base, *node.module.split(".")][0]}
    if base:
        return {base[0]}
    return {alias.name.split(".")[0] for alias in node.names}  # `from .. import node` at the top


def _run_modules(tree: ast.AST) -> set[str]:
    """Top-level packages run as ``python -m pkg``: a "-m" element followed by the module in a
    list or tuple, or "-m pkg" inside one string (docstrings, which only name commands, aside)."""
    docstrings = {
        id(body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and (body := node.body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.List | ast.Tuple):
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for flag, module in itertools.pairwise(items):
                if flag == "-m" and isinstance(module, str):
                    found.add(module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(m.split(".")[0] for m in _RUN_MODULE.findall(node.value))
    return found


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Our packages ``path`` imports (absolute or relative) or runs with ``python -m``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(path, root)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.update(_relative_targets(node, package))
    found.update(_run_modules(tree))
    return found & (OURS | {"<beyond the repository>"})


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
    assert _imports(bad, tmp_path) == {"node", "router"}


def test_checker_resolves_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "bench" / "sub").mkdir(parents=True)
    mod = tmp_path / "bench" / "sub" / "x.py"
    mod.write_text("from . import y\nfrom .. import harness\nfrom ..mock import serve\n")
    assert _imports(mod, tmp_path) == {"bench"}
    mod.write_text("from ...serving.engine import LocalEngine\nfrom ... import node\n")
    assert _imports(mod, tmp_path) == {"serving", "node"}
    mod.write_text("from .... import anything\n")
    assert _imports(mod, tmp_path) == {"<beyond the repository>"}


def test_checker_sees_our_packages_run_as_modules(tmp_path: Path) -> None:
    mod = tmp_path / "bench" / "x.py"
    mod.parent.mkdir()
    mod.write_text(
        '"""Run it as python -m node.cli (a docstring names a command, it runs nothing)."""\n'
        "import sys\n"
        'cmd = [sys.executable, "-m", "node.cli", "serve"]\n'
        'other = ("python", "-m", "serving.engine_bench")\n'
        'doc = "run it as python -m router.x --help"\n'
        'fine = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "-m", "bench.cli"]\n'
        'also_fine = ["bastion", "serve", "--model", "node"]\n'
    )
    assert _imports(mod, tmp_path) == {"node", "serving", "router", "bench"}
