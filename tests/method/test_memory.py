"""Searching per-region memories: region-local k-NN against brute force (never another region's vectors),
and the search that also returns where each nearest memory vector came from."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fapm_lib.errors import ConfigError
from fapm_lib.method.memory import BankGroup, LayerMemory
from fapm_lib.method.memory_builders import build_layer_memory
from tests.memory_support import C, R, region_bank


@pytest.mark.parametrize("sampling, k", [("adaptive", 3), ("fixed", 3), ("adaptive", 1)])
def test_search_equals_brute_force_within_own_region(features: Tensor, sampling: str, k: int) -> None:
    mem = build_layer_memory(features, ratio=0.1, multiplier=2.0, sampling=sampling)
    gen = torch.Generator().manual_seed(5)
    queries = features[:, :12] + torch.randn(R, 12, C, generator=gen)
    out = mem.search(queries, k)
    assert out.shape == (R, 12, k)
    for r in range(R):
        expected = torch.cdist(queries[r], region_bank(mem, r)).topk(k, largest=False).values
        torch.testing.assert_close(out[r], expected, atol=1e-4, rtol=1e-4)
    assert (out[..., 1:] >= out[..., :-1]).all()


def test_search_ignores_other_regions_vectors(features: Tensor) -> None:
    mem = build_layer_memory(features, ratio=0.1, multiplier=2.0, sampling="adaptive")
    planted = torch.full((C,), 100.0)
    groups = []
    for g in mem.groups:  # put `planted` into region 3's bank only
        bank = g.bank.clone()
        hits = (g.regions == 3).nonzero().flatten()
        if len(hits):
            bank[hits[0], 0] = planted
        groups.append(BankGroup(g.regions, bank))
    mem = LayerMemory(groups, mem.radii, mem.far)
    queries = features[:, :2].clone()
    queries[5, 0] = planted + 0.01  # nearest vector of all memories: region 3's planted one
    queries[3, 0] = planted + 0.01
    out = mem.search(queries, 1)
    assert out[3, 0, 0] < 0.1
    own = torch.cdist(queries[5, :1], region_bank(mem, 5)).min()
    assert out[5, 0, 0] > 100
    torch.testing.assert_close(out[5, 0, 0], own, atol=1e-3, rtol=1e-4)


# ---- the search with the sources of the nearest vectors -----------------------------------------
def test_indexed_search_gives_the_same_distances_and_the_right_vectors(memory_60: LayerMemory,
                                                                       features_60: Tensor) -> None:
    queries = features_60[:, :17] + 0.3
    for group in memory_60.groups:
        q = queries[group.regions]
        plain = group.nearest(q, 3)
        distances, index = group.nearest_indexed(q, 3)
        assert torch.equal(distances, plain)
        picked = group.bank.gather(1, index.flatten(1)[..., None].expand(-1, -1, C)).view(*index.shape, C)
        brute = (q[:, :, None] - picked).norm(dim=-1)
        torch.testing.assert_close(brute, distances, rtol=1e-4, atol=1e-4)


def test_search_sources_points_at_the_training_row_of_the_nearest_vector(memory_60: LayerMemory,
                                                                         features_60: Tensor) -> None:
    queries = features_60[:, 5:25] * 1.01
    distances, sources = memory_60.search_sources(queries)
    assert torch.equal(distances, memory_60.search(queries, 1)[..., 0])
    for region in range(R):
        vectors = features_60[region, sources[region]]  # the training vectors the sources name
        brute = torch.cdist(queries[region], region_bank(memory_60, region)).min(dim=1).values
        torch.testing.assert_close((queries[region] - vectors).norm(dim=-1), brute, rtol=1e-4, atol=1e-4)


def test_search_sources_is_refused_without_sources(memory_60: LayerMemory, features_60: Tensor) -> None:
    bare = LayerMemory([BankGroup(g.regions, g.bank) for g in memory_60.groups], memory_60.radii, memory_60.far)
    with pytest.raises(ConfigError, match="format version 1"):
        bare.search_sources(features_60[:, :3])
