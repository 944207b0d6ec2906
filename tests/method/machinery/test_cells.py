"""The greedy within cells (``coreset_method cells``): the cells partition a region, one cell is
the exact greedy, every training vector lies within the stated radius, fold memories leave their
fold out, batching changes nothing, and ``auto`` keeps the exact greedy where it is cheap."""
from __future__ import annotations

import pytest
import torch

from fapm_lib import FAPMConfig
from fapm_lib.errors import ConfigError
from fapm_lib.method.coreset import GreedyKCenter, near_far_sizes
from fapm_lib.method.machinery import cells
from fapm_lib.method.machinery.cells import (
    AUTO_EXACT_MAX_BYTES,
    choose_regions,
    exact_greedy_bytes,
    partition,
    resolve_method,
    select_layer,
)
from fapm_lib.method.machinery.folds import kept_images
from fapm_lib.method.memory_builders import build_memories
from fapm_lib.method.regions import image_rows


def spread_regions(r: int = 5, n_images: int = 23, per_image: int = 4, c: int = 6, seed: int = 0) -> torch.Tensor:
    """``[R, N * per_image, C]`` with a different spread per region (so some regions are far)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(r, n_images * per_image, c, generator=gen) * torch.linspace(0.3, 3.0, r)[:, None, None]


def test_cells_partition_a_region() -> None:
    x = spread_regions(r=1, n_images=100)[0]  # 400 vectors
    cell, to_seed = partition(x, size=20, max_cells=1000, seed=7)
    counts = torch.bincount(cell)
    assert counts.sum() == 400 and (counts > 0).all() and len(counts) >= 20
    assert counts.max() <= 40 or len(counts) == 1000  # large cells are split again
    assert torch.equal(cell, partition(x, 20, 1000, 7)[0]) and not torch.equal(cell, partition(x, 20, 1000, 8)[0])
    for c in range(len(counts)):  # every cell holds its seed (distance 0) and its members' distances
        rows = (cell == c).nonzero().flatten()
        seed_row = rows[to_seed[rows].argmin()]
        assert to_seed[seed_row] <= 1e-6
        torch.testing.assert_close(to_seed[rows], (x[rows] - x[seed_row]).pow(2).sum(1), atol=1e-4, rtol=1e-4)
    assert len(torch.unique(partition(x, 20, max_cells=5, seed=7)[0])) == 5


def test_one_cell_is_the_exact_greedy_from_its_seed() -> None:
    x = spread_regions(r=2, n_images=10)  # 40 vectors per region
    config = FAPMConfig(coreset_method="cells", coreset_cell_size=1000, coreset_ratio=0.25, sampling="fixed")
    choices = choose_regions(x, [0, 1], [torch.arange(10)], 4, config)[0]
    for g, choice in enumerate(choices):
        cell, to_seed = partition(x[g], 1000, 1000, config.seed * 1_000_003 + g)
        greedy = GreedyKCenter(x[g : g + 1], to_seed.argmin()[None]).extend(10)
        assert torch.equal(choice.near_rows, greedy.indices[0])
        assert choice.radius == pytest.approx(float(greedy.radii[0, -1]))


@pytest.mark.parametrize("fold", [None, 0, 3])
def test_every_vector_lies_within_the_stated_radius(fold: int | None) -> None:
    """The guarantee: each training vector (of the images used) lies within the region's stated
    radius of its memory; a fold's memory holds none of the fold's images."""
    x = spread_regions(r=4, n_images=30, seed=1)
    config = FAPMConfig(coreset_method="cells", coreset_cell_size=10, coreset_ratio=0.2)
    images = torch.arange(30) if fold is None else kept_images(30, 5, fold)
    selection = select_layer(choose_regions(x, list(range(4)), [images], 4, config)[0], config.sampling)
    assert selection.far.any() and not selection.far.all()
    rows = image_rows(images, 4)
    for regions, sources in selection.groups():
        for region, src in zip(regions.tolist(), sources):
            if fold is not None:
                assert not (src // 4 % 5 == fold).any()
            assert len(torch.unique(src)) == len(src)
            nearest = torch.cdist(x[region, rows], x[region, src]).min(dim=1).values
            assert nearest.max() <= selection.radii[region] + 1e-5


def test_choices_do_not_depend_on_batching_or_on_the_other_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    x = spread_regions(r=3, n_images=40)
    config = FAPMConfig(coreset_method="cells", coreset_cell_size=12, coreset_ratio=0.1)
    variants = [torch.arange(40), kept_images(40, 5, 2)]
    wide = choose_regions(x, [0, 1, 2], variants, 4, config)
    monkeypatch.setattr(cells, "SET_BATCH_BYTES", 1)  # one cell per greedy run
    narrow = choose_regions(x, [0, 1, 2], variants, 4, config)
    alone = choose_regions(x[1:2], [1], variants, 4, config)
    for v in range(2):
        for a, b in zip(wide[v], narrow[v]):
            assert torch.equal(a.near_rows, b.near_rows) and torch.equal(a.far_rows, b.far_rows)
            assert a.radius == b.radius
        assert torch.equal(alone[v][0].far_rows, wide[v][1].far_rows)


def test_build_memories_with_cells() -> None:
    regions = [spread_regions(r=4, n_images=12), spread_regions(r=4, n_images=12, per_image=1, c=5)]
    config = FAPMConfig(grid=2, coreset_ratio=0.25, coreset_method="cells", coreset_cell_size=5)
    made = build_memories(regions, config, rows_per_image=[4, 1], method="cells")
    for memory, x in zip(made, regions):  # every memory vector is the training row its source names
        for group in memory.groups:
            assert torch.equal(x[group.regions[:, None], group.sources], group.bank)
    for memory, x in zip(made, regions):  # FAPM's sizes: r N in near regions, a r N in far ones
        n_near, n_far = near_far_sizes(x.shape[1], 0.25, 2.0, "adaptive")
        sizes = memory.bank_sizes()
        assert torch.equal(sizes, torch.where(memory.far, n_far, n_near))


def test_auto_switches_on_the_estimated_exact_work() -> None:
    wrn = [(16, 512), (4, 1024)]  # wide_resnet50_2 at 224: vectors per image and region, dim
    config = FAPMConfig()
    for n_images in (60, 209, 320, 391):  # the built-in set, bottle, screw, hazelnut (MVTec's largest)
        assert resolve_method(config, n_images, wrn) == "exact"
    assert resolve_method(config, 10_000, wrn) == "cells"
    assert resolve_method(config.replace(coreset_method="exact"), 10_000, wrn) == "exact"
    assert resolve_method(config.replace(calibration_folds=0), 1_000, wrn) == "exact"
    one = exact_greedy_bytes([(3344, 512)], 49, 0.1, 2.0, "adaptive", 0)
    assert one == 49 * 3344 * 512 * 4 * (335 + (669 - 335) / 2)
    assert exact_greedy_bytes([(3344, 512)], 49, 0.1, 2.0, "adaptive", 5) == pytest.approx(one * 4.2)
    assert exact_greedy_bytes([(1000, 8)], 1, 0.1, 2.0, "adaptive", 0) < AUTO_EXACT_MAX_BYTES


def test_cells_need_the_feature_sizes() -> None:
    from fapm_lib import FAPM

    with pytest.raises(ConfigError, match="coreset_method cells needs the feature map sizes"):
        FAPM(FAPMConfig(coreset_method="cells")).fit_regions([spread_regions(r=49)])
