"""The whole image at its own resolution, by default: a small defect at each end and in each
corner of a long (non-square) part is found, through the whole image and through tiles; the
tiles leave no seam; a gray set stays one channel; other framings are refused with one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm_lib import FAPM, FAPMConfig, MVTecDataset
from fapm_lib.data.synthetic import generate_category
from fapm_lib.errors import DataError

SIZE = 128  # the rail is 2 x 6 sizes: 256 x 768 pixels
N_TRAIN = 20


@pytest.fixture(scope="module")
def rail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rail")
    generate_category(root, "rail", seed=3, size=SIZE, n_train=N_TRAIN, n_test_good=4, n_per_defect=1)
    return root


@pytest.fixture(scope="module")
def fitted(rail: Path) -> dict[str, FAPM]:
    """The default model (the 256 x 768 canvas in two tiles of 512), one that takes it in one pass
    and one whose backbone runs in 256-pixel tiles."""
    models = {}
    for name, config in (("default", FAPMConfig()), ("whole", FAPMConfig(tile=768)),
                         ("tiles", FAPMConfig(tile=256, tile_overlap=64))):
        model = FAPM(config)
        model.fit(MVTecDataset(rail, "rail", "train", model.transform), progress=False)
        models[name] = model
    return models


def _part_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """The part's bounding box (left, top, right, bottom): the bright pixels on the dark belt."""
    bright = image.mean(axis=-1) > 80
    ys, xs = np.nonzero(bright)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _plant(image: np.ndarray, centre: tuple[int, int], radius: int = 6) -> np.ndarray:
    """A dark pit with a bright rim at ``centre`` (x, y): about 0.06 % of a 256 x 768 image."""
    out = image.copy()
    y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    d = np.hypot(x - centre[0], y - centre[1])
    out[d <= radius - 1.5] = (out[d <= radius - 1.5] * 0.3).astype(np.uint8)
    rim = (d > radius - 1.5) & (d <= radius)
    out[rim] = np.clip(out[rim].astype(int) + 90, 0, 255).astype(np.uint8)
    return out


def _places(box: tuple[int, int, int, int]) -> dict[str, tuple[int, int]]:
    left, top, right, bottom = box
    middle = (top + bottom) // 2
    return {"left end": (left + 9, middle + 40), "right end": (right - 9, middle - 40),
            "top-left corner": (left + 28, top + 10), "top-right corner": (right - 28, top + 10),
            "bottom-left corner": (left + 28, bottom - 10), "bottom-right corner": (right - 28, bottom - 10)}


@pytest.mark.parametrize("name", ["default", "whole", "tiles"])
def test_a_small_defect_at_each_end_and_corner_is_found(fitted: dict[str, FAPM], rail: Path, name: str,
                                                        tmp_path: Path) -> None:
    model = fitted[name]
    good = np.asarray(Image.open(rail / "rail" / "test" / "good" / "000.png").convert("RGB"))
    assert good.shape == (2 * SIZE, 6 * SIZE, 3) and model.canvas == (2 * SIZE, 6 * SIZE)
    assert model.predict_image(good).decision == "OK"
    for place, (x, y) in _places(_part_box(good)).items():
        path = tmp_path / f"{place}.png"
        Image.fromarray(_plant(good, (x, y))).save(path)
        result = model.predict_image(path)
        assert result.anomaly_map.shape == good.shape[:2]  # the image's own pixels, no crop
        py, px = np.unravel_index(int(np.argmax(result.anomaly_map)), result.anomaly_map.shape)
        assert result.decision == "NG", f"{name}: {place} not flagged (score {result.score:.3f})"
        assert np.hypot(px - x, py - y) <= 12, f"{name}: {place} at {(x, y)}, map peak at {(px, py)}"


