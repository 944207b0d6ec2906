"""FAPMConfig: the paper's defaults, range checks, strict YAML loading, shipped MVTec configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fapm_lib.config import FAPMConfig, load_yaml_config
from fapm_lib.errors import ConfigError
from tests.helpers import REPO

CONFIG_DIR = REPO / "configs" / "mvtec"


def test_defaults_follow_the_paper() -> None:
    c = FAPMConfig()
    assert (c.grid, c.coreset_ratio, c.adaptive_multiplier, c.k) == (7, 0.1, 2.0, 4)
    assert (c.blur_sigma, c.pool_size, c.resize, c.crop_size) == (4.0, 3, 256, 224)
    assert c.sampling == "adaptive" and c.input_size == 224


@pytest.mark.parametrize("key, value", [
    ("coreset_ratio", 0.0), ("coreset_ratio", 1.5), ("k", 0), ("grid", 0), ("sampling", "x"),
    ("adaptive_multiplier", 0.5), ("pool_size", 2), ("image_score", "mean"), ("blur_sigma", -1.0),
    ("crop_size", 300), ("coreset_projection", 0),
])
def test_out_of_range_names_the_parameter(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        FAPMConfig(**{key: value})
    with pytest.raises(ConfigError, match=key):
        FAPMConfig().replace(**{key: value})


def test_input_size_without_crop() -> None:
    assert FAPMConfig(resize=96, crop_size=None).input_size == 96


def test_json_round_trip() -> None:
    c = FAPMConfig(grid=2, coreset_ratio=0.25, crop_size=None, coreset_projection=64)
    assert FAPMConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_values_and_run_keys(tmp_path: Path) -> None:
    values, run = load_yaml_config(write(tmp_path, "grid: 2\ncoreset_ratio: 1\ncategory: bottle\ndata_root: /d\n"))
    assert values == {"grid": 2, "coreset_ratio": 1} and run == {"category": "bottle", "data_root": "/d"}
    config = FAPMConfig.from_dict(values)
    assert config.coreset_ratio == 1.0 and isinstance(config.coreset_ratio, float)


def test_yaml_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "grid: 7\ncoreset_rato: 0.1\n")
    with pytest.raises(ConfigError, match="coreset_rato") as info:
        load_yaml_config(path)
    assert str(path) in str(info.value)


def test_yaml_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'k'"):
        load_yaml_config(write(tmp_path, "k: four\n"))
    with pytest.raises(ConfigError, match="'category'"):
        load_yaml_config(write(tmp_path, "category: 3\n"))


def test_yaml_out_of_range_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "coreset_ratio: 1.5\n")
    with pytest.raises(ConfigError, match="coreset_ratio") as info:
        load_yaml_config(path)
    assert str(path) in str(info.value)


def test_int_accepted_for_float_bool_refused_for_int() -> None:
    assert FAPMConfig.from_dict({"blur_sigma": 2}).blur_sigma == 2.0
    with pytest.raises(ConfigError, match="'grid'"):
        FAPMConfig.from_dict({"grid": True})
    with pytest.raises(ConfigError, match="'k'"):
        FAPMConfig.from_dict({"k": 2.0})
    with pytest.raises(ConfigError, match="'blur_sigma'"):
        FAPMConfig.from_dict({"blur_sigma": False})
    assert FAPMConfig.from_dict({"crop_size": None}).crop_size is None


def test_yaml_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_yaml_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="YAML"):
        load_yaml_config(write(tmp_path, "grid: [1\n"))
    assert load_yaml_config(write(tmp_path, "")) == ({}, {})


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


@pytest.mark.skipif(not shipped_configs(), reason="configs/mvtec has no YAML files yet")
@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.stem)
def test_shipped_mvtec_configs(path: Path) -> None:
    values, run = load_yaml_config(path)
    assert values.get("backbone") == "wide_resnet50_2"
    assert run.get("category") == path.stem
    FAPMConfig.from_dict(values, source=str(path))


# ---- settings of the bounded fit and of the greedy within cells ----------------------------------
def test_store_dir_needs_max_memory() -> None:
    with pytest.raises(ConfigError, match="store_dir='/tmp' is used only with max_memory"):
        FAPMConfig(store_dir="/tmp")
    FAPMConfig.from_dict({"max_memory": "2GB", "store_dir": "/tmp", "calibration_folds": 0})


def test_meaningless_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="coreset_cell_size=10 acts only with coreset_method cells or auto"):
        FAPMConfig(coreset_method="exact", coreset_cell_size=10)
    with pytest.raises(ConfigError, match="coreset_method='fast' must be one of auto, exact, cells"):
        FAPMConfig(coreset_method="fast")
    with pytest.raises(ConfigError, match="coreset_cell_size=0 must be >= 1"):
        FAPMConfig(coreset_cell_size=0)
    with pytest.raises(ConfigError, match="calibration_images=1 must be >= 2"):
        FAPMConfig(calibration_images=1)
