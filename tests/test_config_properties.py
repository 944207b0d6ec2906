"""Property-based tests of the config parser: valid settings round trip through
``FAPMConfig.from_dict`` and YAML files; unknown keys, wrong types and values out of range are
refused with a one-line ConfigError naming the key."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fapm_lib.config import IMAGE_SCORES, SAMPLING_MODES, FAPMConfig, load_yaml_config
from fapm_lib.errors import ConfigError

FIELDS = tuple(f.name for f in dataclasses.fields(FAPMConfig))
INT_FIELDS = ("pool_size", "k", "batch_size", "seed", "calibration_folds", "tile", "tile_overlap", "neighbour_regions")
FLOAT_FIELDS = ("coreset_ratio", "adaptive_multiplier", "blur_sigma", "false_alarm_rate", "scale")
OPTIONAL_INT_FIELDS = ("resize", "crop_size", "grid", "region_size", "coreset_projection", "coreset_cell_size",
                       "calibration_images")
STR_FIELDS = ("backbone", "sampling", "image_score", "coreset_method")
OPTIONAL_STR_FIELDS = ("store_dir",)
SIZE_FIELDS = ("max_memory",)  # "4GB" or a byte count
TORCH_SEEDS = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts
names = st.text(st.characters(categories=("L", "N", "P"), exclude_characters="\x85"), min_size=1, max_size=30)
finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def valid_settings(draw) -> dict[str, Any]:
    """A random subset of the fields with valid values: the paper's protocol (resize, crop_size
    consistent with it, grid) or native resolution (scale, region_size); tiles and neighbours."""
    resize = draw(st.none() | st.integers(32, 4096))
    tile = draw(st.integers(2, 64)) * 32
    protocol = {"resize": resize, "crop_size": draw(st.none() | st.integers(32, resize)),
                "grid": draw(st.integers(1, 64))} if resize else {}
    native = {} if resize else {"scale": draw(st.floats(0.0, 1.0, exclude_min=True, **finite) | st.just(1)),
                                "region_size": draw(st.none() | st.integers(1, 32).map(lambda n: 16 * n))}
    values = {
        "backbone": draw(names),
        "pretrained": draw(st.booleans()),
        **protocol,
        **native,
        "tile": tile,
        "tile_overlap": draw(st.integers(0, tile // 32)) * 16,
        "neighbour_regions": draw(st.integers(0, 2)),
        "pool_size": draw(st.integers(0, 15)) * 2 + 1,
        "sampling": draw(st.sampled_from(SAMPLING_MODES)),
        "coreset_ratio": draw(st.floats(0.0, 1.0, exclude_min=True) | st.just(1)),
        "adaptive_multiplier": draw(st.floats(1.0, 1e6, **finite) | st.integers(1, 100)),
        "coreset_projection": draw(st.none() | st.integers(1, 4096)),
        "k": draw(st.integers(2, 1000)),
        "image_score": draw(st.sampled_from(IMAGE_SCORES)),
        "blur_sigma": draw(st.floats(0.0, 1e3, **finite) | st.integers(0, 10)),
        "batch_size": draw(st.integers(1, 4096)),
        "seed": draw(st.integers(*TORCH_SEEDS)),
    }
    keep = draw(st.sets(st.sampled_from(FIELDS)))
    if keep & {"resize", "crop_size", "grid"}:
        keep |= {"resize", "crop_size"}  # either alone may clash with the other's default; grid needs resize
    if keep & {"tile", "tile_overlap"}:
        keep |= {"tile", "tile_overlap"}  # the overlap is bounded by the tile (a small tile, the default overlap)
    if "k" in keep:  # k acts only with the reweighted score (a YAML k with max is refused)
        keep = keep | {"image_score"} if values["image_score"] == "reweighted" else keep - {"k"}
    return {k: v for k, v in values.items() if k in keep}


def config_error(values: dict[str, Any], source: str = "test") -> str:
    """``from_dict`` expecting ConfigError; its message, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        FAPMConfig.from_dict(values, source=source)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{source}: ")
    return message


def names_key(message: str, key: str) -> bool:
    """True when the message names ``key`` as a whole word (``k`` is not found inside ``key``)."""
    return re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", message) is not None


def write_yaml(folder: str, data: Any, name: str = "c.yaml") -> Path:
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


# ---- round trips -------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(valid_settings())
def test_valid_settings_round_trip_through_from_dict(values: dict[str, Any]) -> None:
    config = FAPMConfig.from_dict(values)
    for key, value in values.items():
        stored = getattr(config, key)
        assert stored == value and type(stored) is (float if key in FLOAT_FIELDS else type(value))
    for key in set(FIELDS) - set(values):
        assert getattr(config, key) == getattr(FAPMConfig(), key)
    assert FAPMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # the model file's path


@settings(max_examples=40, deadline=None)
@given(valid_settings(), st.none() | names, st.none() | names)
def test_valid_settings_round_trip_through_yaml(values: dict[str, Any], category, data_root) -> None:
    run = {k: v for k, v in {"category": category, "data_root": data_root}.items() if v is not None}
    with tempfile.TemporaryDirectory() as folder:
        model_values, run_values = load_yaml_config(write_yaml(folder, {**values, **run}))
    assert model_values == values and run_values == run
    assert FAPMConfig.from_dict(model_values) == FAPMConfig.from_dict(values)


def test_empty_yaml_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_yaml_config(path) == ({}, {})


# ---- unknown keys ------------------------------------------------------------------------------
unknown_keys = names.filter(lambda key: key not in FIELDS)


