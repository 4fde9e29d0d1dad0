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

# Lowest first. A top-level module (``config.py``) or package (``data/``) is one unit.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "artifacts", "registry", "distributed", "known_warnings", "machine"),
    ("memory_budget",),
    ("config",),
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
    ("evaluation",),
    ("annotate",),
    ("factories",),
    ("run_directory", "run_lock"),
    ("run_tokenizers", "pipeline", "compare"),
    ("serving",),
    ("cli",),
]

# (importer, imported): what will remove the import (issue #27).
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    ("config", "cf"): "config validation moves out of the schema module",
    ("config", "data"): "config validation moves out of the schema module",
    ("config", "embedders"): "config validation moves out of the schema module",
    ("config", "evaluation"): "config validation moves out of the schema module",
    ("config", "tasks"): "config validation moves out of the schema module",
    ("config", "text"): "config validation moves out of the schema module",
    ("config", "tokenizers"): "config validation moves out of the schema module",
    ("text", "models"): "the LLM text encoder takes its backbone loader by constructor",
}


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


def unit_imports(root: Path) -> Counter[tuple[str, str]]:
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
        package, source = ".".join(parts[:-1]), parts[1]
        for name in imported_modules(path, package):
            pieces = name.split(".")
            if pieces[0] == root.name and len(pieces) > 1 and pieces[1] != source:
                edges[(source, pieces[1])] += 1
    return edges


def upward(edges: Counter[tuple[str, str]]) -> set[tuple[str, str]]:
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    return {(a, b) for a, b in edges if layer[b] > layer[a]}


def test_every_package_has_a_layer() -> None:
    units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    units |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    placed = [unit for units_ in LAYERS for unit in units_]
    assert len(placed) == len(set(placed)), "a unit is placed twice"
    assert sorted(units - set(placed)) == [], "give these a row of LAYERS"
    assert sorted(set(placed) - units) == [], "these rows name nothing in semrec"


def test_no_package_imports_one_above_it() -> None:
    found = upward(unit_imports(PACKAGE))
    assert sorted(found - set(KNOWN_UPWARD)) == [], "new upward imports"
    assert sorted(set(KNOWN_UPWARD) - found) == [], "gone: delete them from KNOWN_UPWARD"


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
