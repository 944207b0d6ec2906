"""Region split/merge: exact round trips, region contents, grid validation, feature buffering."""
from __future__ import annotations

import pytest
import torch

from fapm_lib.errors import ConfigError
from fapm_lib.method.regions import (RegionFeatureBuffer, check_grid, merge_regions, region_lookup, region_rows, split_regions, valid_grids)
from fapm_lib.method.scoring import upsample_nearest


@pytest.mark.parametrize("grid", [1, 2, 7, 14])
def test_split_merge_round_trip(grid: int) -> None:
    x = torch.randn(3, 5, 28, 28)
    regions = split_regions(x, grid)
    s = 28 // grid
    assert regions.shape == (grid * grid, 3 * s * s, 5)
    assert torch.equal(merge_regions(regions, grid, 28, 28), x.permute(0, 2, 3, 1))


def test_round_trip_non_square_map() -> None:
    x = torch.randn(2, 3, 28, 14)
    regions = split_regions(x, 7)
    assert regions.shape == (49, 2 * 4 * 2, 3)
    assert torch.equal(merge_regions(regions, 7, 28, 14), x.permute(0, 2, 3, 1))


def test_merge_keeps_trailing_dims() -> None:
    values = torch.randn(49, 2 * 16, 4)  # e.g. k distances per position
    merged = merge_regions(values, 7, 28, 28)
    assert merged.shape == (2, 28, 28, 4)
    assert torch.equal(split_regions(merged.permute(0, 3, 1, 2), 7), values)


@pytest.mark.parametrize("gy, gx", [(2, 5), (0, 0), (6, 6), (3, 1)])
def test_region_holds_its_grid_cell(gy: int, gx: int) -> None:
    x = torch.randn(3, 6, 28, 28)
    regions = split_regions(x, 7)
    cell = x[:, :, 4 * gy : 4 * gy + 4, 4 * gx : 4 * gx + 4]  # [B, C, 4, 4]
    expected = cell.permute(0, 2, 3, 1).reshape(-1, 6)  # rows ordered (image, y, x)
    assert torch.equal(regions[gy * 7 + gx], expected)


def test_grid_that_does_not_divide_raises() -> None:
    with pytest.raises(ConfigError, match="grid=5"):
        split_regions(torch.zeros(1, 2, 28, 28), 5)
    with pytest.raises(ConfigError, match="grid"):
        check_grid(14, 14, 4)


def test_check_grid_returns_region_side() -> None:
    assert check_grid(28, 28, 7) == 4
    assert check_grid(14, 14, 7) == 2


def test_valid_grids() -> None:
    assert valid_grids(28, 14) == [1, 2, 7, 14]
    assert valid_grids(28) == [1, 2, 4, 7, 14, 28]
    assert valid_grids(12, 9) == [1, 3]


@pytest.mark.parametrize("known_count", [True, False])
def test_feature_buffer_equals_one_split(known_count: bool) -> None:
    x = torch.randn(7, 4, 14, 14)
    buffer = RegionFeatureBuffer(7, 7 if known_count else None)
    for chunk in x.split(3):
        buffer.add(chunk)
    assert torch.equal(buffer.result(), split_regions(x, 7))


# ---- one-gather split and merge (the search's hot path) --------------------------------------
@pytest.mark.parametrize("grid, batch, height, width", [(7, 1, 28, 28), (7, 3, 14, 14), (2, 2, 8, 6), (1, 1, 4, 4)])
def test_region_rows_gather_the_split_in_any_region_order(grid: int, batch: int, height: int, width: int) -> None:
    x = torch.randn(batch, 5, height, width)
    order = tuple(torch.randperm(grid * grid, generator=torch.Generator().manual_seed(grid)).tolist())
    rows = region_rows(grid, height, width, batch, order, torch.device("cpu"))
    flat = x.permute(0, 2, 3, 1).reshape(-1, 5)
    gathered = flat.index_select(0, rows).view(grid * grid, -1, 5)
    assert torch.equal(gathered, split_regions(x, grid)[list(order)])


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_region_lookup_merges_and_upsamples_like_merge_then_upsample(factor: int) -> None:
    grid, batch, side = 7, 2, 14
    order = tuple(reversed(range(grid * grid)))
    values = torch.randn(grid * grid, batch * (side // grid) ** 2, 3)  # region-ordered (in `order`) values
    lookup = region_lookup(grid, side, side, batch, order, factor, torch.device("cpu"))
    natural = torch.empty_like(values)
    natural[list(order)] = values  # back to region r = gy * grid + gx
    expected = upsample_nearest(merge_regions(natural, grid, side, side), factor)
    assert torch.equal(values.flatten(0, 1).index_select(0, lookup).view_as(expected), expected)
