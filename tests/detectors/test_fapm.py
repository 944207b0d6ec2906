"""FAPM and PatchCore models: planted anomalies, region-local aligned k-NN, refits without the
backbone, determinism, save/load.

Real offline backbone (tf_efficientnet_lite0) on tiny 112 px inputs: stride-8 maps 14x14
(grid 7 -> 2x2 positions per region), stride-16 maps 7x7 (1 position per region).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from fapm_lib.config import FAPMConfig
from fapm_lib.data.mvtec import MVTecDataset
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.detectors.patchcore import PatchCore
from fapm_lib.errors import ConfigError
from fapm_lib.method.backbone import BackboneInfo, FeatureExtractor, create_feature_extractor
from fapm_lib.method.patchcore_model import concat_layers

S = 112
CONFIG = FAPMConfig(resize=S, crop_size=S, grid=7, coreset_ratio=0.5)


def texture(n: int, seed: int) -> Tensor:
    """``[n, 3, S, S]``: one smooth periodic texture plus small per-image noise."""
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    base = torch.stack([torch.sin(xx / 5.0) + torch.cos(yy / 7.0), torch.sin((xx + yy) / 9.0),
                        torch.cos(xx / 11.0 - yy / 6.0)]) * 0.5
    return base[None] + 0.05 * torch.randn(n, 3, S, S, generator=torch.Generator().manual_seed(seed))


def paste(images: Tensor, top: int, left: int, size: int = 16) -> Tensor:
    """A copy of ``images`` with a high-contrast checkerboard pasted at (top, left)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = torch.where((yy // 4 + xx // 4) % 2 == 0, 1.5, -1.5)
    out = images.clone()
    out[:, :, top : top + size, left : left + size] = board * torch.tensor([1.0, -1.0, 1.0])[:, None, None]
    return out


def assert_same_memories(a: FAPM, b: FAPM) -> None:
    assert len(a.memories) == len(b.memories)
    for ma, mb in zip(a.memories, b.memories):
        assert torch.equal(ma.radii, mb.radii) and torch.equal(ma.far, mb.far)
        assert len(ma.groups) == len(mb.groups)
        for ga, gb in zip(ma.groups, mb.groups):
            assert torch.equal(ga.regions, gb.regions) and torch.equal(ga.bank, gb.bank)


def assert_same_prediction(a, b) -> None:
    for name in ("anomaly_map", "pred_score", "patch_scores"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return create_feature_extractor("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def train_images() -> Tensor:
    return texture(10, seed=0)


@pytest.fixture(scope="module")
def test_image() -> Tensor:
    return texture(1, seed=99)


@pytest.fixture(scope="module")
def model(extractor: FeatureExtractor, train_images: Tensor) -> FAPM:
    return FAPM(CONFIG, extractor=extractor).fit(train_images, progress=False)


# ---- planted anomalies, real backbone ------------------------------------------------------
@pytest.mark.parametrize("top, left", [(16, 16), (48, 80), (80, 48), (40, 72), (0, 0), (96, 96)])
def test_planted_anomaly_is_found_where_it_was_pasted(model: FAPM, test_image: Tensor, top: int, left: int) -> None:
    pred = model.predict(paste(test_image, top, left))
    assert pred.patch_scores.shape == (1, 14, 14) and pred.anomaly_map.shape == (1, S, S)
    fy, fx = divmod(int(pred.patch_scores[0].argmax()), 14)
    assert top <= 8 * fy and 8 * fy + 8 <= top + 16 and left <= 8 * fx and 8 * fx + 8 <= left + 16
    y, x = divmod(int(pred.anomaly_map[0].argmax()), S)
    assert top <= y < top + 16 and left <= x < left + 16
    assert pred.pred_score[0] > 1.5 * model.predict(test_image).pred_score[0]


def test_prediction_shapes_and_score_is_max_patch(model: FAPM, test_image: Tensor) -> None:
    pred = model.predict(torch.cat([test_image, paste(test_image, 32, 32)]))
    assert pred.pred_score.shape == (2,)
    torch.testing.assert_close(pred.pred_score, pred.patch_scores.flatten(1).max(dim=1).values)
    assert pred.pred_score[1] > pred.pred_score[0]


def test_memory_sizes(model: FAPM) -> None:
    n_vectors = [10 * 4, 10 * 1]  # per region: images x positions
    for mem, n in zip(model.memories, n_vectors):
        assert mem.n_regions == 49
        sizes = mem.bank_sizes()
        assert torch.all(sizes[~mem.far] == -(-n // 2)) and torch.all(sizes[mem.far] == n)
    assert model.memory_size()["vectors"] == sum(m.n_vectors() for m in model.memories)
    assert model.memory_size()["megabytes"] > 0


# ---- save / load, determinism, refits ------------------------------------------------------
def test_save_load_round_trip(model: FAPM, extractor: FeatureExtractor, test_image: Tensor, tmp_path: Path) -> None:
    path = model.save(tmp_path / "model.safetensors")
    loaded = FAPM.load(path, extractor=extractor)
    assert loaded.config == model.config and loaded.feature_sizes == model.feature_sizes
    assert_same_memories(model, loaded)
    image = paste(test_image, 48, 80)
    assert_same_prediction(model.predict(image), loaded.predict(image))


def test_same_seed_fits_are_bit_identical(model: FAPM, extractor: FeatureExtractor, train_images: Tensor,
                                          test_image: Tensor) -> None:
    again = FAPM(CONFIG, extractor=extractor).fit(train_images, progress=False)
    assert_same_memories(model, again)
    image = paste(test_image, 16, 16)
    assert_same_prediction(model.predict(image), again.predict(image))


def test_predict_before_fit(extractor: FeatureExtractor, test_image: Tensor) -> None:
    with pytest.raises(ConfigError, match="not fitted"):
        FAPM(CONFIG, extractor=extractor).predict(test_image)


def test_fit_maps_from_cache_equals_fit(model: FAPM, extractor: FeatureExtractor, train_images: Tensor,
                                        test_image: Tensor) -> None:
    maps = model.extract(train_images, progress=False)
    assert [tuple(m.shape) for m in maps] == [(10, 40, 14, 14), (10, 112, 7, 7)]
    refit = FAPM(CONFIG, extractor=extractor).fit_maps(maps)
    assert_same_memories(model, refit)
    test_maps = model.extract(test_image, progress=False)
    assert_same_prediction(model.predict(test_image), refit.predict_maps(test_maps))


def test_refit_with_other_settings_skips_the_backbone(model: FAPM, extractor: FeatureExtractor,
                                                      train_images: Tensor, test_image: Tensor,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    maps = model.extract(train_images, progress=False)
    test_maps = model.extract(paste(test_image, 48, 80), progress=False)

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran")

    monkeypatch.setattr(extractor, "forward", no_backbone)
    for changes in ({"grid": 1}, {"coreset_ratio": 0.2, "k": 1}, {"sampling": "fixed", "k": 2}):
        refit = FAPM(CONFIG.replace(**changes), extractor=extractor).fit_maps(maps)
        pred = refit.predict_maps(test_maps)
        fy, fx = divmod(int(pred.patch_scores[0].argmax()), 14)
        assert (6, 10) <= (fy, fx) <= (7, 11) and fx in (10, 11)
    assert len(FAPM(CONFIG.replace(grid=1), extractor=extractor).fit_maps(maps).memories[0].radii) == 1


def test_grid_must_divide_both_maps(extractor: FeatureExtractor, model: FAPM, train_images: Tensor) -> None:
    maps = model.extract(train_images[:2], progress=False)
    with pytest.raises(ConfigError, match="grid=2"):
        FAPM(CONFIG.replace(grid=2), extractor=extractor).fit_maps(maps)  # 7x7 stride-16 map


def test_k_above_smallest_bank_via_fit_maps(extractor: FeatureExtractor, model: FAPM, train_images: Tensor) -> None:
    maps = model.extract(train_images[:2], progress=False)
    with pytest.raises(ConfigError, match=r"k=4\b"):
        FAPM(CONFIG.replace(coreset_ratio=0.1, k=4, image_score="reweighted"), extractor=extractor).fit_maps(maps)
    # the max score reads the nearest distance only: the same small banks are enough for it
    FAPM(CONFIG.replace(coreset_ratio=0.1, k=4, image_score="max"), extractor=extractor).fit_maps(maps)


def test_other_input_size_is_refused(model: FAPM) -> None:
    with pytest.raises(ConfigError, match="fitted on"):
        model.model.search([torch.zeros(1, 40, 28, 28), torch.zeros(1, 112, 14, 14)])


def test_fit_on_a_dataset(tiny_mvtec: Path, extractor: FeatureExtractor) -> None:
    config = FAPMConfig(resize=64, crop_size=64, grid=2, coreset_ratio=0.5)
    fapm = FAPM(config, extractor=extractor)
    train = MVTecDataset(tiny_mvtec, "widget", "train", fapm.transform)
    fapm.fit(train, progress=False)
    assert fapm.feature_sizes == [(8, 8), (4, 4)]
    for mem, n in zip(fapm.memories, (3 * 16, 3 * 4)):  # per region: 3 images x positions
        assert set(mem.bank_sizes().tolist()) <= {n // 2, n}
    test = MVTecDataset(tiny_mvtec, "widget", "test", fapm.transform)
    pred = fapm.predict(torch.stack([test[i]["image"] for i in range(len(test))]))
    assert pred.anomaly_map.shape == (4, 64, 64) and torch.isfinite(pred.pred_score).all()


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
def test_the_module_traces_as_is_with_a_dynamic_batch(model: FAPM, test_image: Tensor, image_score: str) -> None:
    """What the export relies on: torch.jit.trace of the fitted module at batch 2 gives the same
    predictions as ``predict`` at batch 1 and 3."""
    import warnings

    model = FAPM(CONFIG.replace(image_score=image_score), extractor=model.extractor).fit_maps(
        [m.clone() for m in model.extract(texture(10, seed=0), progress=False)])
    example = torch.cat([test_image, paste(test_image, 16, 16)])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values
        traced = torch.jit.trace(model.model, example)
    for batch in (paste(test_image, 48, 80), torch.cat([test_image, paste(test_image, 16, 16), test_image])):
        with torch.no_grad():
            got = traced(batch)
        expected = model.predict(batch)
        for name in ("anomaly_map", "pred_score", "patch_scores"):
            torch.testing.assert_close(getattr(got, name) if hasattr(got, name) else got[expected._fields.index(name)],
                                       getattr(expected, name), rtol=1e-5, atol=1e-5)


def test_predict_refuses_another_input_size(model: FAPM) -> None:
    with pytest.raises(ConfigError, match="fitted on"):
        model.predict(torch.zeros(1, 3, 2 * S, 2 * S))


# ---- PatchCore -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patchcore(extractor: FeatureExtractor, train_images: Tensor) -> PatchCore:
    return PatchCore(CONFIG.replace(coreset_ratio=0.1), extractor=extractor).fit(train_images, progress=False)


def test_patchcore_bank_and_search(patchcore: PatchCore, model: FAPM, train_images: Tensor,
                                   test_image: Tensor) -> None:
    train_rows = concat_layers(model.extract(train_images, progress=False)).permute(0, 2, 3, 1).reshape(-1, 152)
    bank = patchcore.model.bank
    assert bank.shape == (-(-train_rows.shape[0] // 10), 152)
    assert bool((bank[:, None] == train_rows[None]).all(-1).any(-1).all())  # rows are training vectors
    maps = model.extract(paste(test_image, 48, 80), progress=False)
    knn = patchcore.model.search(maps)
    queries = concat_layers(maps).permute(0, 2, 3, 1).reshape(-1, 152)
    k = patchcore.search_k  # 1: the default max image score needs only the nearest distance
    expected = torch.cdist(queries, bank).topk(k, largest=False).values.reshape(1, 14, 14, k)
    torch.testing.assert_close(knn, expected, atol=1e-3, rtol=1e-4)


def test_patchcore_finds_planted_anomaly(patchcore: PatchCore, test_image: Tensor) -> None:
    pred = patchcore.predict(paste(test_image, 48, 80))
    fy, fx = divmod(int(pred.patch_scores[0].argmax()), 14)
    assert fy in (6, 7) and fx in (10, 11)
    assert pred.pred_score[0] > 1.5 * patchcore.predict(test_image).pred_score[0]


def test_patchcore_save_load(patchcore: PatchCore, extractor: FeatureExtractor, test_image: Tensor,
                             tmp_path: Path) -> None:
    loaded = PatchCore.load(patchcore.save(tmp_path / "pc.safetensors"), extractor=extractor)
    assert torch.equal(loaded.model.bank, patchcore.model.bank) and loaded.config == patchcore.config
    assert_same_prediction(patchcore.predict(test_image), loaded.predict(test_image))
    assert loaded.memory_size() == patchcore.memory_size()
