"""FAPM's inference module (``FAPMModel``): planted anomalies found where they were pasted, the score as
the largest patch score, region-local aligned k-NN on hand-made maps against brute force, ``forward`` as the
method step by step, tracing with a dynamic batch, inputs of a size it was not fitted on refused.

Real offline backbone (tf_efficientnet_lite0) on tiny 112 px inputs: stride-8 maps 14x14
(grid 7 -> 2x2 positions per region), stride-16 maps 7x7 (1 position per region).
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fapm_lib.config import FAPMConfig
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.errors import ConfigError
from fapm_lib.method.backbone import BackboneInfo, FeatureExtractor
from tests.texture_support import CONFIG, S, paste, texture


# ---- planted anomalies, real backbone ------------------------------------------------------
@pytest.mark.parametrize("top, left", [(16, 16), (48, 80), (80, 48), (40, 72), (0, 0), (96, 96)])
def test_planted_anomaly_is_found_where_it_was_pasted(texture_fapm: FAPM, texture_test_image: Tensor, top: int,
                                                      left: int) -> None:
    pred = texture_fapm.predict(paste(texture_test_image, top, left))
    assert pred.patch_scores.shape == (1, 14, 14) and pred.anomaly_map.shape == (1, S, S)
    fy, fx = divmod(int(pred.patch_scores[0].argmax()), 14)
    assert top <= 8 * fy and 8 * fy + 8 <= top + 16 and left <= 8 * fx and 8 * fx + 8 <= left + 16
    y, x = divmod(int(pred.anomaly_map[0].argmax()), S)
    assert top <= y < top + 16 and left <= x < left + 16
    assert pred.pred_score[0] > 1.5 * texture_fapm.predict(texture_test_image).pred_score[0]


def test_prediction_shapes_and_score_is_max_patch(texture_fapm: FAPM, texture_test_image: Tensor) -> None:
    pred = texture_fapm.predict(torch.cat([texture_test_image, paste(texture_test_image, 32, 32)]))
    assert pred.pred_score.shape == (2,)
    torch.testing.assert_close(pred.pred_score, pred.patch_scores.flatten(1).max(dim=1).values)
    assert pred.pred_score[1] > pred.pred_score[0]


# ---- hand-made feature maps: region-local search and aligned layer fusion --------------------
class NoBackbone(nn.Module):
    def forward(self, images: Tensor) -> list[Tensor]:
        raise AssertionError("the backbone ran")


def fake_extractor(c8: int = 4, c16: int = 6) -> FeatureExtractor:
    info = BackboneInfo("fake", (c8, c16), (8, 16), (0.5,) * 3, (0.5,) * 3, False)
    return FeatureExtractor(NoBackbone(), info)


def synthetic_maps(n: int, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(n, 4, 14, 14, generator=gen), 0.1 * torch.randn(n, 6, 7, 7, generator=gen)]


@pytest.fixture(scope="module")
def synthetic_model() -> FAPM:
    return FAPM(FAPMConfig(grid=7, coreset_ratio=1.0, k=2), extractor=fake_extractor()).fit_maps(synthetic_maps(8, 0))


@pytest.mark.parametrize("cell", [(3, 5), (0, 0), (6, 6), (1, 2), (5, 1)])
def test_one_anomalous_coarse_cell_lights_its_2x2_fine_cells(synthetic_model: FAPM, cell: tuple[int, int]) -> None:
    maps = synthetic_maps(1, seed=1)
    maps[1][0, :, cell[0], cell[1]] += 10.0
    scores = synthetic_model.predict_maps(maps).patch_scores[0]
    lit = {tuple(p) for p in (scores > 5.0).nonzero().tolist()}
    i, j = cell
    assert lit == {(2 * i, 2 * j), (2 * i, 2 * j + 1), (2 * i + 1, 2 * j), (2 * i + 1, 2 * j + 1)}


def test_one_anomalous_fine_cell_lights_only_itself(synthetic_model: FAPM) -> None:
    maps = synthetic_maps(1, seed=2)
    maps[0][0, :, 9, 4] += 10.0
    scores = synthetic_model.predict_maps(maps).patch_scores[0]
    assert (scores > 5.0).nonzero().tolist() == [[9, 4]]


@pytest.mark.parametrize("image_score, k", [("reweighted", 2), ("max", 1)])
def test_knn_equals_brute_force_per_region_and_layer(image_score: str, k: int) -> None:
    """The reweighted score needs k neighbours; the max score and the maps only the nearest."""
    config = FAPMConfig(grid=7, coreset_ratio=1.0, k=2, image_score=image_score)
    model = FAPM(config, extractor=fake_extractor()).fit_maps(synthetic_maps(8, 0))
    maps = synthetic_maps(2, seed=3)
    knn = model.model.search(maps)
    assert model.search_k == k and knn.shape == (2, 14, 14, k)
    train = synthetic_maps(8, 0)  # ratio 1: each region's bank is all its training vectors
    expected = torch.zeros(2, 14, 14, k)
    for layer, side in ((0, 2), (1, 1)):
        for y in range(14):
            for x in range(14):
                cy, cx = y * side // 2, x * side // 2  # this position on the layer's map
                ry, rx = cy // side, cx // side  # its region
                bank = train[layer][:, :, ry * side : ry * side + side, rx * side : rx * side + side]
                bank = bank.permute(0, 2, 3, 1).reshape(-1, bank.shape[1])
                query = maps[layer][:, :, cy, cx]
                expected[:, y, x] += torch.cdist(query, bank).topk(k, largest=False).values
    torch.testing.assert_close(knn, expected, atol=1e-4, rtol=1e-4)


class FixedMaps(nn.Module):
    """A "backbone" that returns the same raw maps for any input (to run predict on hand-made maps)."""

    def __init__(self, maps: list[Tensor]) -> None:
        super().__init__()
        self.maps = maps
        self.device_anchor = nn.Parameter(torch.zeros(1))  # embed reads the device from a parameter

    def forward(self, images: Tensor) -> list[Tensor]:
        return [m[: images.shape[0]] for m in self.maps]


@pytest.mark.parametrize("batch, image_score", [(1, "max"), (3, "reweighted")])
def test_predict_is_the_method_step_by_step(batch: int, image_score: str) -> None:
    """``predict`` = the module's forward = embed, split, search each region's bank, merge, align,
    fuse, map, score: composed here by hand from the library's functions, bit for bit."""
    from fapm_lib.method.regions import merge_regions, split_regions
    from fapm_lib.method.scoring import anomaly_map, fuse_layers, upsample_nearest
    from fapm_lib.method.scoring import image_score as score_of

    config = FAPMConfig(grid=7, coreset_ratio=0.3, k=2, image_score=image_score)
    model = FAPM(config, extractor=fake_extractor()).fit_maps(synthetic_maps(12, 0))
    assert any(mem.far.any() and (~mem.far).any() for mem in model.memories)  # two size groups per layer
    maps = synthetic_maps(batch, seed=5)
    maps[1][0, :, 3, 4] += 5.0  # an anomaly, so that the score is not a tie
    model._extractor = FeatureExtractor(FixedMaps(maps), model.backbone_info)
    model.model.backbone = model._extractor
    pooled = model.embed(torch.zeros(batch, 3, 112, 112))
    per_layer = [merge_regions(mem.search(split_regions(f, 7), model.search_k), 7, *f.shape[-2:])
                 for mem, f in zip(model.memories, pooled)]
    knn = fuse_layers([per_layer[0], upsample_nearest(per_layer[1], 2)])
    assert torch.equal(model.model.search(pooled), knn)
    pred = model.predict(torch.zeros(batch, 3, 112, 112))
    assert torch.equal(pred.patch_scores, knn[..., 0])
    assert torch.equal(pred.anomaly_map, anomaly_map(knn[..., 0], config.input_size, config.blur_sigma))
    assert torch.equal(pred.pred_score, score_of(knn, image_score))


