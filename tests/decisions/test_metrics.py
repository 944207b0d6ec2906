"""Metrics on small hand-checked cases and against a brute-force AUPRO reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fapm_lib.decisions.metrics import compute_metrics, image_auroc, pixel_aupro, pixel_auroc, pixel_f1_max
from fapm_lib.errors import FAPMError


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------- AUROC


def test_image_auroc_perfect_inverted_and_ties() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert image_auroc(_t([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert image_auroc(_t([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert image_auroc(_t([0.5, 0.5, 0.5, 0.5]), labels) == 0.5


def test_image_auroc_by_hand() -> None:
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered correctly
    assert image_auroc(_t([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    # positives {0.5, 0.9, 0.7} vs negatives {0.1, 0.5, 0.3}: 8 wins + 1 tie (0.5) of 9 pairs
    scores = _t([0.1, 0.5, 0.5, 0.9, 0.3, 0.7])
    assert image_auroc(scores, torch.tensor([0, 0, 1, 1, 0, 1])) == pytest.approx(8.5 / 9)


def test_auroc_keeps_order_of_large_scores() -> None:
    # torchmetrics would squash these through a sigmoid into ties; the rescale keeps them apart
    assert image_auroc(_t([100.0, 101.0, 102.0, 103.0]), torch.tensor([0, 0, 1, 1])) == 1.0
    # positives -3e4, 5e4 vs negatives -2e4, 6e4: only 5e4 > -2e4 of the 4 pairs
    assert image_auroc(_t([-3e4, -2e4, 5e4, 6e4]), torch.tensor([1, 0, 1, 0])) == pytest.approx(
        0.25
    )


def test_pixel_auroc_by_hand() -> None:
    maps = _t([0.1, 0.4, 0.35, 0.8]).reshape(1, 2, 2)
    masks = torch.tensor([[[False, False], [True, True]]])
    assert pixel_auroc(maps, masks) == pytest.approx(0.75)
    assert pixel_auroc(masks.float(), masks) == 1.0


def test_auroc_single_class_raises() -> None:
    with pytest.raises(FAPMError, match="both"):
        image_auroc(_t([0.1, 0.2]), torch.tensor([1, 1]))


# ---------------------------------------------------------------- F1-max


def test_pixel_f1_max_by_hand() -> None:
    # descending scores with targets 1,0,1,1,0,0: taking the top 4 gives P=3/4, R=1 -> F1=6/7,
    # the best of the six cut-offs (1/2, 2/5, 2/3, 6/7, 3/4, 2/3)
    maps = _t([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]).reshape(1, 2, 3)
    masks = torch.tensor([1, 0, 1, 1, 0, 0]).reshape(1, 2, 3)
    assert pixel_f1_max(maps, masks) == pytest.approx(6 / 7, abs=1e-6)


def test_pixel_f1_max_perfect() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 2:5] = True
    assert pixel_f1_max(masks.float() * 7 + 3, masks) == pytest.approx(1.0)


# ---------------------------------------------------------------- AUPRO


def _two_region_case() -> tuple[torch.Tensor, torch.Tensor]:
    """One image: a 4x4 region scored 1 (found), a 1x2 region scored 0 (missed)."""
    masks = torch.zeros(1, 12, 12, dtype=torch.bool)
    masks[0, 1:5, 1:5] = True
    masks[0, 9, 8:10] = True
    maps = 0.2 + 0.6 * torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(0))
    maps[0, 1:5, 1:5] = 1.0
    maps[0, 9, 8:10] = 0.0
    return maps, masks


def test_aupro_perfect_and_inverted() -> None:
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:12, 10:15] = True
    masks[1, 0, 0] = True
    assert pixel_aupro(masks.float(), masks) == pytest.approx(1.0)
    assert pixel_aupro(1.0 - masks.float(), masks) == pytest.approx(0.0, abs=1e-6)


def test_aupro_two_regions_one_found() -> None:
    # PRO = (1 + 0) / 2 at every FPR in [0, 0.3], although 16 of 18 anomalous pixels are found
    maps, masks = _two_region_case()
    assert pixel_aupro(maps, masks) == pytest.approx(0.5)
    assert pixel_aupro(maps, masks, fpr_limit=0.05) == pytest.approx(0.5)


def test_aupro_regions_are_eight_connected() -> None:
    # two diagonal pixels form ONE region: finding one of them gives PRO 0.5, not 1 of 2 regions
    masks = torch.zeros(1, 6, 6, dtype=torch.bool)
    masks[0, 2, 2] = masks[0, 3, 3] = True
    maps = torch.full((1, 6, 6), 0.5)
    maps[0, 2, 2], maps[0, 3, 3] = 1.0, 0.0
    assert pixel_aupro(maps, masks) == pytest.approx(0.5)


def _brute_force_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Reference: every distinct score as a threshold, explicit loop over regions."""
    regions = []
    for image_index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(image_index, labelled == k) for k in range(1, count + 1)]
    normal = maps[~masks]
    thresholds = np.concatenate([[np.inf], np.unique(maps)[::-1]])
    fpr = np.array([(normal >= t).mean() for t in thresholds])
    pro = np.array([np.mean([(maps[i][r] >= t).mean() for i, r in regions]) for t in thresholds])
    keep = fpr <= fpr_limit
    x = np.append(fpr[keep], fpr_limit)
    y = np.append(pro[keep], np.interp(fpr_limit, fpr, pro))
    return float(np.trapezoid(y, x) / fpr_limit)


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blobby masks (several regions of varied size) and noisy maps correlated with them."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(4, 24, 24)), sigma=(0, 2, 2))
    masks = smooth > np.quantile(smooth, 0.85)
    maps = masks * rng.uniform(0.0, 1.5) + rng.normal(scale=0.7, size=masks.shape)
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05])
def test_aupro_matches_brute_force(seed: int, fpr_limit: float) -> None:
    maps, masks = _random_case(seed)
    expected = _brute_force_aupro(maps, masks, fpr_limit)
    got = pixel_aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit=fpr_limit)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(expected, abs=1e-6)  # same exact curve, only rounding differs


