"""Feature aggregation: the 3x3 average pooling of the backbone's maps."""
from __future__ import annotations

import torch

from fapm_lib.method.features import aggregate


def test_aggregate_is_the_plain_3x3_mean_in_standard_layout() -> None:
    """Pooling in channels-last (faster on CPU) gives exactly NCHW ``avg_pool2d``'s values."""
    x = torch.randn(2, 5, 9, 7, generator=torch.Generator().manual_seed(1))
    out = aggregate(x, 3)
    assert out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1))
    mean = torch.nn.functional.conv2d(x, torch.full((5, 1, 3, 3), 1 / 9), padding=1, groups=5)
    torch.testing.assert_close(out, mean)  # zero padding, divided by 9 everywhere
    assert aggregate(x, 1) is x
