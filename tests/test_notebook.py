"""examples/quickstart.ipynb runs top to bottom and shows what it says it shows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def _images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.outputs)


def test_the_quickstart_notebook_executes_and_recommends():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    data, sids, training, recommend = code[1], code[2], code[3], code[4]
    assert "'num_users': " in _text(data) and "test users" in _text(data)
    assert "collision rate after resolution:  0.0" in _text(sids)
    assert _images(sids) == 1 and _images(training) == 1
    hr = float(re.search(r"semrec\s+HR@10 = ([0-9.]+)", _text(training)).group(1))
    popularity = float(re.search(r"popularity HR@10 = ([0-9.]+)", _text(training)).group(1))
    assert hr >= 0.9 > popularity  # the tiny model memorises the synthetic rule
    top = ast.literal_eval(re.search(r"top 5: (\{.*\})", _text(recommend)).group(1))
    history = ast.literal_eval(re.search(r"history ends with (\[.*\])", _text(recommend)).group(1))
    assert top["user"] == "u0" and len(set(top["items"])) == 5
    assert not set(top["items"]) & set(history)  # seen items are excluded