def test_aupro_invariant_to_score_scale() -> None:
    maps, masks = _random_case(3)
    maps_t, masks_t = torch.from_numpy(maps), torch.from_numpy(masks)
    assert pixel_aupro(maps_t * 50 + 1000, masks_t) == pytest.approx(pixel_aupro(maps_t, masks_t))


# ---------------------------------------------------------------- validation and compute_metrics


@pytest.mark.parametrize("metric", [pixel_auroc, pixel_f1_max, pixel_aupro])
def test_pixel_metrics_reject_mismatched_shapes(metric) -> None:
    with pytest.raises(FAPMError, match="N,H,W"):
        metric(torch.rand(2, 8, 8), torch.zeros(2, 8, 7, dtype=torch.bool))
    with pytest.raises(FAPMError, match="N,H,W"):
        metric(torch.rand(8, 8), torch.zeros(8, 8, dtype=torch.bool))


def test_image_auroc_rejects_mismatched_shapes_and_bad_labels() -> None:
    with pytest.raises(FAPMError, match=r"\[N\]"):
        image_auroc(torch.rand(4), torch.tensor([0, 1, 0]))
    with pytest.raises(FAPMError, match="0 and 1"):
        image_auroc(torch.rand(3), torch.tensor([0, 1, 2]))
    with pytest.raises(FAPMError, match="NaN"):
        image_auroc(_t([0.1, float("nan")]), torch.tensor([0, 1]))


def test_compute_metrics_keys_and_values() -> None:
    maps, masks = _two_region_case()
    maps, masks = (
        torch.cat([maps, torch.rand(1, 12, 12)]),
        torch.cat([masks, torch.zeros_like(masks)]),
    )
    scores, labels = _t([0.9, 0.1]), torch.tensor([1, 0])
    result = compute_metrics(scores, labels, maps, masks)
    assert list(result) == ["image_auroc", "pixel_auroc", "pixel_f1_max", "pixel_aupro"]
    assert all(isinstance(value, float) and 0.0 <= value <= 1.0 for value in result.values())
    assert result["image_auroc"] == 1.0
    assert result["pixel_aupro"] == pytest.approx(pixel_aupro(maps, masks))


