"""Region split/merge: exact round trips, region contents, grid validation, feature buffering."""
from __future__ import annotations

import pytest
import torch

from fapm_lib.errors import ConfigError
from fapm_lib.method.regions import RegionFeatureBuffer, check_grid, merge_regions, split_regions, valid_grids


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
    assert check_grid(28, 28, 7) == (4, 4)
    assert check_grid(14, 14, 7) == (2, 2)
    assert check_grid(14, 42, (7, 14)) == (2, 3)  # rows x columns over a non-square map


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


# ---- traced (exported) models keep a dynamic batch ------------------------------------------
def test_split_and_merge_keep_a_dynamic_batch_when_traced() -> None:
    """Written with reshape(-1, ...) for the batch: a function traced at batch 2 runs at batch 3."""
    def roundtrip(x: torch.Tensor) -> torch.Tensor:
        return merge_regions(split_regions(x, 7).pow(2), 7, 14, 14)

    traced = torch.jit.trace(roundtrip, torch.randn(2, 5, 14, 14))
    x = torch.randn(3, 5, 14, 14)
    assert torch.equal(traced(x), roundtrip(x))
    assert torch.equal(roundtrip(x), x.pow(2).permute(0, 2, 3, 1))
