"""The notebooks' helpers: time per image split into backbone, search and post-processing (medians over
repeats, exact with a fake clock)."""
from __future__ import annotations

import torch

from fapm_lib.tutorial.notebook import time_stages
from tests.timing_support import FakeClock, FakeModel


def test_time_stages_reports_medians_per_image_and_their_sum(clock: FakeClock) -> None:
    times = time_stages(FakeModel(clock, []), torch.zeros(4, 3, 8, 8), repeats=3)  # [B=4, ...]
    assert times == {"backbone": 500.0, "search": 62.5, "post-processing": 125.0, "total": 687.5}
