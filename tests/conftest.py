"""Fixtures that more than one test package uses: tiny datasets written on the fly (no binaries in git),
fitted models and exports built once per session (tests treat them as read-only: outputs go to their own
``tmp_path``), the shared backbone, and the check after every test that the main thread's alternate
signal stack is still mapped. Plain helpers live in tests/helpers.py and tests/*_support.py; fixtures
used by one package only live in that package's conftest.py."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm_lib.cli import main as cli
from fapm_lib.config import FAPMConfig
from fapm_lib.data.mvtec import MVTecDataset
from fapm_lib.data.synthetic import generate_category
from fapm_lib.decisions.calibration import Calibration
from fapm_lib.deploy.run_fapm import load_rgb, resize_crop
from fapm_lib.detectors import base
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.detectors.model_file import MODEL_FILE
from fapm_lib.detectors.patchcore import PatchCore
from fapm_lib.method.backbone import create_feature_extractor
from fapm_lib.system import timing
from tests import export_support, parts_support, texture_support
from tests.helpers import build_mvtec_tree, save_image, save_mask
from tests.signal_stack_support import alt_stack_is_valid, install_fresh_alt_stack
from tests.timing_support import FakeClock


# ---- the main thread's alternate signal stack -----------------------------------------------------
# OpenVINO's CPU plugin can leave it unmapped (tests/signal_stack_support.py); the next signal then kills
# pytest with SIGSEGV and no traceback, many tests later. After every test: if the stack is gone, install a
# fresh one and fail the test that left it.
@pytest.fixture(autouse=True)
def _alt_signal_stack_stays_mapped():
    yield
    if not alt_stack_is_valid():
        install_fresh_alt_stack()
        pytest.fail("this test left the main thread's alternate signal stack unmapped (OpenVINO CPU plugins "
                    "released out of order?); a fresh one is installed", pytrace=False)


# ---- tiny MVTec AD trees and image files --------------------------------------------------------
@pytest.fixture
def make_mvtec(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_mvtec(root=None, **kwargs of build_mvtec_tree)``; root defaults to tmp_path/mvtec."""
    def make(root: Path | None = None, **kwargs) -> Path:
        return build_mvtec_tree(root or tmp_path / "mvtec", **kwargs)

    return make


@pytest.fixture
def tiny_mvtec(make_mvtec: Callable[..., Path]) -> Path:
    """Root of category 'widget': 3 train/good, test/good 2, test/crack 2 with masks, 48x40 RGB PNGs."""
    return make_mvtec()


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    """``save_image(path, size=(48, 40), mode='RGB', seed=0)`` for tests."""
    return save_image


@pytest.fixture
def mask_writer() -> Callable[..., Path]:
    """``save_mask(path, size, box=None, mode='L')`` for tests."""
    return save_mask


# ---- backbones ------------------------------------------------------------------------------------
_EXTRACTORS: dict[tuple, object] = {}


@pytest.fixture
def cached_extractors(monkeypatch: pytest.MonkeyPatch) -> dict[tuple, object]:
    """Detectors (and the command) build each backbone once per session: same weights (random ones come
    from the seed). Opt in with ``pytestmark = pytest.mark.usefixtures("cached_extractors")``; the cache
    is returned (``.clear()`` makes the next detector build its own)."""

    def cached(name: str, pretrained: bool = True, device="cpu"):
        key = (name, pretrained, str(device), torch.random.initial_seed() if not pretrained else None)
        if key not in _EXTRACTORS:
            _EXTRACTORS[key] = create_feature_extractor(name, pretrained, device)
        return _EXTRACTORS[key]

    monkeypatch.setattr(base, "create_feature_extractor", cached)
    return _EXTRACTORS


@pytest.fixture(scope="session")
def lite0():
    """The offline pretrained ``tf_efficientnet_lite0`` extractor, built once (frozen; a test that patches
    it undoes its patch)."""
    return create_feature_extractor("tf_efficientnet_lite0")


# ---- a fake clock for the stage timing ------------------------------------------------------------
@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """:class:`tests.timing_support.FakeClock` in place of :func:`fapm_lib.system.timing.clocks`."""
    fake = FakeClock()
    monkeypatch.setattr(timing, "clocks", fake)
    return fake


