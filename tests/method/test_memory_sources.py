"""The search that also returns where each nearest memory vector came from, and adding new
normal vectors to a fitted memory (``fapm update``'s rule), against brute-force references."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from fapm_lib.errors import ConfigError
from fapm_lib.method.memory import BankGroup, LayerMemory
from fapm_lib.method.memory_builders import build_layer_memory
from fapm_lib.method.memory_update import extend_layer_memory

R, N, C = 9, 60, 8


@pytest.fixture(scope="module")
def features() -> Tensor:
    """``[R, N, C]``: regions of different spreads, so some are "far"."""
    gen = torch.Generator().manual_seed(1)
    scale = torch.tensor([0.2, 0.3, 3.0, 0.2, 2.5, 0.4, 0.3, 4.0, 0.2])[:, None, None]
    return torch.randn(R, N, C, generator=gen) * scale + torch.randn(R, 1, C, generator=gen) * 5


@pytest.fixture(scope="module")
def memory(features: Tensor) -> LayerMemory:
    return build_layer_memory(features, ratio=0.1, multiplier=2.0)


def region_group(mem: LayerMemory, region: int) -> tuple[BankGroup, int]:
    for group in mem.groups:
        hits = (group.regions == region).nonzero().flatten()
        if len(hits):
            return group, int(hits[0])
    raise AssertionError(region)


def test_indexed_search_gives_the_same_distances_and_the_right_vectors(memory: LayerMemory,
                                                                       features: Tensor) -> None:
    queries = features[:, :17] + 0.3
    for group in memory.groups:
        q = queries[group.regions]
        plain = group.nearest(q, 3)
        distances, index = group.nearest_indexed(q, 3)
        assert torch.equal(distances, plain)
        picked = group.bank.gather(1, index.flatten(1)[..., None].expand(-1, -1, C)).view(*index.shape, C)
        brute = (q[:, :, None] - picked).norm(dim=-1)
        torch.testing.assert_close(brute, distances, rtol=1e-4, atol=1e-4)


def test_search_sources_points_at_the_training_row_of_the_nearest_vector(memory: LayerMemory,
                                                                         features: Tensor) -> None:
    queries = features[:, 5:25] * 1.01
    distances, sources = memory.search_sources(queries)
    assert torch.equal(distances, memory.search(queries, 1)[..., 0])
    for region in range(R):
        vectors = features[region, sources[region]]  # the training vectors the sources name
        brute = torch.cdist(queries[region], region_bank_of(memory, region)).min(dim=1).values
        torch.testing.assert_close((queries[region] - vectors).norm(dim=-1), brute, rtol=1e-4, atol=1e-4)


def region_bank_of(mem: LayerMemory, region: int) -> Tensor:
    group, g = region_group(mem, region)
    return group.bank[g]


def test_search_sources_is_refused_without_sources(memory: LayerMemory, features: Tensor) -> None:
    bare = LayerMemory([BankGroup(g.regions, g.bank) for g in memory.groups], memory.radii, memory.far)
    with pytest.raises(ConfigError, match="format version 1"):
        bare.search_sources(features[:, :3])


def reference_extension(bank: Tensor, candidates: Tensor, n_add: int) -> list[int]:
    """Greedy k-center by hand: the old bank is the initial centre set; pick the candidate
    farthest from all centres, ``n_add`` times."""
    nearest = torch.cdist(candidates.double(), bank.double()).min(dim=1).values
    picked = []
    for _ in range(n_add):
        best = int(nearest.argmax())
        picked.append(best)
        nearest = torch.minimum(nearest, (candidates.double() - candidates[best].double()).norm(dim=1))
    return picked


def test_extension_continues_the_greedy_run_over_old_centres_and_new_vectors(memory: LayerMemory,
                                                                               features: Tensor) -> None:
    gen = torch.Generator().manual_seed(7)
    new = features[:, :30] + torch.randn(R, 30, C, generator=gen) * 2.0  # [R, 30, C]
    n_old_rows = N
    extended, before, after = extend_layer_memory(memory, new, n_old_rows, ratio=0.1, multiplier=2.0)
    assert torch.equal(extended.radii, memory.radii) and torch.equal(extended.far, memory.far)
    assert memory.far.any() and (~memory.far).any()
    for region in range(R):
        old_group, g_old = region_group(memory, region)
        group, g = region_group(extended, region)
        n_old = old_group.bank.shape[1]
        n_add = math.ceil(30 * (0.2 if memory.far[region] else 0.1))
        assert group.bank.shape[1] == n_old + n_add
        assert torch.equal(group.bank[g, :n_old], old_group.bank[g_old])  # old memory kept, in order
        assert torch.equal(group.sources[g, :n_old], old_group.sources[g_old])
        rows = group.sources[g, n_old:] - n_old_rows  # new sources continue the old numbering
        assert torch.equal(group.bank[g, n_old:], new[region, rows])
        assert rows.tolist() == reference_extension(old_group.bank[g_old], new[region], n_add)
        assert after[region] <= before[region]
    # searching the extended memory with its own new vectors finds them at distance 0
    distances = extended.search(new, 1)[..., 0]
    for region in range(R):
        group, g = region_group(extended, region)
        chosen = group.sources[g, -1] - n_old_rows
        assert float(distances[region, chosen]) < 1e-2  # 0 up to float32 rounding of |q|^2 + |b|^2 - 2 q.b
