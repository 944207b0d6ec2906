"""The bounded fit in region jobs (``fit --max-memory``, ``--scheduler``): the chunked coreset is
bit-identical to the in-RAM one, the k-fold calibration within the budget gives the in-RAM thresholds,
the jobs give the same memory on Dask (a killed worker's job retried), and settings that cannot act are
refused with one line."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import Tensor

import fapm_lib.detectors.fapm as detector
import fapm_lib.scale.pipeline as pipeline
from fapm_lib import FAPM, FAPMConfig
from fapm_lib.cli import main as cli
from fapm_lib.errors import ConfigError
from fapm_lib.method.memory import LayerMemory
from fapm_lib.method.memory_builders import build_layer_memory
from fapm_lib.scale.pipeline import fit_layers
from fapm_lib.scale.region_source import TensorRegions
from fapm_lib.system.jobs import KILL_ONCE_ENV
from tests.scale_support import Stub, assert_same_memory, map_batches

SETTINGS = {"exact": {"coreset_method": "exact"}, "cells": {"coreset_method": "cells", "coreset_cell_size": 8},
            "sampled": {"coreset_method": "exact", "calibration_images": 9}}


def fit(config: FAPMConfig, n: int = 23, scheduler: str | None = None) -> FAPM:
    return FAPM(config, extractor=Stub()).fit_map_batches(map_batches(n), n, scheduler=scheduler)


def assert_same_calibration(a, b) -> None:
    """Thresholds, the pixel table, the held-out neighbours: equal; spreads: equal up to rounding
    (the bounded fit sums its pixels chunk by chunk)."""
    assert a.image_threshold == b.image_threshold and a.pixel_threshold == b.pixel_threshold
    assert a.image_scale == b.image_scale and a.pixel_scale == pytest.approx(b.pixel_scale, rel=1e-12)
    assert a.summary["pixel"]["table"] == b.summary["pixel"]["table"]
    assert a.summary["neighbours"] == b.summary["neighbours"] and a.summary["image"] == b.summary["image"]
    for key in ("n", "min", "max", "quantiles"):
        assert a.summary["pixel"][key] == b.summary["pixel"][key]


def chunked_build(x: Tensor, per_image: int, per_job: int, **settings) -> LayerMemory:
    """One layer's memory from ``x [R, N, C]`` through the bounded pipeline, ``per_job`` regions a job."""
    config = FAPMConfig(max_memory="64GB", calibration_folds=0, coreset_method="exact", **settings)
    return fit_layers([TensorRegions(x, per_image)], [per_image], config, regions_per_job=per_job).memories[0]


@pytest.mark.parametrize("projection", [None, 8])
@pytest.mark.parametrize("sampling", ["adaptive", "fixed"])
def test_chunked_build_is_bit_identical(projection: int | None, sampling: str) -> None:
    x = torch.randn(49, 300, 32) * torch.linspace(0.1, 2.0, 49)[:, None, None]
    ref = build_layer_memory(x, 0.1, 2.0, sampling, projection)
    if sampling == "adaptive":
        assert ref.far.any() and not ref.far.all()  # both passes of the chunked build run
    for per_job in (1, 6, 49):
        got = chunked_build(x, 12, per_job, sampling=sampling, coreset_projection=projection)
        assert_same_memory([ref], [got])


@pytest.mark.parametrize("setting", ["exact", "cells", "sampled"])
def test_bounded_calibration_equals_the_in_ram_one(tmp_path: Path, setting: str) -> None:
    """Also when the calibration scores a sample of the images (``sampled``: 9 of 23)."""
    config = FAPMConfig(coreset_ratio=0.1, **SETTINGS[setting])
    in_ram = fit(config)
    bounded = fit(config.replace(max_memory="64GB", store_dir=str(tmp_path)))
    assert bounded.fit_stats["coreset_method"] == in_ram.fit_stats["coreset_method"] == config.coreset_method
    assert in_ram.calibration.summary["n_images"] == (9 if setting == "sampled" else 23)
    assert_same_memory(in_ram.memories, bounded.memories)
    assert_same_calibration(in_ram.calibration, bounded.calibration)
    assert list(tmp_path.iterdir()) == []  # store, banks, distances and maps removed


