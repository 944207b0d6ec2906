"""Export to one ONNX / OpenVINO graph: the graph as a torch module equals the library, other settings
export and agree, a fit's calibration travels into the graph, the sidecar describes the export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fapm_lib.config import FAPMConfig  # noqa: E402
from fapm_lib.data.mvtec import MVTecDataset  # noqa: E402
from fapm_lib.deploy.exported import ExportedModel  # noqa: E402
from fapm_lib.deploy.graph_export import FAPMGraph, export_model, output_names  # noqa: E402
from fapm_lib.detectors.fapm import FAPM  # noqa: E402
from tests.export_support import CATEGORY, RTOL, rel_diff  # noqa: E402


# ---- the graph as a torch module -----------------------------------------------------------------
def test_graph_module_equals_the_library(export_fitted: FAPM, export_test_images) -> None:
    normalised, pixels = export_test_images
    graph = FAPMGraph(export_fitted).eval()
    with torch.no_grad():
        amap, raw, patch = graph(torch.from_numpy(pixels))
    ref = export_fitted.predict(normalised)
    assert rel_diff(amap, ref.anomaly_map) < 1e-5 and rel_diff(raw, ref.pred_score) < 1e-5
    assert rel_diff(patch, ref.patch_scores) < 1e-5


@pytest.mark.parametrize("changes", [
    {"image_score": "reweighted"},                                 # k = 4 neighbours, top-k in the graph
    {"resize": 288, "crop_size": 256, "grid": 8},                  # another input size (anomalib #1286)
    {"resize": 64, "crop_size": None, "grid": 2, "sampling": "fixed"},  # no crop, one size group
])
def test_other_settings_export_and_agree(changes: dict, export_data: Path, lite0, tmp_path: Path) -> None:
    model = FAPM(FAPMConfig(**changes), extractor=lite0)
    model.fit(MVTecDataset(export_data, CATEGORY, "train", model.transform), progress=False)
    test = MVTecDataset(export_data, CATEGORY, "test", model.transform)
    exported = ExportedModel(export_model(model, tmp_path / "e").parent)
    images = torch.stack([test[i]["image"] for i in range(4)])
    ref, got = model.predict(images), exported.predict(images)
    assert got.anomaly_map.shape == (4, model.config.input_size, model.config.input_size)
    assert rel_diff(got.anomaly_map, ref.anomaly_map) < RTOL and rel_diff(got.pred_score, ref.pred_score) < RTOL


def test_a_fit_calibration_travels_into_the_graph(export_data: Path, lite0, export_test_images, tmp_path: Path) -> None:
    """A default fit calibrates itself (k-fold on train/good); the export decides as the torch model does."""
    model = FAPM(FAPMConfig(), extractor=lite0)
    model.fit(MVTecDataset(export_data, CATEGORY, "train", model.transform), progress=False)
    assert model.calibration is not None
    normalised, pixels = export_test_images
    got = ExportedModel(export_model(model, tmp_path / "e").parent).predict_uint8(pixels)
    ref = model.predict(normalised).pred_score
    expected = [model.calibration.decide(float(r)) == "NG" for r in ref]
    assert got.decision.bool().tolist() == expected
    assert rel_diff(got.score, model.calibration.score(ref)) < RTOL


def test_sidecar_describes_the_export(exports) -> None:
    plain = json.loads((exports["dynamic"] / "fapm_export.json").read_text())
    assert plain["input"] == {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                              "shape": ["batch", 224, 224, 3]}
    assert plain["batch_size"] == "dynamic" and plain["calibration"] is None
    assert list(plain["outputs"]) == list(output_names(False))
    assert plain["preprocessing"]["resize"] == 256 and plain["preprocessing"]["crop_size"] == 224
    assert len(plain["preprocessing"]["mean"]) == 3 and {"fapm", "torch", "onnx"} <= set(plain["versions"])
    assert (exports["dynamic"] / "run_fapm.py").is_file()
    cal = json.loads((exports["calibrated"] / "fapm_export.json").read_text())
    assert list(cal["outputs"]) == list(output_names(True)) and cal["calibration"]["method"] == "manual"
    fixed = json.loads((exports["fixed2"] / "fapm_export.json").read_text())
    assert fixed["batch_size"] == 2 and fixed["input"]["shape"][0] == 2
    import onnx

    graph = onnx.load(str(exports["calibrated"] / "model.onnx")).graph
    assert [o.name for o in graph.output] == list(output_names(True))
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