# ---- tiny 64 px parts (tests/parts_support.py): data, settings, a fitted model file ----------------
@pytest.fixture(scope="session")
def part_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data root of category ``part``: 10 train/good, test/good 3, test/crack 3 with masks."""
    return parts_support.write_tree(tmp_path_factory.mktemp("decisions") / "data")


@pytest.fixture(scope="session")
def part_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``TINY_YAML`` in a file, for ``--config``."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(parts_support.TINY_YAML)
    return path


@pytest.fixture(scope="session")
def part_model_file(tmp_path_factory: pytest.TempPathFactory, part_data: Path, part_yaml: Path) -> Path:
    """``fapm fit`` on the tiny part data (calibrated, 5 folds): the model file."""
    out = tmp_path_factory.mktemp("fit")
    assert cli.main(["fit", "--config", str(part_yaml), "--data-root", str(part_data), "--category",
                     parts_support.CATEGORY, "--output", str(out), "--no-progress"]) == 0
    return out / MODEL_FILE


@pytest.fixture(scope="session")
def flat_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flat/train (png and a jpg copy in a sub-folder, a text file), flat/ok, flat/ng/crack, flat/gt/crack;
    ``TINY_YAML`` beside it as tiny.yaml."""


    tree = parts_support.write_tree(tmp_path_factory.mktemp("flat") / "mvtec", n_train=10, n_good=3, n_bad=3)
    part, flat = tree / parts_support.CATEGORY, tree.parent / "flat"
    shutil.copytree(part / "train" / "good", flat / "train")
    (flat / "train" / "line2").mkdir()
    for png in sorted((flat / "train").glob("00[0-2].png")):
        Image.open(png).save(flat / "train" / "line2" / f"{png.stem}.jpg", quality=95)
        png.unlink()
    (flat / "train" / "notes.txt").write_text("shift 3")
    shutil.copytree(part / "test" / "good", flat / "ok")
    shutil.copytree(part / "test" / "crack", flat / "ng" / "crack")
    shutil.copytree(part / "ground_truth" / "crack", flat / "gt" / "crack")
    (tree.parent / "tiny.yaml").write_text(parts_support.TINY_YAML)
    return flat


