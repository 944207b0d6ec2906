"""``fapm evaluate``: thresholds from the training images only, scoring flags that act on a fitted model
(and fit-time flags refused), F1 thresholds from a validation root, plain labelled folders with masks and a
report. Tiny 64 px parts, real offline backbone."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fapm_lib import FAPM
from fapm_lib.detectors.model_file import MODEL_FILE
from tests.helpers import evaluate_metrics, one_line, run_main
from tests.parts_support import CATEGORY, SIZE, TINY_YAML, write_tree

pytestmark = pytest.mark.usefixtures("cached_extractors")


# ---- training only ----------------------------------------------------------------------------
def test_threshold_comes_from_training_images_only(capsys, tmp_path: Path, part_data: Path, part_yaml: Path) -> None:
    """Same train/good, different test sets: the same thresholds; only the measured rates move."""
    other = tmp_path / "other"
    shutil.copytree(part_data / CATEGORY / "train", other / CATEGORY / "train")
    write_tree(tmp_path / "tmp", n_train=0, n_good=5, n_bad=2, seed=77)
    for sub in ("test", "ground_truth"):
        shutil.copytree(tmp_path / "tmp" / CATEGORY / sub, other / CATEGORY / sub)
    common = ["--config", str(part_yaml), "--category", CATEGORY]
    first = evaluate_metrics(capsys, tmp_path / "a", *common, "--data-root", str(part_data))
    second = evaluate_metrics(capsys, tmp_path / "b", *common, "--data-root", str(other))
    assert first["threshold"] == second["threshold"] and first["pixel_threshold"] == second["pixel_threshold"]
    assert first["n_test"] != second["n_test"]
    for metrics in (first, second):
        assert metrics["threshold_method"] == "false_alarm_rate"
        assert 0 <= metrics["false_alarm_rate"] <= 1 and 0 <= metrics["miss_rate"] <= 1
        assert metrics["settings"]["config"]["calibration_folds"] == 5


# ---- settings act or are refused --------------------------------------------------------------
def test_evaluate_model_honours_k_and_image_score(capsys, tmp_path: Path, part_data: Path, part_yaml: Path,
                                                  part_model_file: Path) -> None:
    """``--model M --image-score reweighted --k 3`` scores like a fresh fit with those flags
    (same memories: k is read only when scoring) and re-derives the threshold from the stored
    held-out scores; without the flags it is the model's own max score."""
    common = ["--data-root", str(part_data), "--category", CATEGORY]
    plain = evaluate_metrics(capsys, tmp_path / "plain", "--model", str(part_model_file), *common)
    rescored = evaluate_metrics(capsys, tmp_path / "rescored", "--model", str(part_model_file), *common,
                        "--image-score", "reweighted", "--k", "3")
    fresh = evaluate_metrics(capsys, tmp_path / "fresh", "--config", str(part_yaml), *common,
                     "--image-score", "reweighted", "--k", "3")
    assert rescored["settings"]["config"]["k"] == 3 and rescored["settings"]["config"]["image_score"] == "reweighted"
    assert rescored["threshold"] != plain["threshold"]
    # Two fits of one memory agree to float32 rounding, not bit for bit: the distances are one
    # batched matrix product (||q||^2 - 2 q.m + ||m||^2), whose BLAS kernel may round differently
    # with the buffers' alignment (seen on CI: 2.3e-5 relative). k=3 against k=4 moves it far more.
    assert rescored["threshold"] == pytest.approx(fresh["threshold"], rel=1e-4)
    for key in ("image_auroc", "false_alarm_rate", "miss_rate"):
        assert rescored[key] == pytest.approx(fresh[key], rel=1e-4)
    again = evaluate_metrics(capsys, tmp_path / "k4", "--model", str(part_model_file), *common,
                             "--image-score", "reweighted", "--k", "4")
    assert again["threshold"] != pytest.approx(rescored["threshold"], rel=1e-3)
    rate = evaluate_metrics(capsys, tmp_path / "rate", "--model", str(part_model_file), *common,
                            "--false-alarm-rate", "0.3")
    assert rate["threshold"] < plain["threshold"] and rate["target_false_alarm_rate"] == 0.3