@pytest.mark.parametrize("image_score", ["max", "reweighted"])
def test_the_module_traces_as_is_with_a_dynamic_batch(texture_fapm: FAPM, texture_test_image: Tensor,
                                                       image_score: str) -> None:
    """What the export relies on: torch.jit.trace of the fitted module at batch 2 gives the same
    predictions as ``predict`` at batch 1 and 3."""
    import warnings

    model = FAPM(CONFIG.replace(image_score=image_score), extractor=texture_fapm.extractor).fit_maps(
        [m.clone() for m in texture_fapm.extract(texture(10, seed=0), progress=False)])
    example = torch.cat([texture_test_image, paste(texture_test_image, 16, 16)])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values
        traced = torch.jit.trace(model.model, example)
    three = torch.cat([texture_test_image, paste(texture_test_image, 16, 16), texture_test_image])
    for batch in (paste(texture_test_image, 48, 80), three):
        with torch.no_grad():
            got = traced(batch)
        expected = model.predict(batch)
        for name in ("anomaly_map", "pred_score", "patch_scores"):
            torch.testing.assert_close(getattr(got, name) if hasattr(got, name) else got[expected._fields.index(name)],
                                       getattr(expected, name), rtol=1e-5, atol=1e-5)


# ---- inputs it was not fitted on ---------------------------------------------------------------
def test_other_input_size_is_refused(texture_fapm: FAPM) -> None:
    with pytest.raises(ConfigError, match="fitted on"):
        texture_fapm.model.search([torch.zeros(1, 40, 28, 28), torch.zeros(1, 112, 14, 14)])


def test_predict_refuses_another_input_size(texture_fapm: FAPM) -> None:
    with pytest.raises(ConfigError, match="fitted on"):
        texture_fapm.predict(torch.zeros(1, 3, 2 * S, 2 * S))
