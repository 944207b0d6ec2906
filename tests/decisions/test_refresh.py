"""Refreshing the calibration when normal images are added (``fapm update``): the image part is
exact (the quantile rule over old + new held-out scores), the pixel part an approximation from
the stored quantile table, bounded here; updates compose."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fapm_lib.decisions.calibration import manual, quantile_threshold
from fapm_lib.decisions.heldout import HeldOut, from_heldout
from fapm_lib.decisions.refresh import PixelMixture, refresh
from fapm_lib.errors import ConfigError

S, K = 24, 4


def heldout(n: int, seed: int, shift: float = 0.0) -> HeldOut:
    """Smooth-ish held-out maps (gamma pixels, a few hot spots) and sorted neighbours."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.distributions.Gamma(4.0, 0.4).sample((n, S, S)) + shift
    maps[:, :3, :3] += torch.rand(n, 1, 1, generator=gen) * 15
    top = maps.flatten(1).max(dim=1).values
    neighbours = top[:, None] + torch.rand(n, K, generator=gen).cumsum(dim=1)
    return HeldOut(neighbours, maps, 5)


def combined(*parts: HeldOut) -> HeldOut:
    return HeldOut(torch.cat([p.neighbours for p in parts]), torch.cat([p.maps for p in parts]), 5)


@pytest.mark.parametrize("rate", [0.01, 0.05])
def test_adding_images_matches_calibrating_on_all_of_them(rate: float) -> None:
    torch.manual_seed(0)
    old, new = heldout(40, 1), heldout(8, 2, shift=3.0)
    exact = from_heldout(combined(old, new), "max", 1, rate)
    updated = refresh(from_heldout(old, "max", 1, rate), new.neighbours, new.maps)
    assert updated.image_threshold == pytest.approx(exact.image_threshold, abs=1e-9)  # exact
    assert updated.image_scale == pytest.approx(exact.image_scale, rel=1e-9)
    assert updated.summary["image"]["values"] == pytest.approx(exact.summary["image"]["values"])
    assert updated.pixel_threshold == pytest.approx(exact.pixel_threshold, rel=0.01)  # the table's approximation
    assert updated.pixel_scale == pytest.approx(exact.pixel_scale, rel=1e-6)  # mean and std combine exactly
    assert updated.summary["n_images"] == 48 and updated.summary["updates"] == [{"n_added": 8, "n_images_before": 40}]
    table = np.array(updated.summary["pixel"]["table"]["threshold"])
    assert np.all(np.diff(table) >= 0)  # rates fall, thresholds rise
    pixels = combined(old, new).maps.numpy().ravel()
    for r, t in zip(updated.summary["pixel"]["table"]["false_alarm_rate"], table):
        if r >= 1e-3:  # where the exact quantile is well defined by these 27,648 pixels
            assert t == pytest.approx(quantile_threshold(pixels, r), rel=0.02)


def test_two_updates_compose_like_one() -> None:
    old, first, second = heldout(40, 1), heldout(5, 3, shift=2.0), heldout(5, 4, shift=2.0)
    cal = from_heldout(old, "max", 1, 0.01)
    twice = refresh(refresh(cal, first.neighbours, first.maps), second.neighbours, second.maps)
    once = refresh(cal, torch.cat([first.neighbours, second.neighbours]), torch.cat([first.maps, second.maps]))
    assert twice.image_threshold == once.image_threshold
    assert twice.pixel_threshold == pytest.approx(once.pixel_threshold, rel=0.01)
    assert twice.summary["n_images"] == 50 and len(twice.summary["updates"]) == 2


def test_reweighted_scores_refresh_with_their_neighbours() -> None:
    old, new = heldout(30, 5), heldout(6, 6)
    exact = from_heldout(combined(old, new), "reweighted", 3, 0.05)
    updated = refresh(from_heldout(old, "reweighted", 3, 0.05), new.neighbours, new.maps)
    assert updated.image_threshold == pytest.approx(exact.image_threshold, abs=1e-9)


def test_manual_thresholds_are_kept_and_the_distributions_refreshed() -> None:
    old, new = heldout(20, 7), heldout(4, 8)
    cal = manual(from_heldout(old, "max", 1, 0.01), 99.0, 77.0)
    updated = refresh(cal, new.neighbours, new.maps)
    assert (updated.method, updated.image_threshold, updated.pixel_threshold) == ("manual", 99.0, 77.0)
    assert updated.summary["n_images"] == 24 and len(updated.summary["image"]["values"]) == 24


def test_a_calibration_without_held_out_scores_is_refused() -> None:
    new = heldout(3, 9)
    bare = manual(None, 10.0, 5.0)
    with pytest.raises(ConfigError, match="no held-out scores to refresh"):
        refresh(bare, new.neighbours, new.maps)


def test_the_old_part_of_the_mixture_reads_the_table() -> None:
    table = {"false_alarm_rate": [0.5, 0.1, 0.01], "threshold": [1.0, 2.0, 3.0]}
    mixture = PixelMixture(table, low=0.0, high=4.0, n_old=10, new=np.array([]), n_new=0)
    assert mixture.old_exceedance(np.array([1.0, 2.0, 3.0])) == pytest.approx([0.5, 0.1, 0.01])
    assert mixture.old_exceedance(np.array([1.5]))[0] == pytest.approx(np.sqrt(0.5 * 0.1))  # log-linear
    assert mixture.old_exceedance(np.array([0.0, 4.0, 9.0])) == pytest.approx([1.0, 0.0, 0.0])
    assert mixture.quantile(np.array([0.1]))[0] == pytest.approx(2.0, abs=1e-6)
