"""Fixtures of the method tests: region features with clearly different spreads (some regions tight, some
wide, so that the adaptive rule makes both near and far banks), and a memory built from them."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fapm_lib.method.memory import LayerMemory
from fapm_lib.method.memory_builders import build_layer_memory
from tests.memory_support import N_60, C, N, R


@pytest.fixture(scope="module")
def features() -> Tensor:
    """``[R, N, C]``: regions with clearly different spreads (some tight, some wide)."""
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.2, 0.3, 3.0, 0.2, 2.5, 0.4, 0.3, 4.0, 0.2])[:, None, None]
    return torch.randn(R, N, C, generator=gen) * scale + torch.randn(R, 1, C, generator=gen) * 5


@pytest.fixture(scope="module")
def features_60() -> Tensor:
    """``[R, N_60, C]``: regions of different spreads, so some are "far"."""
    gen = torch.Generator().manual_seed(1)
    scale = torch.tensor([0.2, 0.3, 3.0, 0.2, 2.5, 0.4, 0.3, 4.0, 0.2])[:, None, None]
    return torch.randn(R, N_60, C, generator=gen) * scale + torch.randn(R, 1, C, generator=gen) * 5


@pytest.fixture(scope="module")
def memory_60(features_60: Tensor) -> LayerMemory:
    """``features_60``'s adaptive memory (ratio 0.1, multiplier 2): near and far banks."""
    return build_layer_memory(features_60, ratio=0.1, multiplier=2.0)
