"""The input geometry at native resolution: padding to whole regions, the backbone's tiles and
their blending, the region grid over a non-square map, and the search of neighbouring regions."""
from __future__ import annotations

import pytest
import torch

from fapm_lib.config import FAPMConfig
from fapm_lib.errors import ConfigError
from fapm_lib.method.geometry import blend_weights, pad_images, padded_size, tile_layout, valid_cells
from fapm_lib.method.memory import BankGroup, LayerMemory
from fapm_lib.method.region_grid import region_grid
from fapm_lib.method.regions import merge_regions, split_regions


def test_padding_rounds_up_to_whole_regions_and_replicates_the_border() -> None:
    assert padded_size((500, 1130), 32) == (512, 1152)
    assert padded_size((512, 1536), 32) == (512, 1536)
    image = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    padded = pad_images(image, (4, 8))
    assert padded.shape == (1, 2, 4, 8)
    assert torch.equal(padded[..., :3, :5], image)
    assert torch.equal(padded[..., 3, :5], image[..., 2, :]) and torch.equal(padded[..., :3, 7], image[..., :, 4])
    assert pad_images(image, (3, 5)) is image
    assert valid_cells((500, 1130), 8) == (63, 142)


@pytest.mark.parametrize("side, tile, overlap", [(1536, 512, 64), (2048, 512, 64), (768, 256, 32), (1024, 512, 0),
                                                 (4096, 512, 128), (512, 512, 64), (320, 512, 64)])
def test_tiles_cover_the_side_overlap_enough_and_sit_on_the_cell_grid(side: int, tile: int, overlap: int) -> None:
    layouts = {rule: tile_layout((side, side), tile, overlap, rule) for rule in ("even", "full")}
    for layout in layouts.values():
        starts, length = layout.ys, layout.size[0]
        assert length <= min(tile, side) and length % 16 == 0
        assert starts[0] == 0 and starts[-1] + length == side
        assert all(s % 16 == 0 for s in starts)
        assert all(b - a <= length - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap px
        assert layout.single == (side <= tile)
    even, full = layouts["even"], layouts["full"]
    assert full.size[0] == min(tile, side) and len(even.ys) == len(full.ys)  # as many tiles, as short as may be
    if not even.single:
        assert even.size[0] - 32 < -(-(side + (len(even.ys) - 1) * overlap) // len(even.ys)) <= even.size[0]


def test_even_tiles_cover_a_side_with_little_more_than_the_overlaps() -> None:
    assert tile_layout((1024, 1024), 512, 64).size == (384, 384)  # 3 x 384, not 3 x 512 (2.25x the pixels)
    assert tile_layout((1024, 1024), 512, 64, "full").size == (512, 512)
    with pytest.raises(ConfigError, match="tile rule"):
        tile_layout((1024, 1024), 512, 64, "half")


@pytest.mark.parametrize("stride", [8, 16])
def test_blend_weights_sum_to_one_and_fall_to_the_inner_edges(stride: int) -> None:
    layout = tile_layout((512, 1536), 512, 64)
    weights = blend_weights(layout.xs, layout.size[1], 1536, stride)
    total = torch.zeros(1536 // stride)
    for start, w in zip(layout.xs, weights):
        total[start // stride : start // stride + len(w)] += w
    torch.testing.assert_close(total, torch.ones_like(total))
    first, second = weights[0], weights[1]
    assert float(first[0]) == 1.0 and float(first[-1]) < 0.2 and float(second[0]) < 0.2  # low at inner edges
    assert torch.all(weights >= 0)


def test_region_grid_is_rows_by_columns_of_region_pixels() -> None:
    native = FAPMConfig()
    assert region_grid(native, [(64, 192), (32, 96)]) == (16, 48)  # 512 x 1536 in regions of 32 pixels
    assert region_grid(FAPMConfig(region_size=64), [(64, 192), (32, 96)]) == (8, 24)
    assert region_grid(FAPMConfig(resize=256, crop_size=224), [(28, 28), (14, 14)]) == (7, 7)


def test_non_square_split_and_merge_are_inverse() -> None:
    maps = torch.randn(2, 5, 8, 24)
    regions = split_regions(maps, (2, 6))
    assert regions.shape == (12, 2 * 4 * 4, 5)
    assert torch.equal(merge_regions(regions, (2, 6), 8, 24).permute(0, 3, 1, 2), maps)
    # region (gy, gx) = (1, 5) holds the cells of rows 4..7 and columns 20..23
    assert torch.equal(regions[1 * 6 + 5, 0], maps[0, :, 4, 20])


def _memory(banks: torch.Tensor) -> LayerMemory:
    """A memory whose regions all keep ``banks [R, M, C]`` (one size group)."""
    regions = torch.arange(banks.shape[0])
    return LayerMemory([BankGroup(regions, banks, torch.zeros(banks.shape[:2], dtype=torch.long))],
                       torch.zeros(banks.shape[0]), torch.zeros(banks.shape[0], dtype=torch.bool))


def test_search_around_equals_a_brute_force_over_the_neighbour_banks() -> None:
    torch.manual_seed(0)
    rows, cols, m, q, c = 3, 4, 6, 5, 7
    banks, queries = torch.randn(rows * cols, m, c), torch.randn(rows * cols, q, c)
    memory = _memory(banks)
    for reach in (0, 1, 2):
        got = memory.search_around(queries, (rows, cols), reach, 3)
        for r in range(rows * cols):
            gy, gx = divmod(r, cols)
            near = [ny * cols + nx for ny in range(rows) for nx in range(cols)
                    if abs(ny - gy) <= reach and abs(nx - gx) <= reach]
            pool = banks[near].reshape(-1, c)
            want = torch.cdist(queries[r], pool).topk(3, largest=False).values
            torch.testing.assert_close(got[r], want, rtol=1e-4, atol=1e-4)


def test_search_sources_around_names_the_bank_that_holds_the_match() -> None:
    torch.manual_seed(1)
    rows, cols = 2, 3
    banks = torch.randn(rows * cols, 4, 5)
    queries = banks[[1, 1, 1, 1, 1, 1], :1].clone()  # every region asks for region 1's first vector
    distances, _, regions = _memory(banks).search_sources_around(queries, (rows, cols), 1)
    # the regions within one ring of region 1 (all but none here: 2 x 3 grid) find it exactly
    assert torch.all(regions[:, 0] == 1) and float(distances.max()) < 1e-3
    own = _memory(banks).search_sources_around(queries, (rows, cols), 0)[2]
    assert torch.equal(own[:, 0], torch.arange(rows * cols))


def test_geometry_settings_act_only_in_their_mode() -> None:
    with pytest.raises(ConfigError, match="grid"):
        FAPMConfig(grid=7)  # native resolution: regions come from region_size
    with pytest.raises(ConfigError, match="region_size"):
        FAPMConfig(resize=256, crop_size=224, region_size=32)
    with pytest.raises(ConfigError, match="scale"):
        FAPMConfig(resize=256, scale=0.5)
    with pytest.raises(ConfigError, match="crop_size"):
        FAPMConfig(crop_size=224)
    with pytest.raises(ConfigError, match="region_size"):
        FAPMConfig(region_size=24)
    with pytest.raises(ConfigError, match="tile"):
        FAPMConfig(tile=500)
    with pytest.raises(ConfigError, match="neighbour_regions"):
        FAPMConfig(neighbour_regions=1, max_memory="4GB")
    assert FAPMConfig().native and not FAPMConfig(resize=256, crop_size=224).native
