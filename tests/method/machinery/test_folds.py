"""The calibration's folds: every training image is held out once, a large fit scores a seeded sample
spread over the folds."""
from __future__ import annotations

import torch

from fapm_lib.method.machinery.folds import fold_count, heldout_images, kept_images, scored_images


def test_fold_sets() -> None:
    held = heldout_images(scored_images(11, None, 0), fold_count(11, 5))
    assert sorted(torch.cat([images for images, _ in held]).tolist()) == list(range(11)) and len(held) == 5
    assert all(torch.equal(images, slots) for images, slots in held)  # every image scored: slot = image
    assert fold_count(3, 5) == 3 and kept_images(3, 3, 1).tolist() == [0, 2]


def test_a_large_fit_scores_a_seeded_sample_spread_over_the_folds() -> None:
    scored = scored_images(1000, 100, seed=3)
    assert len(scored) == 100 and torch.all(scored[1:] > scored[:-1])
    assert torch.equal(scored, scored_images(1000, 100, seed=3))
    assert not torch.equal(scored, scored_images(1000, 100, 4))
    assert torch.equal(scored_images(80, 100, 3), torch.arange(80))  # fewer images than the cap: all
    held = heldout_images(scored, 5)
    for f, (images, slots) in enumerate(held):
        assert torch.all(images % 5 == f) and torch.equal(scored[slots], images)
        assert 5 <= len(images) <= 40  # a random sample of 100 leaves every fold some images