def test_compute_metrics_none_cases() -> None:
    maps, labels = torch.rand(2, 8, 8), torch.tensor([0, 1])
    no_masks = compute_metrics(_t([0.2, 0.7]), labels, maps, None)
    assert no_masks["image_auroc"] == 1.0
    assert no_masks["pixel_auroc"] is no_masks["pixel_f1_max"] is no_masks["pixel_aupro"] is None
    empty = compute_metrics(_t([0.2, 0.7]), torch.tensor([0, 0]), maps, torch.zeros(2, 8, 8))
    assert empty == dict.fromkeys(["image_auroc", "pixel_auroc", "pixel_f1_max", "pixel_aupro"])


# ---------------------------------------------------------------- large test sets: a stated downscale
def test_the_pixel_metrics_downscale_is_the_smallest_whole_factor_that_fits() -> None:
    from fapm_lib.decisions.metrics import pixel_metrics_downscale

    assert pixel_metrics_downscale((10, 100, 100), max_pixels=100_000) == 1  # exactly at the bound
    assert pixel_metrics_downscale((10, 100, 101), max_pixels=100_000) == 2
    assert pixel_metrics_downscale((10, 100, 100), max_pixels=25_000) == 2
    assert pixel_metrics_downscale((10, 100, 100), max_pixels=24_999) == 3
    assert pixel_metrics_downscale((160, 512, 512)) == 1  # MVTec AD at 512: its own geometry


def test_a_downscale_averages_maps_and_keeps_every_defect_region() -> None:
    from fapm_lib.decisions.metrics import downscale_maps_and_masks

    maps = torch.arange(3 * 5 * 7, dtype=torch.float32).reshape(3, 5, 7)
    masks = torch.zeros(3, 5, 7, dtype=torch.bool)
    masks[1, 4, 6] = True  # one defect pixel in the last (partial) block
    small_maps, small_masks = downscale_maps_and_masks(maps, masks, 2, chunk=2)
    assert small_maps.shape == small_masks.shape == (3, 3, 4) and small_masks.dtype == torch.bool
    assert small_maps[0, 0, 0] == maps[0, :2, :2].mean() and small_maps[2, 2, 3] == maps[2, 4, 6]
    assert small_masks.sum() == 1 and small_masks[1, 2, 3]
    assert downscale_maps_and_masks(maps, masks, 1) == (maps, masks)
    with pytest.raises(FAPMError, match="only 0 and 1"):
        downscale_maps_and_masks(maps, masks.float() * 2, 2)


def test_compute_metrics_reads_a_large_set_downscaled_and_a_small_one_whole() -> None:
    from fapm_lib.decisions.metrics import downscale_maps_and_masks

    g = torch.Generator().manual_seed(2)
    maps, masks = torch.rand(4, 16, 16, generator=g), torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[2:, 5:9, 3:8] = True
    maps[2:, 5:9, 3:8] += 0.4 * torch.rand(2, 4, 5, generator=g)
    scores, labels = maps.amax((1, 2)), torch.tensor([0, 0, 1, 1])
    whole = compute_metrics(scores, labels, maps, masks)
    assert whole == compute_metrics(scores, labels, maps, masks, max_pixels=4 * 16 * 16)
    reduced = compute_metrics(scores, labels, maps, masks, max_pixels=4 * 8 * 8)
    by_hand = compute_metrics(scores, labels, *downscale_maps_and_masks(maps, masks, 2))
    assert reduced == by_hand and reduced["pixel_auroc"] != whole["pixel_auroc"]
    assert reduced["image_auroc"] == whole["image_auroc"]  # image scores are never reduced
