"""Adding new normal vectors to a fitted memory (``fapm update``'s rule): the greedy run continues over the
old centres and the new vectors, against a brute-force reference."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fapm_lib.method.memory import LayerMemory
from fapm_lib.method.memory_update import extend_layer_memory
from tests.memory_support import N_60, C, R, region_group


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


def test_extension_continues_the_greedy_run_over_old_centres_and_new_vectors(memory_60: LayerMemory,
                                                                               features_60: Tensor) -> None:
    gen = torch.Generator().manual_seed(7)
    new = features_60[:, :30] + torch.randn(R, 30, C, generator=gen) * 2.0  # [R, 30, C]
    n_old_rows = N_60
    extended, before, after = extend_layer_memory(memory_60, new, n_old_rows, ratio=0.1, multiplier=2.0)
    assert torch.equal(extended.radii, memory_60.radii) and torch.equal(extended.far, memory_60.far)
    assert memory_60.far.any() and (~memory_60.far).any()
    for region in range(R):
        old_group, g_old = region_group(memory_60, region)
        group, g = region_group(extended, region)
        n_old = old_group.bank.shape[1]
        n_add = math.ceil(30 * (0.2 if memory_60.far[region] else 0.1))
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
