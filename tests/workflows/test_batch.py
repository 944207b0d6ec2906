"""``fapm batch``: one executed notebook per category, metrics collected into summary.md, failing
categories listed while the others still run."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from fapm_lib.cli import main as cli
from fapm_lib.data.synthetic import generate_category
from fapm_lib.errors import ConfigError, DataError
from fapm_lib.workflows.batch import resolve_categories
from tests.batch_support import EVALUATION, counting_notebook, fake_category


def batch(*args: str) -> int:
    return cli.main(["batch", "--no-progress", *args])


def table_row(summary: str, title: str, method: str) -> list[str]:
    """Cells of ``method``'s row in the table headed ``| title |``."""
    section = summary.split(f"| {title} |", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith(f"| {method} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_resolve_categories(tmp_path: Path) -> None:
    for name in ("b", "a", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert resolve_categories(tmp_path, "all") == ["a", "b"]
    assert resolve_categories(tmp_path, " b, a,b ,") == ["b", "a"]
    with pytest.raises(ConfigError, match="--categories"):
        resolve_categories(tmp_path, " , ")
    with pytest.raises(DataError, match="no category folders"):
        resolve_categories(tmp_path / "a", "all")


def test_bad_notebook_or_root_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    nb = counting_notebook(tmp_path / "count.ipynb")
    assert batch("--notebook", str(tmp_path / "missing.ipynb"), "--data-root", str(tmp_path),
                 "--output", str(tmp_path / "r")) == 2
    assert batch("--notebook", str(nb), "--data-root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "missing.ipynb: notebook not found" in err[0] and "nowhere" in err[1]
    assert not (tmp_path / "r").exists()


def test_all_categories_succeed_exit_zero(tmp_path: Path) -> None:
    nb = counting_notebook(tmp_path / "count.ipynb")
    data = tmp_path / "data"
    fake_category(data, "alpha", 3)
    fake_category(data, "beta", 7)
    out = tmp_path / "results"
    assert batch("--notebook", str(nb), "--data-root", str(data), "--categories", "all", "--output", str(out)) == 0
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["alpha.ipynb", "beta.ipynb"]  # no temp files left
    summary = (out / "summary.md").read_text()
    assert table_row(summary, "Image AUC", "FAPM (notebook)") == ["FAPM (notebook)", "5.0", "3.0", "7.0"]
    assert "Failed categories" not in summary
    executed = nbformat.read(out / "notebooks" / "beta.ipynb", as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f"data_root = \"{data.resolve()}\"" in injected.source and "fast = False" in injected.source


def test_missing_or_stale_metrics_count_as_failure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    nb = tmp_path / "count.ipynb"
    counting_notebook(nb)
    book = nbformat.read(nb, as_version=4)
    book.cells[0].source = book.cells[0].source.replace("write_metrics = True", "write_metrics = False")
    nbformat.write(book, nb)
    data = tmp_path / "data"
    fake_category(data, "alpha", 2)
    out = tmp_path / "results"
    stale = out / "metrics" / "alpha.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"image_auroc": 0.99}))
    assert batch("--notebook", str(nb), "--data-root", str(data), "--output", str(out)) == 1
    assert "alpha: DataError: count.ipynb wrote no metrics" in (out / "summary.md").read_text()
    assert "alpha: FAILED" in capsys.readouterr().err


@pytest.mark.notebooks
def test_evaluation_notebook_over_two_categories_and_a_broken_one(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("papermill")
    data = tmp_path / "data"
    for name in ("vial", "fabric"):
        generate_category(data, name, size=128, n_train=10, n_test_good=3, n_per_defect=2)
    shutil.copytree(data / "vial" / "test", data / "empty" / "test")  # a category without training images
    (data / "empty" / "train" / "good").mkdir(parents=True)
    out = tmp_path / "results"
    code = batch("--notebook", str(EVALUATION), "--data-root", str(data), "--categories", "vial,empty,fabric",
                 "--backbone", "tf_efficientnet_lite0", "--fast", "--output", str(out))
    assert code == 1
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["empty.ipynb", "fabric.ipynb", "vial.ipynb"]
    summary = (out / "summary.md").read_text()
    for title in ("Image AUC", "Pixel AUC", "Pixel F1"):
        header = next(line for line in summary.splitlines() if line.startswith(f"| {title} |"))
        assert header == f"| {title} | Avg | empty | fabric | vial |"
        cells = table_row(summary, title, "FAPM (notebook)")
        assert cells[1] == "" and cells[2] == ""  # no average over a failed category; empty has no value
        assert all(re.fullmatch(r"\d+\.\d", value) for value in cells[3:])
        assert re.fullmatch(r"\d+\.\d", table_row(summary, title, "PatchCore (notebook)")[4])
    assert re.search(r"- empty: DataError: no training images in .*empty/train/good", summary)
    assert "empty: FAILED" in capsys.readouterr().err
    results = json.loads((out / "summary.json").read_text())["results"]["FAPM (notebook)"]
    assert sorted(results) == ["fabric", "vial"] and results["vial"]["fast"] is True
    failed = nbformat.read(out / "notebooks" / "empty.ipynb", as_version=4)
    assert any(o.get("ename") == "DataError" for c in failed.cells for o in c.get("outputs", []))
