"""Bounded-memory fit (``max_memory``): the disk store, the chunked coreset (bit-identical to the
in-RAM fit), the refusal of a budget too small, and the peak RSS of a real process."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from fapm_lib import FAPM, FAPMConfig
from fapm_lib.cli import main as cli
from fapm_lib.data.synthetic import generate_category
from fapm_lib.errors import ConfigError, DataError
from fapm_lib.method.backbone import BackboneInfo
from fapm_lib.method.memory import LayerMemory
from fapm_lib.method.memory_builders import build_layer_memory
from fapm_lib.method.regions import split_regions
from fapm_lib.scale.region_source import TensorRegions
from fapm_lib.scale.pipeline import fit_layers
from fapm_lib.scale.store import FeatureStore, image_runs
from fapm_lib.system.budget import parse_size
from tests.helpers import REPO

ROOT = REPO


class Stub:
    """Stands in for a backbone with 24 / 40 channels (only its info is read)."""

    info = BackboneInfo("stub", (24, 40), (8, 16), (0.5,) * 3, (0.5,) * 3, False)


def map_batches(n: int, batch: int = 6):
    """Seeded maps ``[[B, 24, 28, 28], [B, 40, 14, 14]]``, regions with different spreads (so some are far)."""
    scale = torch.linspace(0.2, 3.0, 49).view(7, 7).repeat_interleave(4, 0).repeat_interleave(4, 1)
    for start in range(0, n, batch):
        gen = torch.Generator().manual_seed(start)
        b = min(batch, n - start)
        yield [torch.randn(b, 24, 28, 28, generator=gen) * scale,
               torch.randn(b, 40, 14, 14, generator=gen) * scale[::2, ::2]]


def assert_same_memory(a: list[LayerMemory], b: list[LayerMemory]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.radii, y.radii) and torch.equal(x.far, y.far)
        assert len(x.groups) == len(y.groups)
        for g, h in zip(x.groups, y.groups):
            assert torch.equal(g.regions, h.regions)
            assert torch.equal(g.bank, h.bank) and torch.equal(g.bank_t, h.bank_t) and torch.equal(g.sources, h.sources)
            assert torch.equal(g.sq_norms, h.sq_norms)


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


@pytest.mark.parametrize("known_count", [True, False])
def test_store_reads_back_split_regions(tmp_path: Path, known_count: bool) -> None:
    maps = [torch.randn(5, 8, 14, 14), torch.randn(3, 8, 14, 14)]
    with FeatureStore(tmp_path) as store:
        writer = store.writer(0, 7, 8 if known_count else None)
        for m in maps:
            writer.add(m)
        layer = writer.finish()
        assert (layer.n_regions, layer.n_rows, layer.dim) == (49, 8 * 4, 8)
        whole = split_regions(torch.cat(maps), 7)
        assert torch.equal(layer.read(range(49)), whole)
        assert torch.equal(layer.read([3, 4, 10]), whole[[3, 4, 10]])
        images = torch.tensor([1, 2, 6])
        rows = (images[:, None] * 4 + torch.arange(4)).flatten()
        assert torch.equal(layer.read(range(2, 9), images), whole[2:9, rows])
        buffer = torch.empty(2 * 32 * 8 + 5)
        assert torch.equal(layer.read([0, 1], out=buffer), whole[:2])
        assert sorted(p.name for p in store.root.iterdir()) == ["layer0.f32"]  # the spool is gone
    assert list(tmp_path.iterdir()) == []  # the store's folder is removed


def test_image_runs() -> None:
    assert image_runs(torch.tensor([0, 1, 2, 5, 7, 8])) == [(0, 3), (5, 6), (7, 9)]
    with pytest.raises(ValueError, match="ascending"):
        image_runs(torch.tensor([3, 1]))


@pytest.mark.parametrize("known_count", [True, False])
def test_bounded_fit_is_bit_identical_to_in_ram(tmp_path: Path, known_count: bool) -> None:
    config = FAPMConfig(coreset_ratio=0.05)
    ref = FAPM(config, extractor=Stub()).fit_map_batches(map_batches(20), 20)
    assert any(m.far.any() for m in ref.memories)
    bounded = FAPM(config.replace(max_memory="64GB", store_dir=str(tmp_path), calibration_folds=0), extractor=Stub())
    bounded.fit_map_batches(map_batches(20), 20 if known_count else None)
    assert_same_memory(ref.memories, bounded.memories)
    assert list(tmp_path.iterdir()) == []


def test_bounded_fit_cleans_up_its_store_on_errors(tmp_path: Path) -> None:
    def failing():
        yield from map_batches(6)
        raise DataError("unreadable image")

    model = FAPM(FAPMConfig(max_memory="64GB", store_dir=str(tmp_path), calibration_folds=0), extractor=Stub())
    with pytest.raises(DataError, match="unreadable"):
        model.fit_map_batches(failing(), 12)
    with pytest.raises(DataError, match="no training images"):
        model.fit_map_batches(iter([]), None)
    assert list(tmp_path.iterdir()) == [] and not model.is_fitted


def test_too_small_budget_is_refused_with_the_minimum() -> None:
    model = FAPM(FAPMConfig(max_memory="50MB", calibration_folds=0), extractor=Stub())
    with pytest.raises(ConfigError) as info:
        model.fit_map_batches(map_batches(12), 12)
    message = str(info.value)
    assert message.startswith("max_memory=50MB is too small for this fit") and "\n" not in message
    need = int(message.split("needs at least ")[1].split(" MB")[0])
    parts = [int(x) for x in re.findall(r" (\d+) MB", message.split("needs at least ")[1])]
    assert need > 50 and len(parts) == 4 and abs(sum(parts) - need) <= len(parts)  # the parts add up (rounding)
    # the stated minimum is enough (give or take what the process itself grows in between)
    fitted = FAPM(FAPMConfig(max_memory=f"{need + 50}MB", calibration_folds=0), extractor=Stub()).fit_map_batches(map_batches(12), 12)
    assert fitted.is_fitted


def test_parse_size() -> None:
    assert parse_size("4GB") == 4 * 10**9 and parse_size("512MB") == 512 * 10**6
    assert parse_size("1.5GiB") == 3 * 2**29 and parse_size(1000) == 1000 and parse_size("2 gb") == 2 * 10**9
    for bad in ("4XB", "-1GB", "GB", "0MB", True):
        with pytest.raises(ConfigError, match="max_memory"):
            parse_size(bad)


def test_store_dir_needs_max_memory() -> None:
    with pytest.raises(ConfigError, match="store_dir='/tmp' is used only with max_memory"):
        FAPMConfig(store_dir="/tmp")
    FAPMConfig.from_dict({"max_memory": "2GB", "store_dir": "/tmp", "calibration_folds": 0})


def test_cli_fit_with_max_memory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    generate_category(data, "vial", size=96, n_train=6, n_test_good=1, n_per_defect=1)
    common = ["--data-root", str(data), "--category", "vial", "--no-progress", "--batch-size", "4",
              "--coreset-ratio", "0.2", "--calibration-folds", "0"]
    assert cli.main(["fit", *common, "--output", str(tmp_path / "a")]) == 0
    store = tmp_path / "store"
    store.mkdir()
    assert cli.main(["fit", *common, "--max-memory", "64GB", "--store-dir", str(store), "--output", str(tmp_path / "b")]) == 0
    assert list(store.iterdir()) == []
    a, b = FAPM.load(tmp_path / "a" / "model.safetensors"), FAPM.load(tmp_path / "b" / "model.safetensors")
    assert_same_memory(a.memories, b.memories)
    capsys.readouterr()
    assert cli.main(["fit", *common, "--max-memory", "20MB", "--output", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_memory=20MB is too small for this fit" in err[0] and "needs at least" in err[0]
    assert not (tmp_path / "c" / "model.safetensors").exists()
    assert cli.main(["fit", *common, "--max-memory", "lots", "--output", str(tmp_path / "c")]) == 2
    assert "max_memory='lots'" in capsys.readouterr().err


def test_patchcore_refuses_max_memory_and_the_cells_coreset() -> None:
    from fapm_lib.detectors.patchcore import PatchCore

    maps = [torch.randn(2, 24, 28, 28), torch.randn(2, 40, 14, 14)]
    for settings in ({"max_memory": "4GB"}, {"coreset_method": "cells"}, {"coreset_cell_size": 4}):
        with pytest.raises(ConfigError, match="FAPM only"):
            PatchCore(FAPMConfig(**settings), extractor=Stub()).fit_maps(maps)


def measure(*args: str) -> dict:
    cmd = [sys.executable, str(ROOT / "tools" / "measure_fit_rss.py"), "--synthetic-features", "--no-progress", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_stays_under_the_budget(tmp_path: Path) -> None:
    """Real processes, 300 WRN-shaped images (722 MB of features): in RAM, then with a budget of
    the process's own size plus 450 MB, which the in-RAM fit exceeds: same memory, peak under it."""
    common = ("--n-images", "300", "--coreset-ratio", "0.01")
    in_ram = measure(*common)
    budget_mb = int(in_ram["rss_before_fit_mb"] + 450)
    assert in_ram["peak_rss_mb"] > budget_mb  # the budget binds
    bounded = measure(*common, "--max-memory", f"{budget_mb}MB", "--store-dir", str(tmp_path))
    assert bounded["peak_rss_mb"] < budget_mb
    assert bounded["memory_sha256"] == in_ram["memory_sha256"]
    assert bounded["regions_per_chunk"]["coreset"]["0"] < 49 and list(tmp_path.iterdir()) == []
