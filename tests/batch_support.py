"""Stand-ins for the ``fapm batch`` and per-category job tests: a notebook that starts in a second and
counts training images, categories of empty files for it to count, and notebook 04 for the real runs."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from tests.helpers import REPO

EVALUATION = REPO / "notebooks" / "04_evaluation.ipynb"

#: A stand-in notebook (starts in a second): "image AUROC" = number of training images / 100.
COUNTING_SOURCE = '''
import json, pathlib
images = sorted((pathlib.Path(data_root) / category / "train" / "good").glob("*.png"))
assert images, f"no training images for {category}"
if metrics_path and write_metrics:
    metrics = {"image_auroc": len(images) / 100, "pixel_auroc": 0.5, "pixel_f1_max": 0.25}
    pathlib.Path(metrics_path).write_text(json.dumps(metrics))
'''


def counting_notebook(path: Path) -> Path:
    """The stand-in notebook, parameterised like the numbered ones, written to ``path``."""
    params = new_code_cell('data_root = ""\ncategory = ""\nbackbone = "none"\nfast = False\nmetrics_path = ""\n'
                           'write_metrics = True')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(COUNTING_SOURCE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def fake_category(root: Path, name: str, n_train: int) -> None:
    """``root/name`` with ``n_train`` empty train/good PNG files and an empty test/good."""
    for i in range(n_train):
        path = root / name / "train" / "good" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (root / name / "test" / "good").mkdir(parents=True, exist_ok=True)