@pytest.fixture(scope="session")
def flat_model_file(flat_folders: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fapm fit --good flat/train``: the model file."""
    out = tmp_path_factory.mktemp("model")
    assert cli.main(["fit", "--config", str(flat_folders.parent / "tiny.yaml"), "--good", str(flat_folders / "train"),
                     "--output", str(out), "--no-progress"]) == 0
    return out / MODEL_FILE


@pytest.fixture(scope="session")
def labelled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The part data (10 train, 2 good and 2 crack test images) and, beside it, marked/ (two parts with a
    label, which training lacks) and unseen/ (a third one)."""
    root = parts_support.write_tree(tmp_path_factory.mktemp("update") / "data", n_train=10, n_good=2, n_bad=2)
    for i in range(3):
        folder = root / ("marked" if i < 2 else "unseen")
        folder.mkdir(exist_ok=True)
        Image.fromarray(parts_support.labelled_part(700 + i)).save(folder / f"label_{i}.png")
    return root


@pytest.fixture(scope="session")
def labelled_model_file(labelled_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FAPM fitted (and calibrated) on ``labelled_root``'s training parts: the model file."""
    model = FAPM(parts_support.TINY)
    model.fit(MVTecDataset(labelled_root, parts_support.CATEGORY, "train", model.transform), progress=False)
    return model.save(tmp_path_factory.mktemp("fitted") / MODEL_FILE)


# ---- a GIF's worth of predictions -----------------------------------------------------------------
@pytest.fixture(scope="session")
def gif_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root of category 'widget' with 5 test images, a fitted FAPM model file); random weights."""
    config = FAPMConfig(pretrained=False, resize=64, crop_size=64, grid=2, coreset_ratio=0.5, k=2, batch_size=4)
    base = tmp_path_factory.mktemp("gif")
    root = build_mvtec_tree(base / "data", n_train=3, test_counts={"good": 2, "crack": 3}, size=(64, 64))
    model = FAPM(config)
    model.fit(MVTecDataset(root, "widget", "train", model.transform), progress=False)
    return root, model.save(base / "model.safetensors")


# ---- a 112 px texture (tests/texture_support.py): FAPM and PatchCore fitted on it -----------------
@pytest.fixture(scope="session")
def texture_train_images() -> torch.Tensor:

    return texture_support.texture(10, seed=0)


@pytest.fixture(scope="session")
def texture_test_image() -> torch.Tensor:

    return texture_support.texture(1, seed=99)


@pytest.fixture(scope="session")
def texture_fapm(lite0, texture_train_images: torch.Tensor):
    """FAPM (grid 7, ratio 0.5) fitted on the 10 texture images."""
    return FAPM(texture_support.CONFIG, extractor=lite0).fit(texture_train_images, progress=False)


@pytest.fixture(scope="session")
def texture_patchcore(lite0, texture_train_images: torch.Tensor):
    """PatchCore (ratio 0.1) fitted on the 10 texture images."""
    config = texture_support.CONFIG.replace(coreset_ratio=0.1)
    return PatchCore(config, extractor=lite0).fit(texture_train_images, progress=False)


# ---- exports (tests/export_support.py): a fitted model, its test images, its exports -----------------
@pytest.fixture(scope="session")
def export_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built-in category, small (10 train, 3 good and 2 per defect type test images, 128 px)."""
    root = tmp_path_factory.mktemp("builtin")
    generate_category(root, export_support.CATEGORY, size=128, n_train=10, n_test_good=3, n_per_defect=2)
    return root


@pytest.fixture(scope="session")
def export_fitted(export_data: Path, lite0):
    """Uncalibrated (``calibration_folds=0``): the graph's raw outputs only."""
    model = FAPM(FAPMConfig(calibration_folds=0), extractor=lite0)
    return model.fit(MVTecDataset(export_data, export_support.CATEGORY, "train", model.transform), progress=False)


@pytest.fixture(scope="session")
def export_test_set(export_data: Path, export_fitted):
    return MVTecDataset(export_data, export_support.CATEGORY, "test", export_fitted.transform)


@pytest.fixture(scope="session")
def export_test_images(export_test_set) -> tuple[torch.Tensor, np.ndarray]:
    """(normalised [N, 3, S, S] as the torch model takes them, uint8 [N, S, S, 3] as the runner makes them)."""
    test_set = export_test_set
    normalised = torch.stack([test_set[i]["image"] for i in range(len(test_set))])
    t = test_set.transform
    pixels = np.stack([resize_crop(load_rgb(s.path, t.resize), t.resize, t.crop_size) for s in test_set.samples])
    return normalised, pixels


@pytest.fixture(scope="session")
def export_calibration(export_fitted, export_test_images):
    """Thresholds constructed by hand in the middle of the scores (the contract's fields), so
    both decisions occur; nothing here is a claim about good thresholds."""
    pred = export_fitted.predict(export_test_images[0])
    ranked = pred.pred_score.sort().values
    middle = len(ranked) // 2  # halfway between two scores: no image sits on the threshold
    return Calibration(image_threshold=float(ranked[middle - 1] + ranked[middle]) / 2,
                       image_scale=float(pred.pred_score.std()),
                       pixel_threshold=float(pred.anomaly_map.quantile(0.9)),
                       pixel_scale=float(pred.anomaly_map.std()), method="manual", false_alarm_rate=None)


@pytest.fixture(scope="session")
def export_calibrated(export_fitted, export_calibration, lite0):
    """``export_fitted``'s memories with ``export_calibration``."""
    model = FAPM(export_fitted.config, extractor=lite0)
    model.feature_sizes = export_fitted.feature_sizes
    model.set_memories(export_fitted.memories)
    model.calibration = export_calibration  # the contract H9's calibration fills in
    return model


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory, export_fitted, export_calibrated) -> dict[str, Path]:
    """Export folders: ONNX dynamic batch, ONNX batch 2, ONNX calibrated, OpenVINO calibrated batch 3."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from fapm_lib.deploy.graph_export import export_model

    base = tmp_path_factory.mktemp("exports")
    return {
        "dynamic": export_model(export_fitted, base / "dynamic", "onnx", None).parent,
        "fixed2": export_model(export_fitted, base / "fixed2", "onnx", 2).parent,
        "calibrated": export_model(export_calibrated, base / "calibrated", "onnx", None).parent,
        "openvino": export_model(export_calibrated, base / "openvino", "openvino", 3).parent,
    }
