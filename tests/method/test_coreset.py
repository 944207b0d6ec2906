"""Greedy k-center coreset: covering radii, nested prefixes, batching, approximation quality."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from fapm_lib.method.coreset import GreedyKCenter, coreset_size, random_projection


def covering_radius(x: Tensor, centres: Tensor) -> float:
    """Brute force: largest distance from a row of ``x [N, C]`` to its nearest row in ``x[centres]``."""
    return float(torch.cdist(x, x[centres]).min(dim=1).values.max())


def spread_sets(r: int = 4, n: int = 60, c: int = 6, seed: int = 0) -> Tensor:
    """``[R, N, C]`` float64 sets with different spreads and offsets per set."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 3.0, r, dtype=torch.float64)[:, None, None]
    return torch.randn(r, n, c, generator=gen, dtype=torch.float64) * scale + torch.arange(r)[:, None, None]


def test_radii_never_grow_and_match_brute_force() -> None:
    x = spread_sets()
    greedy = GreedyKCenter(x).extend(25)
    assert greedy.radii.shape == (4, 25) and greedy.indices.shape == (4, 25)
    assert (greedy.radii[:, 1:] <= greedy.radii[:, :-1]).all()
    for r in range(x.shape[0]):
        for m in (1, 2, 5, 13, 25):
            expected = covering_radius(x[r], greedy.indices[r, :m])
            assert greedy.radii[r, m - 1].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_each_new_centre_is_the_farthest_vector() -> None:
    x = spread_sets(r=2, n=40)
    greedy = GreedyKCenter(x).extend(12)
    for r in range(2):
        for m in range(1, 12):
            nearest = torch.cdist(x[r], x[r, greedy.indices[r, :m]]).min(dim=1).values
            assert greedy.indices[r, m].item() == int(nearest.argmax())


def test_first_centre_is_nearest_to_mean() -> None:
    x = spread_sets(r=5, n=30)
    first = GreedyKCenter(x).indices[:, 0]
    expected = (x - x.mean(dim=1, keepdim=True)).norm(dim=-1).argmin(dim=1)
    assert torch.equal(first, expected)
    assert torch.equal(GreedyKCenter(x.clone()).extend(7).indices, GreedyKCenter(x).extend(7).indices)


def test_prefixes_are_nested() -> None:
    x = spread_sets()
    fresh = GreedyKCenter(x).extend(30)
    staged = GreedyKCenter(x).extend(10)
    assert torch.equal(staged.indices, fresh.indices[:, :10])
    staged.extend(30)
    assert torch.equal(staged.indices, fresh.indices)
    assert torch.equal(staged.radii, fresh.radii)


def test_subset_extend_continues_the_full_run() -> None:
    x = spread_sets(r=5)
    full = GreedyKCenter(x).extend(24)
    regions = torch.tensor([1, 3, 4])
    continued = GreedyKCenter(x).extend(9).subset(regions).extend(24)
    assert torch.equal(continued.indices, full.indices[regions])
    assert torch.equal(continued.radii, full.radii[regions])


def test_subset_does_not_disturb_the_parent_run() -> None:
    x = spread_sets()
    parent = GreedyKCenter(x).extend(8)
    before = parent.indices.clone()
    parent.subset(torch.tensor([0, 2])).extend(20)
    assert torch.equal(parent.indices, before)
    assert torch.equal(parent.extend(20).indices, GreedyKCenter(x).extend(20).indices)


def test_batched_equals_each_region_alone() -> None:
    x = spread_sets(r=6, n=50)
    batched = GreedyKCenter(x).extend(15)
    for r in range(x.shape[0]):
        alone = GreedyKCenter(x[r : r + 1]).extend(15)
        assert torch.equal(alone.indices[0], batched.indices[r])
        torch.testing.assert_close(alone.radii[0], batched.radii[r])


def test_indices_unique_and_full_run_covers_everything() -> None:
    x = spread_sets(n=20)
    greedy = GreedyKCenter(x).extend(100)  # clamped to N
    assert greedy.indices.shape == (4, 20)
    for row in greedy.indices:
        assert sorted(row.tolist()) == list(range(20))
    assert torch.all(greedy.radii[:, -1] == 0)


def test_float32_matches_float64_selection() -> None:
    x = spread_sets(r=3, n=40)
    assert torch.equal(GreedyKCenter(x.float()).extend(10).indices, GreedyKCenter(x).extend(10).indices)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("m", [2, 3])
def test_greedy_is_within_twice_the_optimal_radius(seed: int, m: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    greedy = GreedyKCenter(x[None]).extend(m)
    optimum = min(covering_radius(x, torch.tensor(c)) for c in itertools.combinations(range(9), m))
    radius = greedy.radii[0, -1].item()
    assert optimum - 1e-12 <= radius <= 2 * optimum + 1e-12


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        GreedyKCenter(torch.zeros(5, 3))
    with pytest.raises(ValueError):
        GreedyKCenter(torch.zeros(2, 0, 3))


@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0])
def test_coreset_size_is_exact_ceiling(ratio: float) -> None:
    for n in range(1, 3000):
        assert coreset_size(n, ratio) == max(1, min(n, math.ceil(Fraction(str(ratio)) * n)))


def test_coreset_size_bounds() -> None:
    assert coreset_size(3, 0.001) == 1
    assert coreset_size(7, 1.0) == 7
    assert coreset_size(7, 2.0) == 7
    assert coreset_size(3344, 0.1) == 335


def test_random_projection_seeded_and_shaped() -> None:
    x = torch.randn(3, 10, 64)
    a, b = random_projection(x, 16, seed=3), random_projection(x, 16, seed=3)
    assert a.shape == (3, 10, 16)
    assert torch.equal(a, b)
    assert not torch.allclose(a, random_projection(x, 16, seed=4))


@pytest.mark.parametrize("dim", [None, 64, 100])
def test_random_projection_identity_when_not_smaller(dim: int | None) -> None:
    x = torch.randn(4, 64)
    assert torch.equal(random_projection(x, dim), x)


def test_random_projection_roughly_preserves_distances() -> None:
    x = torch.randn(40, 512, dtype=torch.float64)
    y = random_projection(x, 256, seed=1)
    mask = ~torch.eye(40, dtype=torch.bool)
    ratio = torch.cdist(y, y)[mask] / torch.cdist(x, x)[mask]
    assert 0.7 < ratio.min() and ratio.max() < 1.3
    assert abs(ratio.mean().item() - 1.0) < 0.05


# ---- memory use of a fit -----------------------------------------------------------------------
def test_greedy_step_allocates_no_full_size_temporaries() -> None:
    """Each greedy k-center step allocated four ``[R, N]`` temporaries while keeping small tensors
    alive; glibc then fragments its heap and RSS grows by about R*N*4 bytes per step (a 2000-image
    lite0 fit passed 14 GB, tools/measure_fit_rss.py). A step must reuse preallocated buffers."""
    x = torch.randn(3, 2000, 8, generator=torch.Generator().manual_seed(0))
    greedy = GreedyKCenter(x)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        greedy.extend(20)
    full_size = sorted({e.name for e in prof.events() if e.cpu_memory_usage >= x.shape[0] * x.shape[1] * 4})
    assert full_size == []