@pytest.mark.parametrize(("flags", "named"), [
    (["--coreset-ratio", "0.2"], "--coreset-ratio"), (["--adaptive-multiplier", "3"], "--adaptive-multiplier"),
    (["--grid", "1"], "--grid"), (["--sampling", "fixed"], "--sampling"), (["--seed", "1"], "--seed"),
    (["--random-weights"], "--random-weights"), (["--calibration-folds", "3"], "--calibration-folds"),
    (["--k", "3"], "--k=3 acts only with image_score reweighted"),
    (["--image-score", "reweighted", "--k", "1"], "k=1 must be >= 2"),
])
def test_evaluate_model_refuses_fit_time_flags(capsys, tmp_path: Path, part_data: Path, part_model_file: Path,
                                               flags: list[str], named: str) -> None:
    code, _, err = run_main(capsys, "evaluate", "--model", str(part_model_file), "--data-root", str(part_data),
                            "--category", CATEGORY, *flags, "--output", str(tmp_path / "o"))
    assert code == 2 and named in one_line(err)
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_evaluate_model_refuses_a_config_with_other_fit_settings(capsys, tmp_path: Path, part_data: Path,
                                                                 part_model_file: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(TINY_YAML.replace("grid: 2", "grid: 1"))
    code, _, err = run_main(capsys, "evaluate", "--model", str(part_model_file), "--config", str(config), "--data-root",
                            str(part_data), "--category", CATEGORY, "--output", str(tmp_path / "o"))
    assert code == 2 and f"{config}: grid=1 is a fit-time setting" in one_line(err)
    config.write_text(TINY_YAML + "image_score: reweighted\nk: 3\n")  # same fit settings: scoring keys act
    metrics = evaluate_metrics(capsys, tmp_path / "ok", "--model", str(part_model_file), "--config", str(config),
                       "--data-root", str(part_data), "--category", CATEGORY)
    assert metrics["settings"]["config"]["k"] == 3


def test_validation_root_gives_f1_thresholds(capsys, tmp_path: Path, part_data: Path, part_yaml: Path) -> None:
    validation = write_tree(tmp_path / "val", n_train=0, n_good=3, n_bad=3, seed=300)
    metrics = evaluate_metrics(capsys, tmp_path / "e", "--config", str(part_yaml), "--data-root", str(part_data),
                       "--category", CATEGORY, "--validation-root", str(validation))
    assert metrics["threshold_method"] == "f1_validation"
    val = metrics["settings"]["calibration"]["summary"]["validation"]
    assert val["n_images"] == 6 and val["n_defective"] == 3 and 0 < val["image_f1"] <= 1
    model = FAPM.load(tmp_path / "e" / MODEL_FILE)
    assert model.calibration.method == "f1_validation" and model.calibration.image_threshold == metrics["threshold"]


# ---- plain folders ----------------------------------------------------------------------------
def test_evaluate_flat_folders_with_masks_and_a_report(capsys, flat_folders: Path, flat_model_file: Path,
                                                       tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "evaluate", "--model", str(flat_model_file), "--good", str(flat_folders / "ok"),
                            "--defect",
                            str(flat_folders / "ng"), "--masks", str(flat_folders / "gt"), "--report", "--output",
                            str(tmp_path), "--no-progress")
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test"] == 6 and metrics["pixel_auroc"] is not None and metrics["image_auroc"] > 0.5
    assert metrics["settings"]["good"] == str(flat_folders / "ok")
    assert metrics["settings"]["masks"] == str(flat_folders / "gt")
    page = (tmp_path / "report.html").read_text()
    assert page.count('<figure class="thumb">') == 6 and page.count("truth <b") == 6
    assert "<h2>Metrics</h2>" in page and page.count('class="explain"') == 6  # every test image picked


def test_evaluate_a_gray_set_writes_its_heatmaps_and_report(capsys, tmp_path: Path) -> None:
    """A one-channel set stays one channel to the model; its heatmaps and report show the gray
    image (a gray image once failed there, after every image was scored)."""
    from PIL import Image

    root = write_tree(tmp_path / "data", n_train=6, n_good=2, n_bad=2)
    for png in (root / CATEGORY).rglob("*.png"):
        if "ground_truth" not in png.parts:
            Image.open(png).convert("L").save(png)
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    out = tmp_path / "out"
    metrics = evaluate_metrics(capsys, out, "--config", str(tmp_path / "tiny.yaml"), "--data-root", str(root),
                               "--category", CATEGORY, "--report")
    assert metrics["n_test"] == 4
    heatmaps = sorted((out / "heatmaps").rglob("*.png"))
    assert len(heatmaps) == 4 and Image.open(heatmaps[0]).mode == "RGB"
    assert (out / "report.html").read_text().count('<figure class="thumb">') == 4


def test_a_large_test_set_states_its_pixel_metrics_downscale(capsys, monkeypatch, tmp_path: Path, part_data: Path,
                                                             part_yaml: Path) -> None:
    """Maps of more pixels than the pixel metrics read are scored reduced, and metrics.json and
    stderr say by how much; a small set keeps its own geometry (downscale 1)."""
    from fapm_lib.decisions import metrics as metric_rules

    common = ["--config", str(part_yaml), "--category", CATEGORY, "--data-root", str(part_data), "--no-progress"]
    code, _, err = run_main(capsys, "evaluate", *common, "--output", str(tmp_path / "whole"))
    assert code == 0 and "reduced" not in err
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert whole["settings"]["pixel_metrics_downscale"] == 1
    monkeypatch.setattr(metric_rules, "PIXEL_METRICS_MAX_PIXELS", whole["n_test"] * SIZE * SIZE // 4)
    code, _, err = run_main(capsys, "evaluate", "--model", whole["settings"]["model_file"], *common,
                            "--output", str(tmp_path / "reduced"))
    reduced = json.loads((tmp_path / "reduced" / "metrics.json").read_text())
    assert code == 0 and "pixel metrics on maps and masks reduced 2x" in err
    assert reduced["settings"]["pixel_metrics_downscale"] == 2
    assert reduced["image_auroc"] == whole["image_auroc"] and reduced["pixel_auroc"] != whole["pixel_auroc"]
