"""The tutorial notebooks: committed without outputs, parameterised for papermill, and each one
runs end to end (fast mode, offline backbone) on a small generated category."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from fapm_lib.data.synthetic import CATEGORIES, generate_category
from tests.helpers import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
REQUIRED = ("data_root", "category", "backbone", "fast")
CATEGORY = next(name for name, spec in CATEGORIES.items() if spec.kind == "object")


def parameters_of(nb: nbformat.NotebookNode) -> dict[str, object]:
    """Names and literal values assigned in the cell tagged ``parameters`` (exactly one)."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "expected exactly one cell tagged 'parameters'"
    assert cells[0].cell_type == "code"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds plain assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_the_four_numbered_notebooks_exist() -> None:
    stems = [p.name[:3] for p in NOTEBOOKS]
    assert stems[:4] == ["01_", "02_", "03_", "04_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_clean_and_parameterised(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and "learn" in nb.cells[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"outputs left in: {cell.source[:60]!r}"
    params = parameters_of(nb)
    assert set(REQUIRED) <= set(params)
    assert params["data_root"] == "../data/builtin" and params["category"] in CATEGORIES
    assert params["backbone"] == "tf_efficientnet_lite0" and params["fast"] is False
    assert any("fapm_lib" in c.source for c in nb.cells if c.cell_type == "code")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built-in category, small: 10 train, 3 good and 2 per defect type test images, 128 px."""
    root = tmp_path_factory.mktemp("builtin")
    generate_category(root, CATEGORY, size=128, n_train=10, n_test_good=3, n_per_defect=2)
    return root


@pytest.fixture(scope="module")
def small_rail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in long part, small (10 train, 3 good and 1 per defect type test images, 384 x 128)."""
    root = tmp_path_factory.mktemp("rail")
    generate_category(root, "rail", size=64, n_train=10, n_test_good=3, n_per_defect=1)
    return root


def _outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path: Path, small_data: Path, small_rail: Path, tmp_path: Path) -> None:
    pm = pytest.importorskip("papermill")
    declared = parameters_of(nbformat.read(path, as_version=4))
    params = {"data_root": str(small_data), "category": CATEGORY, "backbone": "tf_efficientnet_lite0", "fast": True}
    if declared["category"] == "rail":  # notebook 08 is about the long part
        params.update(data_root=str(small_rail), category="rail")
    if "metrics_path" in declared:
        params["metrics_path"] = str(tmp_path / "metrics.json")
    if "output_dir" in declared:
        params["output_dir"] = str(tmp_path / "own")
    executed = tmp_path / path.name
    # a failing cell raises PapermillExecutionError, which fails the test
    pm.execute_notebook(str(path), str(executed), parameters=params, kernel_name="python3",
                        cwd=str(path.parent), progress_bar=False)
    nb = nbformat.read(executed, as_version=4)
    assert _outputs(nb, "image/png"), "no figure was drawn"
    if "metrics_path" in declared:
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["category"] == CATEGORY and metrics["fast"] is True
        for key in ("image_auroc", "pixel_auroc", "pixel_f1_max"):
            assert 0.0 <= metrics[key] <= 1.0
        printed = [o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stdout"]
        assert json.loads(printed[-1].strip().splitlines()[-1]) == metrics
    if path.stem.startswith("03"):  # the explorer: its widget panel, saved with its status line (the book shows it)
        assert _outputs(nb, "application/vnd.jupyter.widget-view+json")
        state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        values = [str(model["state"].get("value", "")) for model in state.values()]
        assert any("image AUROC" in v and "updated in" in v for v in values)
