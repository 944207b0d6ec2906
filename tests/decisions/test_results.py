"""Per-image results of a calibrated model (``predict_image`` / ``predict_folder``): any size, gray or
RGB, any input type gives one result; bad arrays are refused. Tiny 64 px parts, real offline backbone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fapm_lib import FAPM
from tests.parts_support import CATEGORY

pytestmark = pytest.mark.usefixtures("cached_extractors")


# ---- the inference API ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 64, 3), (50, 83, 3), (97, 61), (40, 40, 1), (33, 120, 4)])
def test_predict_image_any_size_gray_or_rgb(part_model_file: Path, shape: tuple[int, ...]) -> None:
    model = FAPM.load(part_model_file)
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    result = model.predict_image(array)
    assert result.anomaly_map.shape == result.mask.shape == shape[:2]
    assert result.decision in ("OK", "NG") and 0 <= result.score <= 1
    assert (result.score >= 0.5) == (result.decision == "NG") == (result.raw_score >= model.calibration.image_threshold)
    left, top, right, bottom = result.box
    assert 0 <= left < right <= shape[1] and 0 <= top < bottom <= shape[0]
    assert not result.mask[result.anomaly_map == 0].any()


def test_predict_image_inputs_agree(part_model_file: Path, part_data: Path) -> None:
    """Path, PIL image, uint8 array, float array and the gray copy of a gray image: one result."""
    model = FAPM.load(part_model_file)
    path = part_data / CATEGORY / "test" / "crack" / "000.png"
    rgb = np.asarray(Image.open(path).convert("L").convert("RGB"))
    gray = rgb[..., 0]
    results = [model.predict_image(x) for x in (rgb, gray, Image.fromarray(gray), gray.astype(np.float32) / 255)]
    for r in results[1:]:
        assert r.raw_score == pytest.approx(results[0].raw_score, rel=1e-5)
        assert np.array_equal(r.mask, results[0].mask)
    assert model.predict_image(path).path == str(path)
    folder = model.predict_folder(part_data / CATEGORY / "test")
    assert [Path(r.path).parent.name for r in folder] == ["crack"] * 3 + ["good"] * 3
    defect, good = folder[0], folder[-1]
    assert defect.decision == "NG" and defect.mask.sum() > good.mask.sum()


def test_predict_image_refuses_bad_arrays(part_model_file: Path) -> None:
    from fapm_lib.errors import DataError

    model = FAPM.load(part_model_file)
    with pytest.raises(DataError, match="float numpy image"):
        model.predict_image(np.full((20, 20), 2.0))
    with pytest.raises(DataError, match="shape"):
        model.predict_image(np.zeros((4, 20, 20, 3), np.uint8))
