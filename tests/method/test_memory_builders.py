"""Building per-region memories: fixed and adaptive bank sizes (the far-region rule, exact ceilings for
decimal settings), banks made of the greedy run's training vectors, the projection used only to select,
``k`` checked against the smallest bank."""
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
from fapm_lib.method.memory_builders import build_layer_memory, check_k
from tests.memory_support import C, N, R, region_bank


def exact_ceil(n: int, *factors: float) -> int:
    """``ceil(n * prod(factors))`` in exact decimal arithmetic."""
    value = Fraction(n)
    for f in factors:
        value *= Fraction(str(f))
    return math.ceil(value)


def is_row_of(rows: Tensor, pool: Tensor) -> bool:
    """True when every row of ``rows [M, C]`` occurs bit-exactly in ``pool [N, C]``."""
    return bool((rows[:, None, :] == pool[None]).all(-1).any(-1).all())


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