def test_tiles_leave_no_seam(fitted: dict[str, FAPM], rail: Path) -> None:
    """The tiled model's map of a good image follows the whole-image model's: no step where the
    256-pixel tiles meet (the tiles' features are blended over their overlap)."""
    whole, tiles = fitted["whole"], fitted["tiles"]
    assert tiles.model.tiles.count > 1 and whole.model.tiles.single
    path = rail / "rail" / "test" / "good" / "001.png"
    a, b = whole.predict_image(path).anomaly_map, tiles.predict_image(path).anomaly_map
    steps = np.abs(np.diff(b, axis=1)).mean(axis=0)  # [W - 1]: how much the map changes column to column
    width = tiles.model.tiles.size[1]
    seams = [x - 1 for x in tiles.model.tiles.xs[1:]] + [x + width - 1 for x in tiles.model.tiles.xs[:-1]]
    assert max(steps[s] for s in seams) <= 3 * np.median(steps) + 1e-6
    assert float(np.abs(a - b).mean()) <= 0.15 * float(a.mean())


def test_a_gray_set_stays_one_channel_to_the_network(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    generate_category(root, "rail", seed=1, size=64, n_train=6, n_test_good=1, n_per_defect=1)
    for png in (root / "rail").rglob("*.png"):
        if "ground_truth" not in png.parts:
            Image.open(png).convert("L").save(png)
    model = FAPM(FAPMConfig(calibration_folds=0))
    train = MVTecDataset(root, "rail", "train", model.transform)
    assert train[0]["image"].shape == (1, 128, 384)
    model.fit(train, progress=False)
    assert model.channels == 1 and model.transform.channels == 1
    gray = train[0]["image"][None]
    rgb = gray.repeat(1, 3, 1, 1)  # lite0's mean and std are the same for every channel
    torch.testing.assert_close(model.predict(gray).anomaly_map, model.predict(rgb).anomaly_map, rtol=0, atol=0)


def test_another_framing_is_refused_with_one_line(fitted: dict[str, FAPM], tmp_path: Path) -> None:
    model = fitted["whole"]
    square = tmp_path / "square.png"
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(square)
    with pytest.raises(DataError) as info:
        model.predict_image(square)
    assert str(square) in str(info.value) and "aspect ratio" in str(info.value) and "\n" not in str(info.value)
    larger = tmp_path / "larger.png"  # the same framing at twice the resolution: resized to the canvas
    Image.fromarray(np.zeros((4 * SIZE, 12 * SIZE, 3), np.uint8)).save(larger)
    assert model.predict_image(larger).anomaly_map.shape == (4 * SIZE, 12 * SIZE)


def test_a_set_of_mixed_framings_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "mixed" / "part" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((100, 300, 3), np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(folder / "odd.png")
    model = FAPM(FAPMConfig())
    with pytest.raises(DataError, match="odd.png: 200x200 has another aspect ratio"):
        model.fit(MVTecDataset(tmp_path / "mixed", "part", "train", model.transform), progress=False)


def test_a_long_tiled_part_exports_with_parity(fitted: dict[str, FAPM], rail: Path, tmp_path: Path) -> None:
    """The graph takes the non-square canvas and runs the tiles itself; the standalone runner's
    pixels (the sidecar's native rule) give the library's maps and scores."""
    pytest.importorskip("onnxruntime")
    from fapm_lib.deploy.exported import ExportedModel
    from fapm_lib.deploy.graph_export import export_model, preprocessing
    from fapm_lib.deploy.run_fapm import load_rgb, prepare

    model = fitted["tiles"]
    test = MVTecDataset(rail, "rail", "test", model.transform)
    pre = preprocessing(model)
    assert pre["mode"] == "native" and pre["canvas"] == [2 * SIZE, 6 * SIZE]
    pixels = np.stack([prepare(load_rgb(s.path, None, pre["channels"]), pre) for s in test.samples[:3]])
    exported = ExportedModel(export_model(model, tmp_path / "e").parent)
    got = exported.predict_uint8(pixels)
    ref = model.predict(torch.stack([test[i]["image"] for i in range(3)]))
    assert got.anomaly_map.shape == ref.anomaly_map.shape == (3, 2 * SIZE, 6 * SIZE)
    scale = float(ref.anomaly_map.abs().max())
    assert float((got.anomaly_map - ref.anomaly_map).abs().max()) / scale < 1e-4
    assert torch.allclose(got.pred_score, ref.pred_score, rtol=1e-4)