def test_one_region_per_job_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    config = FAPMConfig(coreset_ratio=0.1, max_memory="64GB", **SETTINGS["cells"])
    ref = fit(config)
    monkeypatch.setattr(detector, "fit_layers", functools.partial(pipeline.fit_layers, regions_per_job=1))
    small = fit(config)
    assert small.fit_stats["regions_per_chunk"]["coreset"] == {0: 1, 1: 1}
    assert_same_memory(ref.memories, small.memories)
    assert_same_calibration(ref.calibration, small.calibration)


def test_region_jobs_on_dask_give_the_same_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """``scheduler="local:2"``: the region jobs run in two worker processes reading the store; one
    worker is killed in its first region pass job, which is retried: the same memory (every
    tensor) and thresholds as in-process."""
    pytest.importorskip("distributed")
    config = FAPMConfig(coreset_ratio=0.1, max_memory="64GB", store_dir=str(tmp_path), **SETTINGS["cells"])
    here = fit(config)
    marker = tmp_path.parent / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, f"pass-l0-r0={marker}")
    capsys.readouterr()
    there = fit(config, scheduler="local:2")
    assert marker.exists() and "pass-l0-r0: failed: its worker died" in capsys.readouterr().err
    assert there.fit_stats["regions_per_chunk"]["coreset"] == {0: 25, 1: 25}  # one job per worker at least
    assert_same_memory(here.memories, there.memories)
    assert_same_calibration(here.calibration, there.calibration)
    assert list(tmp_path.iterdir()) == []


def test_a_scheduler_needs_the_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="--scheduler local:2 for one category needs --max-memory"):
        fit(FAPMConfig(), scheduler="local:2")
    with pytest.raises(ConfigError, match="give --store-dir, a folder every worker can read"):
        fit(FAPMConfig(max_memory="64GB"), scheduler="tcp://127.0.0.1:8786")
    data = tmp_path / "data"
    code = cli.main(["fit", "--data-root", str(data), "--category", "vial", "--scheduler", "local:2",
                     "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs --max-memory" in err[0]


def test_the_fold_memories_limit_k(tmp_path: Path) -> None:
    """k above the smallest fold memory: refused before the region pass, as in RAM."""
    config = FAPMConfig(coreset_ratio=0.01, image_score="reweighted", k=9, coreset_method="exact")
    with pytest.raises(ConfigError, match="exceeds the smallest") as in_ram:
        fit(config, n=6)
    with pytest.raises(ConfigError, match="exceeds the smallest") as bounded:
        fit(config.replace(max_memory="64GB", store_dir=str(tmp_path)), n=6)
    assert str(in_ram.value) == str(bounded.value)


@pytest.mark.parametrize("method", ["cells", "exact"])
def test_one_progress_bar_per_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """A bounded fit shows a bar per stage (coreset per layer, and per fold with the exact greedy;
    the region pass), each closed at its total: the estimate counts the work the jobs do."""
    closed: list[tuple[str, float, float]] = []

    class Recorded(pipeline.tqdm):
        def close(self) -> None:
            if not self.disable:
                closed.append((self.desc, self.total, self.n))
            super().close()

    monkeypatch.setattr(pipeline, "tqdm", Recorded)
    config = FAPMConfig(coreset_ratio=0.1, max_memory="64GB", store_dir=str(tmp_path), **SETTINGS[method])
    FAPM(config, extractor=Stub()).fit_map_batches(map_batches(12), 12, progress=True)
    names = [desc for desc, _, _ in closed]
    expected = ["coreset layer 0", "coreset layer 1", "calibration"]
    if method == "exact":
        expected += [f"calibration coreset layer {layer}, fold {f}" for layer in (0, 1) for f in range(5)]
    assert sorted(names) == sorted(expected)
    for desc, total, n in closed:
        assert total > 0 and n == pytest.approx(total), desc
