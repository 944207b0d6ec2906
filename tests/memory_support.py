"""What the memory tests share: the shapes of their region features, and one region's bank found in its
size group."""
from __future__ import annotations

from torch import Tensor

from fapm_lib.method.memory import BankGroup, LayerMemory

#: Regions, training vectors per region and channels of the ``features`` fixture (tests/method/conftest.py).
R, N, C = 9, 80, 8
#: Training vectors per region of the ``features_60`` fixture (same regions and channels).
N_60 = 60


def region_bank(mem: LayerMemory, region: int) -> Tensor:
    """``[M, C]`` bank of one region, found in its size group."""
    for g in mem.groups:
        hits = (g.regions == region).nonzero().flatten()
        if len(hits):
            return g.bank[hits[0]]
    raise AssertionError(f"region {region} is in no group")


def region_group(mem: LayerMemory, region: int) -> tuple[BankGroup, int]:
    """(size group holding ``region``, the region's index in it)."""
    for group in mem.groups:
        hits = (group.regions == region).nonzero().flatten()
        if len(hits):
            return group, int(hits[0])
    raise AssertionError(region)
