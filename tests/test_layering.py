"""Import layering: the data layer knows nothing of models."""

from __future__ import annotations

import ast
from pathlib import Path

import semrec

PACKAGE = Path(semrec.__file__).parent


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module the file ``path`` of ``package`` imports (relative imports resolved)."""
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


def test_data_does_not_import_models():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name
            for name in imported_modules(
                path, ".".join(path.relative_to(PACKAGE.parent).parts[:-1])
            )
            if name.startswith("semrec.models")
        )
        for path in (PACKAGE / "data").rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_imported_modules_sees_a_planted_models_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from ..models import prompting\nimport semrec.models.loss\n")
    found = imported_modules(planted, "semrec.data")
    assert {"semrec.models", "semrec.models.loss"} <= found
