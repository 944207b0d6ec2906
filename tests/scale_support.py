"""Stand-ins for the bounded-fit tests: a backbone whose info alone is read, seeded feature maps whose
regions have different spreads, and a bit-for-bit comparison of memories."""
from __future__ import annotations

import torch

from fapm_lib.method.backbone import BackboneInfo
from fapm_lib.method.memory import LayerMemory


class Stub:
    """Stands in for a backbone with 24 / 40 channels (only its info is read)."""

    info = BackboneInfo("stub", (24, 40), (8, 16), (0.5,) * 3, (0.5,) * 3, False)


def map_batches(n: int, batch: int = 6):
    """Seeded maps ``[[B, 24, 28, 28], [B, 40, 14, 14]]``, regions with different spreads (so some are far)."""
    scale = torch.linspace(0.2, 3.0, 49).view(7, 7).repeat_interleave(4, 0).repeat_interleave(4, 1)
    for start in range(0, n, batch):
        gen = torch.Generator().manual_seed(start)
        b = min(batch, n - start)
        yield [torch.randn(b, 24, 28, 28, generator=gen) * scale,
               torch.randn(b, 40, 14, 14, generator=gen) * scale[::2, ::2]]


def assert_same_memory(a: list[LayerMemory], b: list[LayerMemory]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.radii, y.radii) and torch.equal(x.far, y.far)
        assert len(x.groups) == len(y.groups)
        for g, h in zip(x.groups, y.groups):
            assert torch.equal(g.regions, h.regions)
            assert torch.equal(g.bank, h.bank) and torch.equal(g.bank_t, h.bank_t) and torch.equal(g.sources, h.sources)
            assert torch.equal(g.sq_norms, h.sq_norms)
