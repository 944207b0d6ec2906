"""Running an export (onnxruntime, OpenVINO): the same maps and scores as the torch model (to 1e-4
relative) at batch 1 and several, fixed and dynamic, identical decisions when calibrated; wrong inputs and
bad export folders are one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fapm_lib.decisions.calibration import Calibration, normalize_score  # noqa: E402
from fapm_lib.deploy.exported import ExportedModel, is_exported, load_predictor, to_uint8  # noqa: E402
from fapm_lib.detectors.fapm import FAPM  # noqa: E402
from fapm_lib.errors import ConfigError, ModelFileError  # noqa: E402
from tests.export_support import RTOL, rel_diff  # noqa: E402


# ---- parity in onnxruntime and OpenVINO -------------------------------------------------------
@pytest.mark.parametrize("name, counts", [("dynamic", (1, 5)), ("fixed2", (1, 2, 3))])
def test_onnx_parity_batch_one_and_several(name: str, counts: tuple[int, ...], exports, export_fitted,
                                           export_test_images) -> None:
    normalised, pixels = export_test_images
    exported = ExportedModel(exports[name])
    assert exported.batch_size == (None if name == "dynamic" else 2)
    for n in counts:
        ref, got = export_fitted.predict(normalised[:n]), exported.predict_uint8(pixels[:n])
        assert got.anomaly_map.shape == ref.anomaly_map.shape and got.pred_score.shape == (n,)
        assert rel_diff(got.anomaly_map, ref.anomaly_map) < RTOL
        assert rel_diff(got.pred_score, ref.pred_score) < RTOL
        assert got.decision is None and got.score is None  # not calibrated: raw outputs only


@pytest.mark.parametrize("name", ["calibrated", "openvino"])
def test_calibrated_outputs_and_identical_decisions(name: str, exports, export_calibrated: FAPM,
                                                    export_calibration: Calibration,
                                                    export_test_images) -> None:
    if name == "openvino":
        pytest.importorskip("openvino")
    normalised, pixels = export_test_images
    exported = ExportedModel(exports[name])
    assert exported.runtime == ("openvino" if name == "openvino" else "onnxruntime")
    assert exported.calibration == export_calibration
    ref, got = export_calibrated.predict(normalised), exported.predict_uint8(pixels)
    decision = ref.pred_score >= export_calibration.image_threshold
    assert decision.any() and not decision.all()
    assert torch.equal(got.decision, decision)
    assert rel_diff(got.anomaly_map, ref.anomaly_map) < RTOL
    assert torch.allclose(got.score, normalize_score(ref.pred_score, export_calibration.image_threshold,
                                                     export_calibration.image_scale), atol=1e-5)
    mask = ref.anomaly_map >= export_calibration.pixel_threshold
    near = (ref.anomaly_map - export_calibration.pixel_threshold).abs() <= RTOL * float(ref.anomaly_map.max())
    assert torch.equal(got.mask[~near], mask[~near]) and mask.any()
    assert torch.allclose(got.score_map, normalize_score(ref.anomaly_map, export_calibration.pixel_threshold,
                                                         export_calibration.pixel_scale), atol=1e-5)


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("images", [np.zeros((1, 256, 256, 3), np.uint8), np.zeros((1, 224, 224, 3), np.float32),
                                    np.zeros((1, 3, 224, 224), np.uint8), np.zeros((0, 224, 224, 3), np.uint8)])
def test_another_input_is_refused_with_one_line(images: np.ndarray, exports) -> None:
    exported = ExportedModel(exports["dynamic"])
    with pytest.raises(ConfigError) as info:
        exported.predict_uint8(images)
    message = str(info.value)
    assert "\n" not in message and "uint8 [B, 224, 224, 3]" in message


def test_normalised_tensors_are_turned_back_into_the_exact_pixels(export_fitted: FAPM, export_test_images) -> None:
    normalised, pixels = export_test_images
    assert np.array_equal(to_uint8(normalised, export_fitted.transform), pixels)
    with pytest.raises(ConfigError, match="not uint8 pixels"):
        to_uint8(normalised + 0.01, export_fitted.transform)


def test_bad_export_folders_and_options_are_one_line_errors(tmp_path: Path, exports, capsys) -> None:
    with pytest.raises(ModelFileError, match="no fapm_export.json"):
        ExportedModel(tmp_path)
    assert is_exported(exports["dynamic"]) and is_exported(exports["dynamic"] / "model.onnx")
    assert not is_exported(tmp_path / "model.safetensors")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fapm_export.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="unreadable export description"):
        ExportedModel(broken)
    with pytest.raises(ConfigError, match="CPU"):
        load_predictor(exports["dynamic"], device="cuda")
