"""Per-category jobs on Dask (``--scheduler``): the same summaries as in-process runs, a killed
worker's category retried once while the others finish, failures reported."""
from __future__ import annotations

import json
import operator
from pathlib import Path

import nbformat
import pytest

from fapm_lib.cli import main as cli
from fapm_lib.data.synthetic import generate_category
from fapm_lib.errors import ConfigError
from fapm_lib.system.jobs import KILL_ONCE_ENV, Job, parse_scheduler, run_jobs
from tests.batch_support import EVALUATION, counting_notebook, fake_category

pytest.importorskip("distributed")


def test_parse_scheduler() -> None:
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("local")[0] == "local"
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("remote", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "local:x", "banana", "tcp://"):
        with pytest.raises(ConfigError, match="--scheduler"):
            parse_scheduler(bad)


def test_bad_scheduler_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    nb = counting_notebook(tmp_path / "count.ipynb")
    fake_category(tmp_path / "data", "alpha", 2)
    code = cli.main(["batch", "--notebook", str(nb), "--data-root", str(tmp_path / "data"), "--scheduler", "local:0",
                     "--output", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "--scheduler local:0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert cli.main(["evaluate", "--data-root", str(tmp_path / "data"), "--category", "alpha", "--scheduler", "local:2",
                     "--output", str(tmp_path / "r")]) == 2
    assert "--categories" in capsys.readouterr().err


def test_jobs_here_and_on_a_local_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    """A job that kills its worker once is retried and succeeds; a failing job is retried once,
    then reported; results come back in job order, as in-process."""
    jobs = [Job("add", operator.add, (1, 2)), Job("bad", int, ("x",)), Job("mul", operator.mul, (3, 4))]
    here = run_jobs(jobs)
    assert here.results == {"add": 3, "mul": 12} and list(here.failures) == ["bad"]
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, f"mul={marker}")
    capsys.readouterr()
    there = run_jobs(jobs, "local:2")
    assert list(there.results.items()) == list(here.results.items()) and there.failures == here.failures
    assert marker.exists()  # the worker really was killed once
    err = capsys.readouterr().err
    assert "mul: failed: its worker died" in err and "bad: failed on tcp://" in err and "retrying once" in err
    assert "FAILED: ValueError: invalid literal" in err


def test_batch_on_two_workers_survives_a_killed_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """``fapm batch --scheduler local:2``: one worker is killed in the middle of alpha's notebook,
    a category without images fails; the summary is the one of the in-process run."""
    nb = counting_notebook(tmp_path / "count.ipynb")
    data = tmp_path / "data"
    fake_category(data, "alpha", 3)
    fake_category(data, "beta", 5)
    (data / "empty" / "train" / "good").mkdir(parents=True)
    args = ["batch", "--no-progress", "--notebook", str(nb), "--data-root", str(data), "--categories", "all"]
    assert cli.main([*args, "--output", str(tmp_path / "here")]) == 1
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, f"alpha={marker}@1.0")
    capsys.readouterr()
    assert cli.main([*args, "--scheduler", "local:2", "--output", str(tmp_path / "dask")]) == 1
    err = capsys.readouterr().err
    assert marker.exists() and "alpha: failed: its worker died" in err
    here, there = (tmp_path / "here" / "summary.md").read_text(), (tmp_path / "dask" / "summary.md").read_text()
    assert there == here
    assert "| FAPM (notebook) |  | 3.0 | 5.0 |  |" in here and "- empty: AssertionError: no training images" in here
    for name in ("alpha", "beta", "empty"):
        nbformat.read(tmp_path / "dask" / "notebooks" / f"{name}.ipynb", as_version=4)  # complete files
    metrics = json.loads((tmp_path / "dask" / "summary.json").read_text())["results"]["FAPM (notebook)"]
    assert list(metrics) == ["alpha", "beta"]


def tiny_builtin(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        generate_category(root, name, size=128, n_train=10, n_test_good=3, n_per_defect=2)
    return root


@pytest.mark.slow
def test_evaluate_and_fit_all_categories_on_dask(tmp_path: Path) -> None:
    data = tiny_builtin(tmp_path / "data", ("vial", "washer"))
    (data / "empty" / "train" / "good").mkdir(parents=True)
    (data / "empty" / "test" / "good").mkdir(parents=True)
    common = ["--data-root", str(data), "--categories", "all", "--no-progress", "--coreset-ratio", "0.2"]
    assert cli.main(["evaluate", *common, "--output", str(tmp_path / "here")]) == 1
    assert cli.main(["evaluate", *common, "--scheduler", "local:2", "--output", str(tmp_path / "dask")]) == 1
    here, there = (tmp_path / "here" / "summary.md").read_text(), (tmp_path / "dask" / "summary.md").read_text()
    assert there == here and "| FAPM |  |  |" in here and "- empty: DataError: no training images" in here
    for name in ("vial", "washer"):
        assert (tmp_path / "dask" / name / "metrics.json").is_file()
        assert (tmp_path / "dask" / name / "model.safetensors").is_file()
    assert cli.main(["fit-all", *common, "--scheduler", "local:2", "--output", str(tmp_path / "fits")]) == 1
    fits = (tmp_path / "fits" / "fits.md").read_text()
    assert "| vial | 10 |" in fits and "| washer | 10 |" in fits and "- empty: DataError: no training images" in fits
    assert (tmp_path / "fits" / "vial" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.notebooks
def test_evaluation_notebook_batch_on_two_workers_matches_in_process(tmp_path: Path) -> None:
    pytest.importorskip("papermill")
    data = tiny_builtin(tmp_path / "data", ("vial", "fabric", "tablet"))
    args = ["batch", "--no-progress", "--notebook", str(EVALUATION), "--data-root", str(data), "--categories", "all",
            "--backbone", "tf_efficientnet_lite0", "--fast"]
    assert cli.main([*args, "--output", str(tmp_path / "here")]) == 0
    assert cli.main([*args, "--scheduler", "local:2", "--output", str(tmp_path / "dask")]) == 0
    here, there = (tmp_path / "here" / "summary.md").read_text(), (tmp_path / "dask" / "summary.md").read_text()
    assert there == here and "| fabric | tablet | vial |" in here
