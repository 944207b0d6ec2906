"""End to end on real MVTec AD bottle: `fapm evaluate` with default settings, then `fapm predict`.

Acceptance thresholds (image AUROC >= 0.99, pixel AUROC >= 0.97) come from the issue: the
method's expected level on bottle, not tuned on this run.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fapm_lib.cli.main import main
from fapm_lib.data.mvtec import default_shared_root

pytestmark = pytest.mark.slow

SHARED = default_shared_root()
METRIC_KEYS = {"image_auroc", "pixel_auroc", "pixel_f1_max", "pixel_aupro", "n_train", "n_test", "backbone",
               "fit_seconds", "ms_per_image", "backbone_ms_per_image", "search_ms_per_image", "post_ms_per_image",
               "threshold", "threshold_method", "target_false_alarm_rate", "false_alarm_rate", "miss_rate",
               "pixel_threshold", "pixel_false_alarm_rate", "pixel_miss_rate", "settings"}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if SHARED is None or not (SHARED / "bottle").is_dir():
        pytest.skip("shared MVTec AD bottle data is not available")
    out = tmp_path_factory.mktemp("bottle")
    code = main(["evaluate", "--data-root", str(SHARED), "--category", "bottle",
                 "--backbone", "tf_efficientnet_lite0", "--output", str(out), "--no-progress"])
    assert code == 0
    return out


def test_evaluate_bottle(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS
    assert metrics["n_train"] == 209 and metrics["n_test"] == 83
    assert metrics["backbone"] == "tf_efficientnet_lite0"
    assert metrics["image_auroc"] >= 0.99
    assert metrics["threshold_method"] == "false_alarm_rate" and 0 <= metrics["false_alarm_rate"] <= 1
    assert metrics["pixel_auroc"] >= 0.97
    assert 0 < metrics["pixel_f1_max"] <= 1 and 0 < metrics["pixel_aupro"] <= 1
    assert metrics["fit_seconds"] > 0 and metrics["ms_per_image"] > 0
    stages = [metrics[f"{stage}_ms_per_image"] for stage in ("backbone", "search", "post")]
    assert all(ms > 0 for ms in stages) and sum(stages) == pytest.approx(metrics["ms_per_image"])
    assert any((evaluated / "heatmaps").iterdir())
    assert (evaluated / "model.safetensors").is_file()


def test_predict_with_the_saved_model(evaluated: Path, tmp_path: Path) -> None:
    assert SHARED is not None
    test_dir = SHARED / "bottle" / "test"
    good = sorted((test_dir / "good").glob("*.png"))[:3]
    bad = sorted((test_dir / "broken_large").glob("*.png"))[:3]
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(evaluated / "model.safetensors"), *map(str, good + bad),
                 "--output", str(out), "--no-progress"]) == 0
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [str(p) for p in good + bad]
    for row in rows:
        assert (out / row["overlay"]).is_file()
    scores = [float(r["score"]) for r in rows]
    assert sum(scores[3:]) / 3 > sum(scores[:3]) / 3
