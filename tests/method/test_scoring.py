"""Scoring: aligned layer upsampling, fusion, anomaly maps, image scores."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fapm_lib.method.scoring import (
    anomaly_map,
    fuse_layers,
    gaussian_kernel_size,
    image_score,
    upsample_nearest,
    upsample_official,
)


def test_upsample_nearest_places_each_coarse_cell_on_its_2x2_block() -> None:
    coarse = torch.arange(2 * 7 * 7 * 3, dtype=torch.float32).reshape(2, 7, 7, 3)
    fine = upsample_nearest(coarse, 2)
    assert fine.shape == (2, 14, 14, 3)
    rows = torch.arange(14)
    assert torch.equal(fine, coarse[:, rows // 2][:, :, rows // 2])
    for i, j in [(0, 0), (3, 5), (6, 6), (1, 4)]:
        block = fine[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        assert torch.equal(block, coarse[:, i : i + 1, j : j + 1].expand_as(block))


def test_upsample_factor_one_is_the_identity() -> None:
    x = torch.rand(2, 14, 14, 3)
    assert upsample_nearest(x, 1) is x


def planted(cell: tuple[int, int], side: int = 14) -> torch.Tensor:
    """``[1, side, side]`` zeros with a single 1 at ``cell`` (one anomalous coarse cell)."""
    coarse = torch.zeros(1, side, side)
    coarse[0, cell[0], cell[1]] = 1.0
    return coarse


def lit(fine: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(p) for p in fine[0].nonzero().tolist()}


@pytest.mark.parametrize("cell", [(0, 0), (3, 5), (6, 6), (13, 13), (9, 2)])
def test_planted_coarse_cell_lights_its_2x2_block_ours_and_a_row_officially(cell: tuple[int, int]) -> None:
    """Ours: exactly the four fine cells under the coarse cell. Official: four cells of one fine
    row of the region, two of them under the coarse cell and two beside it."""
    i, j = cell
    ours = lit(upsample_nearest(planted(cell), 2))
    assert ours == {(2 * i + a, 2 * j + b) for a in (0, 1) for b in (0, 1)}
    official = lit(upsample_official(planted(cell), 2, grid=7))
    gy, gx = i // 2, j // 2  # region of the cell (2x2 coarse cells per region)
    row = 4 * gy + 2 * (i % 2) + (j % 2)  # fine row (y // 2, y % 2) == (i % 2, j % 2) within the region
    assert official == {(row, 4 * gx + x) for x in range(4)}
    assert len(official & ours) == 2


def test_official_mapping_misplaces_392_of_784_fine_cells() -> None:
    coarse = torch.arange(14 * 14, dtype=torch.float32).reshape(1, 14, 14, 1)  # every cell its own value
    ours, official = upsample_nearest(coarse, 2), upsample_official(coarse, 2, grid=7)
    assert ours.shape == official.shape == (1, 28, 28, 1)
    wrong = ours != official
    assert int(wrong.sum()) == 392
    per_region = wrong[0, ..., 0].reshape(7, 4, 7, 4).sum(dim=(1, 3))
    assert torch.equal(per_region, torch.full((7, 7), 8))  # 8 of the 16 fine cells of every region
    assert torch.equal(torch.sort(official.flatten()).values, torch.sort(ours.flatten()).values)  # a permutation


@pytest.mark.parametrize("grid, side, factor", [(7, 14, 2), (1, 4, 2), (2, 4, 3), (7, 7, 2)])
def test_official_mapping_is_the_repeat_of_each_regions_flattened_cells(grid: int, side: int, factor: int) -> None:
    """Fine cell (y, x) of a region with fine side S gets the region's coarse cell of flat index
    (y*S + x) // factor**2 (row-major flattening, each coarse cell repeated factor**2 times)."""
    coarse = torch.rand(2, side, side, 3)
    official = upsample_official(coarse, factor, grid)
    s = side // grid  # coarse cells per region side
    fine_side = s * factor
    expected = torch.empty_like(official)
    for y in range(side * factor):
        for x in range(side * factor):
            gy, fy, gx, fx = y // fine_side, y % fine_side, x // fine_side, x % fine_side
            c = (fy * fine_side + fx) // factor**2
            expected[:, y, x] = coarse[:, gy * s + c // s, gx * s + c % s]
    assert torch.equal(official, expected)


def test_fuse_layers_sums_layers_on_one_grid() -> None:
    fine, coarse = torch.rand(2, 14, 14, 4), torch.rand(2, 7, 7, 4)
    fine_before = fine.clone()
    fused = fuse_layers([fine, upsample_nearest(coarse, 2)])
    assert torch.equal(fused, fine + upsample_nearest(coarse, 2))
    assert torch.equal(fine, fine_before)  # inputs untouched
    assert torch.equal(fuse_layers([fine]), fine) and fuse_layers([fine]) is not fine


def test_fuse_layers_refuses_layers_on_different_grids() -> None:
    with pytest.raises(ValueError, match="upsample_nearest"):
        fuse_layers([torch.rand(1, 14, 14, 1), torch.rand(1, 7, 7, 1)])


def test_anomaly_map_shape_and_constant() -> None:
    patch = torch.full((3, 14, 14), 2.5)
    out = anomaly_map(patch, 112, sigma=4.0)
    assert out.shape == (3, 112, 112)
    torch.testing.assert_close(out, torch.full_like(out, 2.5))


@pytest.mark.parametrize("cell", [(3, 5), (0, 0), (13, 6)])
def test_blur_keeps_the_peak_of_a_spike(cell: tuple[int, int]) -> None:
    patch = torch.zeros(1, 14, 14)
    patch[0, cell[0], cell[1]] = 1.0
    out = anomaly_map(patch, 112, sigma=4.0)[0]
    y, x = divmod(int(out.argmax()), 112)
    assert 8 * cell[0] <= y < 8 * cell[0] + 8 and 8 * cell[1] <= x < 8 * cell[1] + 8
    assert out.max() < 1.0  # it was blurred
    assert out.min() >= 0


def test_sigma_zero_is_plain_bilinear() -> None:
    patch = torch.rand(2, 14, 14)
    expected = F.interpolate(patch[:, None], size=(56, 56), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(anomaly_map(patch, 56, sigma=0.0), expected)


def test_kernel_size_is_odd_and_covers_four_sigma() -> None:
    assert gaussian_kernel_size(4.0) == 33
    assert gaussian_kernel_size(1.0) == 9


def test_image_score_max_is_largest_1nn() -> None:
    knn = torch.rand(3, 14, 14, 4).sort(dim=-1).values
    torch.testing.assert_close(image_score(knn, "max"), knn[..., 0].flatten(1).max(dim=1).values)


def test_image_score_reweighted_by_hand() -> None:
    knn = torch.tensor([[[[0.5, 0.6, 0.9], [1.0, 2.0, 3.0]],
                         [[0.2, 0.3, 0.4], [0.8, 0.8, 5.0]]]])  # [1, 2, 2, 3]; largest 1-NN at (0, 1)
    n_b = [1.0, 2.0, 3.0]
    weight = 1 - math.exp(max(n_b)) / sum(math.exp(v) for v in n_b)
    assert image_score(knn, "reweighted").item() == pytest.approx(weight * 1.0, rel=1e-6)
    assert image_score(knn, "max").item() == pytest.approx(1.0)


def test_image_score_per_image_and_unknown_mode() -> None:
    knn = torch.zeros(2, 2, 2, 2)
    knn[0, 1, 0] = torch.tensor([3.0, 4.0])
    knn[1, 0, 1] = torch.tensor([1.0, 1.0])
    weights = [1 - math.exp(4) / (math.exp(3) + math.exp(4)), 0.5]
    expected = torch.tensor([weights[0] * 3.0, weights[1] * 1.0])
    torch.testing.assert_close(image_score(knn, "reweighted"), expected)
    with pytest.raises(ValueError):
        image_score(knn, "mean")


@pytest.mark.parametrize("size,sigma", [(224, 4.0), (112, 2.0), (64, 1.0)])
def test_anomaly_map_equals_bilinear_then_kornia_blur(size: int, sigma: float) -> None:
    """The one-matrix-per-axis map equals the two-step reference (upsample, then kornia blur)."""
    import kornia

    x = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0)) * 7
    ks = gaussian_kernel_size(sigma)
    up = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)
    ref = kornia.filters.gaussian_blur2d(up, (ks, ks), (sigma, sigma), border_type="reflect", separable=True)[:, 0]
    assert torch.allclose(anomaly_map(x, size, sigma), ref, atol=1e-5, rtol=1e-5)
