"""The FAPM detector: memory sizes, save/load, determinism, refits from cached maps without the backbone,
settings refused at fit time, a fit on a dataset, and the calibration fitted beside the memory.

Real offline backbone (tf_efficientnet_lite0) on tiny 112 px inputs: stride-8 maps 14x14
(grid 7 -> 2x2 positions per region), stride-16 maps 7x7 (1 position per region).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from fapm_lib.config import FAPMConfig
from fapm_lib.data.mvtec import MVTecDataset
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.errors import ConfigError
from fapm_lib.method.backbone import FeatureExtractor
from tests.parts_support import SIZE, TINY
from tests.texture_support import CONFIG, assert_same_memories, assert_same_prediction, paste


def test_memory_sizes(texture_fapm: FAPM) -> None:
    n_vectors = [10 * 4, 10 * 1]  # per region: images x positions
    for mem, n in zip(texture_fapm.memories, n_vectors):
        assert mem.n_regions == 49
        sizes = mem.bank_sizes()
        assert torch.all(sizes[~mem.far] == -(-n // 2)) and torch.all(sizes[mem.far] == n)
    assert texture_fapm.memory_size()["vectors"] == sum(m.n_vectors() for m in texture_fapm.memories)
    assert texture_fapm.memory_size()["megabytes"] > 0


# ---- save / load, determinism, refits ------------------------------------------------------
def test_save_load_round_trip(texture_fapm: FAPM, lite0: FeatureExtractor, texture_test_image: Tensor,
                              tmp_path: Path) -> None:
    path = texture_fapm.save(tmp_path / "model.safetensors")
    loaded = FAPM.load(path, extractor=lite0)
    assert loaded.config == texture_fapm.config and loaded.feature_sizes == texture_fapm.feature_sizes
    assert_same_memories(texture_fapm, loaded)
    image = paste(texture_test_image, 48, 80)
    assert_same_prediction(texture_fapm.predict(image), loaded.predict(image))


def test_same_seed_fits_are_bit_identical(texture_fapm: FAPM, lite0: FeatureExtractor, texture_train_images: Tensor,
                                          texture_test_image: Tensor) -> None:
    again = FAPM(CONFIG, extractor=lite0).fit(texture_train_images, progress=False)
    assert_same_memories(texture_fapm, again)
    image = paste(texture_test_image, 16, 16)
    assert_same_prediction(texture_fapm.predict(image), again.predict(image))


def test_predict_before_fit(lite0: FeatureExtractor, texture_test_image: Tensor) -> None:
    with pytest.raises(ConfigError, match="not fitted"):
        FAPM(CONFIG, extractor=lite0).predict(texture_test_image)


def test_fit_maps_from_cache_equals_fit(texture_fapm: FAPM, lite0: FeatureExtractor, texture_train_images: Tensor,
                                        texture_test_image: Tensor) -> None:
    maps = texture_fapm.extract(texture_train_images, progress=False)
    assert [tuple(m.shape) for m in maps] == [(10, 40, 14, 14), (10, 112, 7, 7)]
    refit = FAPM(CONFIG, extractor=lite0).fit_maps(maps)
    assert_same_memories(texture_fapm, refit)
    test_maps = texture_fapm.extract(texture_test_image, progress=False)
    assert_same_prediction(texture_fapm.predict(texture_test_image), refit.predict_maps(test_maps))


def test_refit_with_other_settings_skips_the_backbone(texture_fapm: FAPM, lite0: FeatureExtractor,
                                                      texture_train_images: Tensor, texture_test_image: Tensor,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    maps = texture_fapm.extract(texture_train_images, progress=False)
    test_maps = texture_fapm.extract(paste(texture_test_image, 48, 80), progress=False)

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran")

    monkeypatch.setattr(lite0, "forward", no_backbone)
    for changes in ({"grid": 1}, {"coreset_ratio": 0.2, "k": 1}, {"sampling": "fixed", "k": 2}):
        refit = FAPM(CONFIG.replace(**changes), extractor=lite0).fit_maps(maps)
        pred = refit.predict_maps(test_maps)
        fy, fx = divmod(int(pred.patch_scores[0].argmax()), 14)
        assert (6, 10) <= (fy, fx) <= (7, 11) and fx in (10, 11)
    assert len(FAPM(CONFIG.replace(grid=1), extractor=lite0).fit_maps(maps).memories[0].radii) == 1


def test_grid_must_divide_both_maps(lite0: FeatureExtractor, texture_fapm: FAPM, texture_train_images: Tensor) -> None:
    maps = texture_fapm.extract(texture_train_images[:2], progress=False)
    with pytest.raises(ConfigError, match="grid=2"):
        FAPM(CONFIG.replace(grid=2), extractor=lite0).fit_maps(maps)  # 7x7 stride-16 map


def test_k_above_smallest_bank_via_fit_maps(lite0: FeatureExtractor, texture_fapm: FAPM,
                                            texture_train_images: Tensor) -> None:
    maps = texture_fapm.extract(texture_train_images[:2], progress=False)
    with pytest.raises(ConfigError, match=r"k=4\b"):
        FAPM(CONFIG.replace(coreset_ratio=0.1, k=4, image_score="reweighted"), extractor=lite0).fit_maps(maps)
    # the max score reads the nearest distance only: the same small banks are enough for it
    FAPM(CONFIG.replace(coreset_ratio=0.1, k=4, image_score="max"), extractor=lite0).fit_maps(maps)


def test_fit_on_a_dataset(tiny_mvtec: Path, lite0: FeatureExtractor) -> None:
    config = FAPMConfig(resize=64, crop_size=64, grid=2, coreset_ratio=0.5)
    fapm = FAPM(config, extractor=lite0)
    train = MVTecDataset(tiny_mvtec, "widget", "train", fapm.transform)
    fapm.fit(train, progress=False)
    assert fapm.feature_sizes == [(8, 8), (4, 4)]
    for mem, n in zip(fapm.memories, (3 * 16, 3 * 4)):  # per region: 3 images x positions
        assert set(mem.bank_sizes().tolist()) <= {n // 2, n}
    test = MVTecDataset(tiny_mvtec, "widget", "test", fapm.transform)
    pred = fapm.predict(torch.stack([test[i]["image"] for i in range(len(test))]))
    assert pred.anomaly_map.shape == (4, 64, 64) and torch.isfinite(pred.pred_score).all()


# ---- the calibration ------------------------------------------------------------------------
@pytest.mark.usefixtures("cached_extractors")
def test_final_memory_is_the_same_with_and_without_calibration() -> None:
    images = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    calibrated = FAPM(TINY).fit(images, progress=False)
    plain = FAPM(TINY.replace(calibration_folds=0)).fit(images, progress=False)
    assert plain.calibration is None and calibrated.calibration is not None
    for a, b in zip(calibrated.memories, plain.memories):
        assert all(torch.equal(g.bank, h.bank) and torch.equal(g.regions, h.regions)
                   for g, h in zip(a.groups, b.groups))
    summary = calibrated.calibration.summary
    assert summary["folds"] == 5 and summary["n_images"] == 8 and len(summary["image"]["values"]) == 8
    for part in ("image", "pixel"):
        assert {"n", "mean", "std", "max", "quantiles"} <= set(summary[part])
