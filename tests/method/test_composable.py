"""The chunked (composable) coreset: chunks never mix calibration folds, the union memory keeps
the right rows, every vector lies within the stated radius, fold memories leave their fold out,
and ``auto`` keeps the exact greedy where it is cheap."""
from __future__ import annotations

import pytest
import torch

from fapm_lib import FAPMConfig
from fapm_lib.errors import ConfigError
from fapm_lib.method import composable
from fapm_lib.method.composable import (AUTO_EXACT_MAX_BYTES, exact_greedy_bytes, image_chunks, resolve_method,
                                        run_chunks)
from fapm_lib.method.coreset import GreedyKCenter
from fapm_lib.method.memory import build_memories, memory_from_selection
from fapm_lib.method.regions import image_rows


def spread_regions(r: int = 5, n_images: int = 23, per_image: int = 4, c: int = 6, seed: int = 0) -> torch.Tensor:
    """``[R, N * per_image, C]`` with a different spread per region (so some regions are far)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(r, n_images * per_image, c, generator=gen) * torch.linspace(0.3, 3.0, r)[:, None, None]


@pytest.mark.parametrize("n_images, chunk, folds", [(23, 2, 5), (60, 100, 5), (7, 3, 0), (3, 1, 5), (1, 4, 5)])
def test_chunks_partition_the_images_without_mixing_folds(n_images: int, chunk: int, folds: int) -> None:
    chunks, fold_of = image_chunks(n_images, chunk, folds)
    assert torch.equal(torch.cat(chunks).sort().values, torch.arange(n_images))
    for images, f in zip(chunks, fold_of):
        assert len(images) <= chunk and torch.all(images[1:] > images[:-1])
        assert torch.all(images % max(1, min(folds, n_images)) == f)


def test_union_memory_keeps_its_chunks_prefixes() -> None:
    x = spread_regions()
    chunks, folds = image_chunks(23, 2, 5)
    runs = run_chunks(x, chunks, folds, 4, 0.25, 2.0)
    selection = runs.select(None, "adaptive")
    assert selection.far.any() and not selection.far.all()
    memory = memory_from_selection(x, selection)
    for group in memory.groups:  # every memory vector is the training row its source names
        assert torch.equal(x[group.regions[:, None], group.sources], group.bank)
    for k, images in enumerate(chunks):  # each chunk's part is that chunk's own greedy run, nested
        alone = GreedyKCenter(x[:, image_rows(images, 4)]).extend(runs.n_keep[k])
        rows = image_rows(images, 4)[alone.indices]
        assert torch.equal(runs.indices[:, runs.columns([k], far=True)], rows)
        assert torch.equal(runs.indices[:, runs.columns([k], far=False)], rows[:, : runs.n_near[k]])
        torch.testing.assert_close(runs.radii[:, k], alone.radii[:, runs.n_near[k] - 1])


@pytest.mark.parametrize("fold", [None, 0, 3])
def test_every_vector_lies_within_the_stated_radius(fold: int | None) -> None:
    """The guarantee: each training vector (of the folds kept) is within the region's stated radius
    (the largest of its chunks' r-radii) of the union memory; fold f's memory holds none of fold f."""
    x = spread_regions(r=4, n_images=30, seed=1)
    chunks, folds = image_chunks(30, 3, 5)
    runs = run_chunks(x, chunks, folds, 4, 0.2, 2.0)
    selection = runs.select(fold, "adaptive")
    kept = [c for c, f in zip(chunks, folds) if f != fold]
    rows = image_rows(torch.cat(kept).sort().values, 4)
    for regions, sources in selection.groups():
        for region, src in zip(regions.tolist(), sources):
            if fold is not None:
                assert not torch.isin(src // 4 % 5, torch.tensor([fold])).any()
            nearest = torch.cdist(x[region, rows], x[region, src]).min(dim=1).values
            assert nearest.max() <= selection.radii[region] + 1e-5


def test_runs_do_not_depend_on_how_chunks_are_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    x = spread_regions(r=3, n_images=40)
    chunks, folds = image_chunks(40, 3, 5)
    wide = run_chunks(x, chunks, folds, 4, 0.1, 2.0, projection=4)
    monkeypatch.setattr(composable, "SET_BATCH_BYTES", 1)  # one chunk per greedy run
    narrow = run_chunks(x, chunks, folds, 4, 0.1, 2.0, projection=4)
    assert torch.equal(wide.indices, narrow.indices) and torch.equal(wide.radii, narrow.radii)
    one_region = run_chunks(x[1:2], chunks, folds, 4, 0.1, 2.0, projection=4)
    assert torch.equal(one_region.indices[0], wide.indices[1])


def test_build_memories_chunked_and_auto() -> None:
    regions = [spread_regions(r=4, n_images=12), spread_regions(r=4, n_images=12, per_image=1, c=5)]
    config = FAPMConfig(grid=2, coreset_ratio=0.25, coreset_method="chunked", coreset_chunk_images=2)
    chunked = build_memories(regions, config, rows_per_image=[4, 1])
    assert all(m.runs is not None for m in chunked)
    auto = build_memories(regions, config.replace(coreset_method="auto", coreset_chunk_images=None), rows_per_image=[4, 1])
    exact = build_memories(regions, config.replace(coreset_method="exact", coreset_chunk_images=None))
    for a, b in zip(auto, exact):  # small: auto is the exact greedy, bit for bit
        assert a.runs is None and torch.equal(a.groups[0].bank, b.groups[0].bank) and torch.equal(a.radii, b.radii)


def test_auto_switches_on_the_estimated_exact_work() -> None:
    wrn = [(16, 512), (4, 1024)]  # wide_resnet50_2 at 224: vectors per image and region, dim
    config = FAPMConfig()
    for n_images in (60, 209, 320, 391):  # the built-in set, bottle, screw, hazelnut (MVTec's largest)
        assert resolve_method(config, n_images, wrn) == "exact"
    assert resolve_method(config, 10_000, wrn) == "chunked"
    assert resolve_method(config.replace(coreset_method="exact"), 10_000, wrn) == "exact"
    assert resolve_method(config.replace(calibration_folds=0), 1_000, wrn) == "exact"  # 4.3e12 bytes
    assert resolve_method(config.replace(calibration_folds=0), 2_000, wrn) == "chunked"
    one = exact_greedy_bytes([(3344, 512)], 49, 0.1, 2.0, "adaptive", 0)
    assert one == 49 * 3344 * 512 * 4 * (335 + (669 - 335) / 2)
    assert exact_greedy_bytes([(3344, 512)], 49, 0.1, 2.0, "adaptive", 5) == pytest.approx(one * 4.2)
    assert exact_greedy_bytes([(1000, 8)], 1, 0.1, 2.0, "adaptive", 0) < AUTO_EXACT_MAX_BYTES


def test_meaningless_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="coreset_chunk_images=10 acts only with coreset_method chunked or auto"):
        FAPMConfig(coreset_method="exact", coreset_chunk_images=10)
    with pytest.raises(ConfigError, match="coreset_method='fast' must be one of auto, exact, chunked"):
        FAPMConfig(coreset_method="fast")
    with pytest.raises(ConfigError, match="coreset_chunk_images=0 must be >= 1"):
        FAPMConfig(coreset_chunk_images=0)
