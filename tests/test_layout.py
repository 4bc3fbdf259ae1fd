"""The layout's one-way rules, read from the source (ast), so they stay true: the daemon's package
``edge`` imports nothing from the measurement tools (``bench``) or the trainer (``train_host``),
and no module of ``edge`` imports itself back through others (no import cycles, imports inside
functions included; only ``if TYPE_CHECKING:`` imports, which never run, are left out)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from edge.detectors.base import Detection, FaceDetector
from tests.conftest import REPO_ROOT


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree except what lies under ``if TYPE_CHECKING:``."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        nodes.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (at any depth), with
    ``from a import b`` also naming ``a.b`` (b may be a module)."""
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def edge_import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (REPO_ROOT / "edge").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps = {m for m in imported_modules(path) if m in paths and m != name}
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        deps |= {".".join(m.split(".")[:i]) for m in deps for i in range(2, m.count(".") + 1)}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a path that ends where it began), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])) is not None:
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])) is not None:
            return cycle
    return None


def test_edge_imports_nothing_from_bench_or_train_host() -> None:
    offenders = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in sorted((REPO_ROOT / "edge").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in ("bench", "train_host")
    }
    assert not offenders


def test_no_import_cycles_inside_edge() -> None:
    graph = edge_import_graph()
    assert "edge.detectors.registry" in graph["edge.config"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_detector_kinds_come_from_the_registry() -> None:
    from edge.config import parse_config
    from edge.detectors.registry import DETECTORS

    for kind, entry in DETECTORS.items():
        config = parse_config({"detector": {"kind": kind}}, REPO_ROOT).detector
        assert config.confidence_for() == entry.default_confidence


class _NoFaces(FaceDetector):
    """A detector kind added for the test: one class and one registry entry."""

    name = "none"

    def __init__(self, confidence: float, **_: object) -> None:
        self.confidence = confidence

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        return []


def test_a_new_detector_kind_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.config import parse_config
    from edge.detectors.registry import DETECTORS, DetectorKind, detector_from_config
    from edge.errors import ConfigError

    monkeypatch.setitem(DETECTORS, "none", DetectorKind(_NoFaces, 0.4))
    config = parse_config({"detector": {"kind": "none", "every_n_frames": 1}}, REPO_ROOT)
    detector = detector_from_config(config.detector)
    assert isinstance(detector, _NoFaces) and detector.confidence == 0.4
    with pytest.raises(ConfigError, match="cannot search regions"):
        parse_config({"detector": {"kind": "none", "every_n_frames": 3}}, REPO_ROOT)


MAX_FUNCTION_LINES = 80


def test_no_function_longer_than_80_lines() -> None:
    """In edge/, bench/ and train_host/: decorators, signature, docstring and body included."""
    too_long = []
    for package in ("edge", "bench", "train_host"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    length = (node.end_lineno or node.lineno) - first + 1
                    if length > MAX_FUNCTION_LINES:
                        too_long.append(f"{path.relative_to(REPO_ROOT)}:{node.name} {length}")
    assert not too_long


def test_bench_imports_no_private_pipeline_fields() -> None:
    """The bench observes the pipeline through public names only."""
    for path in sorted((REPO_ROOT / "bench").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        private = [
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_last_")
        ]
        assert not private, f"{path.name}: {private}"
