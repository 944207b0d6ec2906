"""``fapm benchmark`` on a tiny generated dataset: report structure, ratios, labels (no timing thresholds)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fapm_lib.cli.main import main
from fapm_lib.config import FAPMConfig
from fapm_lib.errors import ConfigError
from fapm_lib.workflows.benchmark import METHOD_KEYS, RATIO_KEYS, benchmark_category, device_name
from tests.helpers import build_mvtec_tree

TINY_CONFIG = "resize: 64\ncrop_size: 64\ngrid: 2\ncoreset_ratio: 0.5\nbatch_size: 4\n"
TIME_KEYS = ("coreset_seconds", "fit_seconds", "backbone_ms", "search_ms", "post_ms", "total_ms")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root with category 'widget', YAML config for 64x64 inputs and a 2x2 grid)."""
    base = tmp_path_factory.mktemp("bench")
    root = build_mvtec_tree(base / "data", n_train=3, test_counts={"good": 2, "crack": 2})
    config = base / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    return root, config


def _run(tiny: tuple[Path, Path], output: Path, *extra: str) -> int:
    root, config = tiny
    return main(["benchmark", "--data-root", str(root), "--category", "widget", "--config", str(config),
                 "--repeats", "2", "--output", str(output), "--no-progress", *extra])


@pytest.fixture(scope="module")
def random_run(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("random")
    assert _run(tiny, output, "--random-weights") == 0
    return output


@pytest.fixture(scope="module")
def pretrained_run(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pretrained")
    assert _run(tiny, output) == 0
    return output


def _report(output: Path) -> dict:
    return json.loads((output / "benchmark.json").read_text())


def test_json_has_exactly_the_required_structure(random_run: Path) -> None:
    report = _report(random_run)
    assert set(report) == {"fapm", "patchcore", "ratios", "details", "environment"}
    for method in ("fapm", "patchcore"):
        assert list(report[method]) == list(METHOD_KEYS)
    assert set(report["ratios"]) == {"search", "coreset", "total"}


def test_ratios_are_patchcore_over_fapm(random_run: Path) -> None:
    report = _report(random_run)
    for key, field in RATIO_KEYS.items():
        assert report["ratios"][key] == pytest.approx(report["patchcore"][field] / report["fapm"][field], rel=1e-5)


def test_times_positive_and_fit_is_features_plus_coreset(random_run: Path) -> None:
    report = _report(random_run)
    features = report["details"]["feature_seconds"]
    assert features > 0
    for method in ("fapm", "patchcore"):
        values = report[method]
        assert all(values[k] > 0 for k in TIME_KEYS), values
        assert values["fit_seconds"] == pytest.approx(features + values["coreset_seconds"], rel=1e-4)
        assert values["memory_mb"] > 0
        assert report["details"][f"{method}_throughput_images_per_s"] > 0
        assert set(report["details"][f"{method}_cpu_ms"]) == {"backbone", "search", "post", "total"}
        assert all(v >= 0 for v in report["details"][f"{method}_cpu_ms"].values())
        assert 0.0 <= values["pixel_auroc"] <= 1.0 and 0.0 <= values["image_auroc"] <= 1.0
    assert set(report["details"]["cpu_seconds"]) == {"features", "fapm", "patchcore"}


def test_memory_and_counts_match_the_data(random_run: Path) -> None:
    details, env = _report(random_run)["details"], _report(random_run)["environment"]
    assert (details["n_train"], details["n_test"], details["repeats"]) == (3, 4, 2)
    # PatchCore keeps ceil(0.5 * 3 images * 8*8 positions) vectors of 64x64 inputs (stride 8).
    assert details["patchcore_memory_vectors"] == 96
    assert env["input_size"] == 64 and env["random_weights"] is True
    assert env["torch_threads"] == torch.get_num_threads()


def test_markdown_names_device_backbone_and_random_weights(random_run: Path) -> None:
    text = (random_run / "benchmark.md").read_text()
    env = _report(random_run)["environment"]
    assert env["device"] == device_name(torch.device("cpu")) and env["device"] in text
    assert "tf_efficientnet_lite0" in text
    assert "random weights: timing only" in text


def test_pretrained_run_is_not_labelled_timing_only(pretrained_run: Path) -> None:
    text = (pretrained_run / "benchmark.md").read_text()
    assert _report(pretrained_run)["environment"]["random_weights"] is False
    assert "timing only" not in text and "ImageNet weights" in text


def test_bad_repeats_is_a_config_error(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tiny
    with pytest.raises(ConfigError, match="repeats"):
        benchmark_category(FAPMConfig(), root, "widget", tmp_path, repeats=0)
    assert not (tmp_path / "benchmark.json").exists()
