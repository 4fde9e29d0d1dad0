"""Import layering: an ordered table of semrec's packages, each importing only those below it.

A strict order leaves no room for a package cycle. The few upward imports that remain are
listed in ``KNOWN_UPWARD`` with what removes them; the list may only shrink (an entry that
no longer occurs fails the test too, so it is deleted when its import goes). Modules left
behind as deprecated re-exports of moved code (``MOVED_MARKER`` in their docstring) are
not part of the graph.
"""

from __future__ import annotations

import ast
import warnings
from collections import Counter
from pathlib import Path

import pytest

import semrec

PACKAGE = Path(semrec.__file__).parent
MOVED_MARKER = "this path re-exports it for one release"

# Lowest first. A top-level module (``errors.py``) or package (``data/``) is one unit; a
# dotted name (``config.load``) makes a module of a package a unit of its own, placed apart
# from the rest of its package.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "artifacts", "registry", "distributed", "known_warnings", "machine", "seeding"),
    ("memory_budget",),
    ("config",),  # the schema and the stage key sets
    ("data",),
    ("metrics",),
    ("text",),
    ("cf", "embedders"),
    ("tokenizers",),
    ("decoding",),
    ("ranking",),
    ("tasks",),
    ("prompts",),
    ("models",),
    ("posttrain",),
    ("evaluation",),
    # loading a config checks it against the registries of the packages below
    ("config.validation", "config.load"),
    ("annotate",),
    ("factories",),
    ("run_directory", "run_lock"),
    ("run_tokenizers", "pipeline", "compare"),
    ("serving",),
    ("cli",),
]

# (importer, imported): what will remove the import (issue #27).
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    ("text", "models"): "the LLM text encoder takes its backbone loader by constructor",
}
SPLIT_UNITS = frozenset(unit for units in LAYERS for unit in units if "." in unit)


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module the file ``path`` of ``package`` imports (relative imports resolved),
    including imports inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
    return names


def unit_of(pieces: list[str] | tuple[str, ...], split: frozenset[str]) -> str:
    """The unit of the module ``pieces`` (``["semrec", "config", "load"]`` -> ``config.load``
    when that is in ``split``, else ``config``)."""
    dotted = ".".join(pieces[1:3])
    return dotted if dotted in split else pieces[1]


def unit_imports(root: Path, split: frozenset[str] = SPLIT_UNITS) -> Counter[tuple[str, str]]:
    """(importer unit, imported unit) -> number of import statements, over every module of
    the package at ``root`` (its directory name is the package name)."""
    edges: Counter[tuple[str, str]] = Counter()
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if MOVED_MARKER in text:
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[1] == "__init__":
            continue  # the top-level package re-exports; it is no layer
        package, source = ".".join(parts[:-1]), unit_of(parts, split)
        for name in imported_modules(path, package):
            pieces = name.split(".")
            if pieces[0] == root.name and len(pieces) > 1:
                target = unit_of(pieces, split)
                if target != source:
                    edges[(source, target)] += 1
    return edges


def cycles(edges: Counter[tuple[str, str]]) -> list[list[str]]:
    """The groups of units that import each other in a circle (Tarjan's strongly connected
    components with more than one unit)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(unit: str) -> None:
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        for nxt in sorted(graph[unit]):
            if nxt not in index:
                visit(nxt)
                low[unit] = min(low[unit], low[nxt])
            elif nxt in stack:
                low[unit] = min(low[unit], index[nxt])
        if low[unit] == index[unit]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == unit:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for unit in sorted(graph):
        if unit not in index:
            visit(unit)
    return found


def upward(edges: Counter[tuple[str, str]]) -> set[tuple[str, str]]:
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    return {(a, b) for a, b in edges if layer[b] > layer[a]}


def test_every_package_has_a_layer() -> None:
    units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    units |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    units |= {unit for unit in SPLIT_UNITS if (PACKAGE / f"{unit.replace('.', '/')}.py").is_file()}
    placed = [unit for units_ in LAYERS for unit in units_]
    assert len(placed) == len(set(placed)), "a unit is placed twice"
    assert sorted(units - set(placed)) == [], "give these a row of LAYERS"
    assert sorted(set(placed) - units) == [], "these rows name nothing in semrec"


def test_no_package_imports_one_above_it() -> None:
    found = upward(unit_imports(PACKAGE))
    assert sorted(found - set(KNOWN_UPWARD)) == [], "new upward imports"
    assert sorted(set(KNOWN_UPWARD) - found) == [], "gone: delete them from KNOWN_UPWARD"


def test_no_packages_import_each_other_in_a_circle() -> None:
    assert cycles(unit_imports(PACKAGE)) == []


def test_a_planted_upward_import_is_found(tmp_path: Path) -> None:
    root = tmp_path / "semrec"
    for unit, body in {
        "data/__init__.py": "",
        "data/loader.py": "from ..models import prompting\n",
        "models/__init__.py": "import semrec.data.loader\n",
        "tokenizers/__init__.py": "def late():\n    from semrec.prompts import batching\n",
        "prompts/__init__.py": "",
        "data/old.py": f'"""Moved; {MOVED_MARKER}."""\nfrom semrec.prompts import x\n',
    }.items():
        (root / unit).parent.mkdir(parents=True, exist_ok=True)
        (root / unit).write_text(body)
    edges = unit_imports(root)
    assert edges == Counter(
        {("data", "models"): 1, ("models", "data"): 1, ("tokenizers", "prompts"): 1}
    )
    assert upward(edges) == {("data", "models"), ("tokenizers", "prompts")}
    assert cycles(edges) == [["data", "models"]]


def test_a_module_split_from_its_package_is_a_unit_of_its_own(tmp_path: Path) -> None:
    root = tmp_path / "semrec"
    for unit, body in {
        "config/__init__.py": "from semrec.config import schema\n",
        "config/schema.py": "",
        "config/load.py": "from semrec.tokenizers import TOKENIZERS\n",
        "tokenizers/__init__.py": "from semrec.config import schema\n",
    }.items():
        (root / unit).parent.mkdir(parents=True, exist_ok=True)
        (root / unit).write_text(body)
    split = frozenset({"config.load"})
    assert unit_imports(root, split) == Counter(
        {("config.load", "tokenizers"): 1, ("tokenizers", "config"): 1}
    )
    assert cycles(unit_imports(root, split)) == []
    assert cycles(unit_imports(root, frozenset())) == [["config", "tokenizers"]]


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("semrec.evaluation.metrics", "semrec.metrics.ranking", "TopKRankingMetrics"),
        ("semrec.evaluation.per_user", "semrec.metrics.per_user", "PerUserRanks"),
        ("semrec.evaluation.significance", "semrec.metrics.significance", "paired_test"),
        ("semrec.evaluation.popularity", "semrec.metrics.popularity", "evaluate_popularity"),
        ("semrec.data.batching", "semrec.prompts.batching", "PromptEncoder"),
        ("semrec.data.compact", "semrec.prompts.compact", "PREFIX_POSITION"),
        ("semrec.data.datamodule", "semrec.prompts.datamodule", "GenRecDataModule"),
        ("semrec.data.sid_placeholders", "semrec.prompts.sid_placeholders", "SIDPlaceholders"),
        ("semrec.data.task_pairs", "semrec.prompts.task_pairs", "TaskPairs"),
    ],
)
def test_a_moved_module_still_imports_from_its_old_path_with_a_warning(old, new, name) -> None:
    import importlib
    import sys

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
