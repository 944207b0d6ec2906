"""Per-region memories: fixed/adaptive bank sizes, far-region rule, bank contents, region-local k-NN."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import Tensor

from fapm_lib.config import FAPMConfig
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.errors import ConfigError
from fapm_lib.method.coreset import GreedyKCenter
from fapm_lib.method.memory import BankGroup, LayerMemory
from fapm_lib.method.memory_builders import build_layer_memory, check_k

R, N, C = 9, 80, 8


def exact_ceil(n: int, *factors: float) -> int:
    """``ceil(n * prod(factors))`` in exact decimal arithmetic."""
    value = Fraction(n)
    for f in factors:
        value *= Fraction(str(f))
    return math.ceil(value)


@pytest.fixture(scope="module")
def features() -> Tensor:
    """``[R, N, C]``: regions with clearly different spreads (some tight, some wide)."""
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.2, 0.3, 3.0, 0.2, 2.5, 0.4, 0.3, 4.0, 0.2])[:, None, None]
    return torch.randn(R, N, C, generator=gen) * scale + torch.randn(R, 1, C, generator=gen) * 5


def is_row_of(rows: Tensor, pool: Tensor) -> bool:
    """True when every row of ``rows [M, C]`` occurs bit-exactly in ``pool [N, C]``."""
    return bool((rows[:, None, :] == pool[None]).all(-1).any(-1).all())


def region_bank(mem: LayerMemory, region: int) -> Tensor:
    """``[M, C]`` bank of one region, found in its size group."""
    for g in mem.groups:
        hits = (g.regions == region).nonzero().flatten()
        if len(hits):
            return g.bank[hits[0]]
    raise AssertionError(f"region {region} is in no group")


def test_fixed_sizes_everywhere(features: Tensor) -> None:
    mem = build_layer_memory(features, ratio=0.1, multiplier=2.0, sampling="fixed")
    assert torch.all(mem.bank_sizes() == exact_ceil(N, 0.1))
    assert not mem.far.any()
    assert len(mem.groups) == 1
    assert mem.n_vectors() == R * exact_ceil(N, 0.1)
    assert mem.dim == C and mem.n_regions == R


def test_adaptive_far_rule_and_sizes(features: Tensor) -> None:
    mem = build_layer_memory(features, ratio=0.1, multiplier=2.0, sampling="adaptive")
    near_size = exact_ceil(N, 0.1)
    radii = GreedyKCenter(features).extend(near_size).radii[:, -1]
    torch.testing.assert_close(mem.radii, radii)
    assert torch.equal(mem.far, radii > radii.mean())
    assert 0 < int(mem.far.sum()) < R  # the spreads above give both kinds
    assert mem.far[[2, 4, 7]].all() and not mem.far[[0, 3, 8]].any()
    sizes = mem.bank_sizes()
    assert torch.all(sizes[mem.far] == exact_ceil(N, 0.1, 2.0))
    assert torch.all(sizes[~mem.far] == near_size)
    assert len(mem.groups) == 2


def test_banks_are_the_greedy_training_vectors(features: Tensor) -> None:
    mem = build_layer_memory(features, ratio=0.1, multiplier=2.0, sampling="adaptive")
    run = GreedyKCenter(features).extend(exact_ceil(N, 0.1, 2.0)).indices  # far banks continue the same run
    for r in range(R):
        bank = region_bank(mem, r)
        assert torch.equal(bank, features[r, run[r, : bank.shape[0]]])
        # every row is literally one of this region's training vectors
        assert is_row_of(bank, features[r])


def test_projection_selects_but_banks_keep_full_vectors(features: Tensor) -> None:
    mem = build_layer_memory(features, ratio=0.2, multiplier=2.0, sampling="fixed", projection=3, seed=1)
    assert mem.dim == C
    for r in range(R):
        assert is_row_of(region_bank(mem, r), features[r])


def test_multiplier_one_gives_one_group(features: Tensor) -> None:
    mem = build_layer_memory(features, ratio=0.1, multiplier=1.0, sampling="adaptive")
    assert len(mem.groups) == 1 and not mem.far.any()
    assert torch.all(mem.bank_sizes() == exact_ceil(N, 0.1))


@pytest.mark.parametrize("ratio, multiplier, n", [(0.1, 3.0, 100), (0.2, 1.5, 50)])
def test_far_size_is_exact_ceiling_for_decimal_settings(ratio: float, multiplier: float, n: int) -> None:
    """ceil(a r N) with r*a an exact integer multiple: 0.1*3 is 0.30000000000000004 in floats."""
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(4, n, 3, generator=gen) * torch.tensor([0.1, 0.1, 3.0, 0.1])[:, None, None]
    mem = build_layer_memory(feats, ratio=ratio, multiplier=multiplier, sampling="adaptive")
    assert mem.far.any()
    assert torch.all(mem.bank_sizes()[mem.far] == exact_ceil(n, ratio, multiplier))


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


def test_check_k_names_k(features: Tensor) -> None:
    mem = build_layer_memory(features, ratio=0.1, multiplier=2.0, sampling="adaptive")
    smallest = int(mem.bank_sizes().min())
    check_k([mem], smallest)
    with pytest.raises(ConfigError, match=f"k={smallest + 1}"):
        check_k([mem], smallest + 1)


def test_fit_regions_refuses_k_above_smallest_bank(features: Tensor) -> None:
    config = FAPMConfig(coreset_ratio=0.05, k=exact_ceil(N, 0.05) + 1, image_score="reweighted")  # k is read
    with pytest.raises(ConfigError, match=r"\bk="):
        FAPM(config).fit_regions([features, features[:, :40]])
    model = FAPM(config.replace(k=exact_ceil(40, 0.05))).fit_regions([features, features[:, :40]])
    assert [int(m.bank_sizes().min()) for m in model.memories] == [exact_ceil(N, 0.05), exact_ceil(40, 0.05)]
