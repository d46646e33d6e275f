"""The report notebooks are committed clean and parameterisable."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

# the parameterised report notebooks (exploration notebooks NN-*.ipynb have their own tests)
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*_report.ipynb"))
EXPECTED_PARAMETERS = {"site_id", "data_dir", "as_of", "min_cell", "run_key", "shared_dir",
                       "renderer", "formats", "plan"}


def test_report_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"site_report.ipynb", "collaborative_report.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert "papermill" not in nb.metadata, f"{path.name}: papermill metadata (an executed copy?)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_tagged_parameters(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0]
    assert "parameters" in first.metadata.get("tags", [])
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    names = {t.id for node in ast.parse(first.source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target])}
    assert names == EXPECTED_PARAMETERS
    # papermill parses "name = value  # help": a '=' inside the comment breaks its parser
    for line in first.source.splitlines():
        if "#" in line and not line.lstrip().startswith("#"):
            assert "=" not in line.split("#", 1)[1], line


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_quarto_front_matter_and_thin_cells(path):
    nb = nbformat.read(path, as_version=4)
    raw = nb.cells[0]
    assert raw.cell_type == "raw" and raw.source.startswith("---")
    assert re.search(r"^title:", raw.source, re.MULTILINE) and "typst" in raw.source and "html" in raw.source
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] == "analysis" for a in node.names), cell.source
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] == "analysis", cell.source
        if "parameters" not in cell.metadata.get("tags", []):
            assert cell.source.startswith("#| label: "), f"cell without a Quarto label:\n{cell.source}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_quarto_labels_unique(path):
    nb = nbformat.read(path, as_version=4)
    labels = [m.group(1) for c in nb.cells if c.cell_type == "code"
              for m in [re.match(r"#\| label: (\S+)", c.source)] if m]
    assert len(labels) == len(set(labels)), labels
