"""The layout's one-way rules, read from the source (ast), so they stay true: the daemon's package
``edge`` imports nothing from the measurement tools (``bench``) or the trainer (``train_host``)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (at any depth)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_edge_imports_nothing_from_bench_or_train_host() -> None:
    offenders = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in sorted((REPO_ROOT / "edge").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in ("bench", "train_host")
    }
    assert not offenders