@settings(max_examples=50, deadline=None)
@given(valid_settings(), unknown_keys, st.integers() | names | st.none())
def test_unknown_key_is_named(values: dict[str, Any], key: str, value: Any) -> None:
    message = config_error({**values, key: value})
    assert f"unknown key {key!r}" in message


@settings(max_examples=30, deadline=None)
@given(unknown_keys.filter(lambda key: key not in ("category", "data_root")))
def test_unknown_yaml_key_is_named_with_the_file(key: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_yaml(folder, {"region_size": 64, key: 1})
        with pytest.raises(ConfigError) as info:
            load_yaml_config(path)
    assert str(info.value).startswith(f"{path}: unknown key {key!r}")


# ---- wrong types -------------------------------------------------------------------------------
def wrong_values(key: str) -> st.SearchStrategy:
    """Values of the wrong type for ``key``: strings for numbers, floats and bools for ints, lists, dicts."""
    containers = st.lists(st.integers(), max_size=3) | st.dictionaries(names, st.integers(), max_size=2)
    if key in INT_FIELDS or key in OPTIONAL_INT_FIELDS:
        return containers | st.booleans() | st.floats() | st.integers().map(str)
    if key in FLOAT_FIELDS:
        return containers | st.booleans() | st.floats(**finite).map(str)
    if key in STR_FIELDS:
        return containers | st.booleans() | st.integers() | st.floats() | st.none()
    if key in OPTIONAL_STR_FIELDS:
        return containers | st.booleans() | st.integers() | st.floats()
    if key in SIZE_FIELDS:
        return containers | st.booleans() | st.floats()
    return containers | st.integers() | st.sampled_from(["yes", "true", "1"]) | st.none()  # pretrained


@given(st.sampled_from(FIELDS).flatmap(lambda key: st.tuples(st.just(key), wrong_values(key))))
def test_wrong_type_is_named(case: tuple[str, Any]) -> None:
    key, value = case
    message = config_error({key: value})
    assert f"key '{key}' expects" in message and f"got {type(value).__name__}" in message


@pytest.mark.parametrize(("text", "key"), [("grid: 2.0", "grid"), ("k: true", "k"),
                                           ("coreset_ratio: '0.1'", "coreset_ratio"), ("crop_size: [224]", "crop_size"),
                                           ("pretrained: 1", "pretrained"),
                                           ("sampling: 3", "sampling"), ("blur_sigma: {a: 1}", "blur_sigma")])
def test_wrong_yaml_type_is_named_with_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_config(path)
    assert str(info.value).startswith(f"{path}: key '{key}' expects")


# ---- out of range ------------------------------------------------------------------------------
OUT_OF_RANGE: dict[str, st.SearchStrategy] = {
    "coreset_ratio": st.floats(max_value=0.0, **finite) | st.floats(min_value=1.0, exclude_min=True, **finite),
    "adaptive_multiplier": st.floats(max_value=1.0, exclude_max=True, **finite),
    "k": st.integers(max_value=0),
    "grid": st.integers(max_value=0),
    "pool_size": st.integers(max_value=0) | st.integers(0, 50).map(lambda n: 2 * n),
    "resize": st.integers(max_value=31),
    "crop_size": st.integers(max_value=31) | st.integers(257, 10**6),  # default resize 256
    "blur_sigma": st.floats(max_value=0.0, exclude_max=True, **finite),
    "batch_size": st.integers(max_value=0),
    "coreset_projection": st.integers(max_value=0),
    "sampling": names.filter(lambda s: s not in SAMPLING_MODES),
    "image_score": names.filter(lambda s: s not in IMAGE_SCORES),
}


@given(st.sampled_from(sorted(OUT_OF_RANGE)).flatmap(lambda key: st.tuples(st.just(key), OUT_OF_RANGE[key])))
def test_out_of_range_is_named(case: tuple[str, Any]) -> None:
    key, value = case
    message = config_error({key: value})
    assert names_key(message, key) and f"{key}={value!r}" in message


@settings(max_examples=50, deadline=None)
@given(valid_settings(), st.sampled_from(sorted(OUT_OF_RANGE)), st.data())
def test_out_of_range_is_named_among_valid_settings(values: dict[str, Any], key: str, data) -> None:
    value = data.draw(OUT_OF_RANGE[key])
    if key == "crop_size":  # it needs resize, and resize takes the native-only settings out
        values = {**{k: v for k, v in values.items() if k not in ("scale", "region_size")}, "resize": 256}
    message = config_error({**values, key: value})
    assert f"{key}={value!r}" in message


@pytest.mark.parametrize("key", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_non_finite_floats_are_refused(key: str, value: float) -> None:
    """``.inf`` / ``.nan`` are valid YAML floats; no setting means anything with them (an infinite
    multiplier or blur crashes the fit or the blur with OverflowError)."""
    assert names_key(config_error({key: value}), key)


@pytest.mark.parametrize("seed", [TORCH_SEEDS[0] - 1, TORCH_SEEDS[1] + 1, 10**30])
def test_seed_outside_torchs_range_is_refused(seed: int) -> None:
    """torch.manual_seed raises ValueError outside [-2**63, 2**64): refuse such seeds up front."""
    assert names_key(config_error({"seed": seed}), "seed")


@pytest.mark.parametrize("key, value", [("region_size", 16), ("grid", 5)])
def test_an_out_of_range_resize_is_named_before_the_settings_it_conflicts_with(key: str, value: int) -> None:
    """Found by the property test above: resize=0 with region_size=16 was refused for region_size."""
    message = config_error({"resize": 0, key: value})
    assert "resize=0" in message
