"""Export to ONNX / OpenVINO: the graph equals the torch model (maps to 1e-4 relative, identical
decisions) at batch 1 and several, fixed and dynamic; the runner's pre-processing equals the
library's; wrong inputs and bad options are one-line errors; `fapm predict` runs exports."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fapm_lib.cli.main import main  # noqa: E402
from fapm_lib.config import FAPMConfig  # noqa: E402
from fapm_lib.data.images import load_image  # noqa: E402
from fapm_lib.data.mvtec import MVTecDataset  # noqa: E402
from fapm_lib.data.synthetic import CATEGORIES, generate_category  # noqa: E402
from fapm_lib.data.transform import Transform  # noqa: E402
from fapm_lib.decisions.calibration import Calibration, normalize_score  # noqa: E402
from fapm_lib.deploy.exported import ExportedModel, is_exported, load_predictor, to_uint8  # noqa: E402
from fapm_lib.deploy.graph_export import FAPMGraph, export_model, output_names  # noqa: E402
from fapm_lib.deploy.run_fapm import ExportedRunner, load_rgb, resize_crop  # noqa: E402
from fapm_lib.deploy.run_fapm import main as runner_main  # noqa: E402
from fapm_lib.detectors.fapm import FAPM  # noqa: E402
from fapm_lib.errors import ConfigError, ModelFileError  # noqa: E402
from fapm_lib.method.backbone import create_feature_extractor  # noqa: E402

CATEGORY = next(name for name, spec in CATEGORIES.items() if spec.kind == "object")
RTOL = 1e-4


def rel_diff(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def extractor():
    return create_feature_extractor("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built-in category, small (10 train, 3 good and 2 per defect type test images, 128 px)."""
    root = tmp_path_factory.mktemp("builtin")
    generate_category(root, CATEGORY, size=128, n_train=10, n_test_good=3, n_per_defect=2)
    return root


@pytest.fixture(scope="module")
def fitted(data: Path, extractor) -> FAPM:
    """Uncalibrated (``calibration_folds=0``): the graph's raw outputs only."""
    model = FAPM(FAPMConfig(calibration_folds=0), extractor=extractor)
    return model.fit(MVTecDataset(data, CATEGORY, "train", model.transform), progress=False)


@pytest.fixture(scope="module")
def test_set(data: Path, fitted: FAPM) -> MVTecDataset:
    return MVTecDataset(data, CATEGORY, "test", fitted.transform)


@pytest.fixture(scope="module")
def test_images(test_set: MVTecDataset) -> tuple[torch.Tensor, np.ndarray]:
    """(normalised [N, 3, S, S] as the torch model takes them, uint8 [N, S, S, 3] as the runner makes them)."""
    normalised = torch.stack([test_set[i]["image"] for i in range(len(test_set))])
    t = test_set.transform
    pixels = np.stack([resize_crop(load_rgb(s.path, t.resize), t.resize, t.crop_size) for s in test_set.samples])
    return normalised, pixels


@pytest.fixture(scope="module")
def calibration(fitted: FAPM, test_images) -> Calibration:
    """Thresholds constructed by hand in the middle of the scores (the contract's fields), so
    both decisions occur; nothing here is a claim about good thresholds."""
    pred = fitted.predict(test_images[0])
    ranked = pred.pred_score.sort().values
    middle = len(ranked) // 2  # halfway between two scores: no image sits on the threshold
    return Calibration(image_threshold=float(ranked[middle - 1] + ranked[middle]) / 2,
                       image_scale=float(pred.pred_score.std()),
                       pixel_threshold=float(pred.anomaly_map.quantile(0.9)),
                       pixel_scale=float(pred.anomaly_map.std()), method="manual", false_alarm_rate=None)


@pytest.fixture(scope="module")
def calibrated(fitted: FAPM, calibration: Calibration, extractor) -> FAPM:
    model = FAPM(fitted.config, extractor=extractor)
    model.feature_sizes = fitted.feature_sizes
    model.set_memories(fitted.memories)
    model.calibration = calibration  # the contract H9's calibration fills in
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, fitted: FAPM, calibrated: FAPM) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("exports")
    return {
        "dynamic": export_model(fitted, base / "dynamic", "onnx", None).parent,
        "fixed2": export_model(fitted, base / "fixed2", "onnx", 2).parent,
        "calibrated": export_model(calibrated, base / "calibrated", "onnx", None).parent,
        "openvino": export_model(calibrated, base / "openvino", "openvino", 3).parent,
    }


# ---- the graph as a torch module -----------------------------------------------------------------
def test_graph_module_equals_the_library(fitted: FAPM, test_images) -> None:
    normalised, pixels = test_images
    graph = FAPMGraph(fitted).eval()
    with torch.no_grad():
        amap, raw, patch = graph(torch.from_numpy(pixels))
    ref = fitted.predict(normalised)
    assert rel_diff(amap, ref.anomaly_map) < 1e-5 and rel_diff(raw, ref.pred_score) < 1e-5
    assert rel_diff(patch, ref.patch_scores) < 1e-5


@pytest.mark.parametrize("changes", [
    {"image_score": "reweighted"},                                 # k = 4 neighbours, top-k in the graph
    {"resize": 288, "crop_size": 256, "grid": 8},                  # another input size (anomalib #1286)
    {"resize": 64, "crop_size": None, "grid": 2, "sampling": "fixed"},  # no crop, one size group
])
def test_other_settings_export_and_agree(changes: dict, data: Path, extractor, tmp_path: Path) -> None:
    model = FAPM(FAPMConfig(**changes), extractor=extractor)
    model.fit(MVTecDataset(data, CATEGORY, "train", model.transform), progress=False)
    test = MVTecDataset(data, CATEGORY, "test", model.transform)
    exported = ExportedModel(export_model(model, tmp_path / "e").parent)
    images = torch.stack([test[i]["image"] for i in range(4)])
    ref, got = model.predict(images), exported.predict(images)
    assert got.anomaly_map.shape == (4, model.config.input_size, model.config.input_size)
    assert rel_diff(got.anomaly_map, ref.anomaly_map) < RTOL and rel_diff(got.pred_score, ref.pred_score) < RTOL


def test_a_fit_calibration_travels_into_the_graph(data: Path, extractor, test_images, tmp_path: Path) -> None:
    """A default fit calibrates itself (k-fold on train/good); the export decides as the torch model does."""
    model = FAPM(FAPMConfig(), extractor=extractor)
    model.fit(MVTecDataset(data, CATEGORY, "train", model.transform), progress=False)
    assert model.calibration is not None
    normalised, pixels = test_images
    got = ExportedModel(export_model(model, tmp_path / "e").parent).predict_uint8(pixels)
    ref = model.predict(normalised).pred_score
    expected = [model.calibration.decide(float(r)) == "NG" for r in ref]
    assert got.decision.bool().tolist() == expected
    assert rel_diff(got.score, model.calibration.score(ref)) < RTOL


# ---- parity in onnxruntime and OpenVINO -------------------------------------------------------
@pytest.mark.parametrize("name, counts", [("dynamic", (1, 5)), ("fixed2", (1, 2, 3))])
def test_onnx_parity_batch_one_and_several(name: str, counts: tuple[int, ...], exports, fitted, test_images) -> None:
    normalised, pixels = test_images
    exported = ExportedModel(exports[name])
    assert exported.batch_size == (None if name == "dynamic" else 2)
    for n in counts:
        ref, got = fitted.predict(normalised[:n]), exported.predict_uint8(pixels[:n])
        assert got.anomaly_map.shape == ref.anomaly_map.shape and got.pred_score.shape == (n,)
        assert rel_diff(got.anomaly_map, ref.anomaly_map) < RTOL
        assert rel_diff(got.pred_score, ref.pred_score) < RTOL
        assert got.decision is None and got.score is None  # not calibrated: raw outputs only


@pytest.mark.parametrize("name", ["calibrated", "openvino"])
def test_calibrated_outputs_and_identical_decisions(name: str, exports, calibrated: FAPM, calibration: Calibration,
                                                    test_images) -> None:
    if name == "openvino":
        pytest.importorskip("openvino")
    normalised, pixels = test_images
    exported = ExportedModel(exports[name])
    assert exported.runtime == ("openvino" if name == "openvino" else "onnxruntime")
    assert exported.calibration == calibration
    ref, got = calibrated.predict(normalised), exported.predict_uint8(pixels)
    decision = ref.pred_score >= calibration.image_threshold
    assert decision.any() and not decision.all()
    assert torch.equal(got.decision, decision)
    assert rel_diff(got.anomaly_map, ref.anomaly_map) < RTOL
    assert torch.allclose(got.score, normalize_score(ref.pred_score, calibration.image_threshold,
                                                     calibration.image_scale), atol=1e-5)
    mask = ref.anomaly_map >= calibration.pixel_threshold
    near = (ref.anomaly_map - calibration.pixel_threshold).abs() <= RTOL * float(ref.anomaly_map.max())
    assert torch.equal(got.mask[~near], mask[~near]) and mask.any()
    assert torch.allclose(got.score_map, normalize_score(ref.anomaly_map, calibration.pixel_threshold,
                                                         calibration.pixel_scale), atol=1e-5)


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


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("images", [np.zeros((1, 256, 256, 3), np.uint8), np.zeros((1, 224, 224, 3), np.float32),
                                    np.zeros((1, 3, 224, 224), np.uint8), np.zeros((0, 224, 224, 3), np.uint8)])
def test_another_input_is_refused_with_one_line(images: np.ndarray, exports) -> None:
    exported = ExportedModel(exports["dynamic"])
    with pytest.raises(ConfigError) as info:
        exported.predict_uint8(images)
    message = str(info.value)
    assert "\n" not in message and "uint8 [B, 224, 224, 3]" in message


def test_normalised_tensors_are_turned_back_into_the_exact_pixels(fitted: FAPM, test_images) -> None:
    normalised, pixels = test_images
    assert np.array_equal(to_uint8(normalised, fitted.transform), pixels)
    with pytest.raises(ConfigError, match="not uint8 pixels"):
        to_uint8(normalised + 0.01, fitted.transform)


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


def test_export_cli_options(tmp_path: Path, fitted: FAPM, capsys) -> None:
    model_file = fitted.save(tmp_path / "model.safetensors")
    for extra, expected in [(["--batch-size", "zero"], "--batch-size zero"), (["--int8"], "--int8: only with"),
                            (["--format", "openvino", "--int8"], "--int8 needs --data-root"),
                            (["--data-root", "x"], "only used with --int8")]:
        code = main(["export", "--model", str(model_file), "--output", str(tmp_path / "e"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert main(["export", "--model", str(tmp_path / "missing.safetensors"), "--output", str(tmp_path / "e")]) == 2


def test_export_without_calibration_works_and_says_so(tmp_path: Path, fitted: FAPM, capsys) -> None:
    model_file = fitted.save(tmp_path / "model.safetensors")
    assert main(["export", "--model", str(model_file), "--batch-size", "1", "--output", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "no calibration" in out and "map_rel_diff" in out
    assert json.loads((tmp_path / "e" / "fapm_export.json").read_text())["batch_size"] == 1


# ---- the runner's pre-processing is the library's ----------------------------------------------
def _exif_rotated_jpeg(path: Path) -> Path:
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes(), quality=90)
    return path


@pytest.mark.parametrize("kind", ["rgb_wide", "rgb_tall", "gray", "rgba", "palette", "sixteen_bit", "exif_jpeg",
                                  "big_jpeg"])
def test_runner_preprocessing_equals_transform(kind: str, tmp_path: Path, image_writer) -> None:
    path = {
        "rgb_wide": lambda: image_writer(tmp_path / "a.png", (300, 200)),
        "rgb_tall": lambda: image_writer(tmp_path / "a.png", (201, 333)),
        "gray": lambda: image_writer(tmp_path / "a.png", (260, 260), "L"),
        "rgba": lambda: image_writer(tmp_path / "a.png", (250, 280), "RGBA"),
        "palette": lambda: image_writer(tmp_path / "a.png", (256, 256), "P"),
        "sixteen_bit": lambda: image_writer(tmp_path / "a.png", (240, 270), "I;16"),
        "exif_jpeg": lambda: _exif_rotated_jpeg(tmp_path / "a.jpg"),
        "big_jpeg": lambda: image_writer(tmp_path / "a.jpg", (1400, 1100)),  # decoded at reduced scale (draft)
    }[kind]()
    for transform in (Transform(), Transform(resize=96, crop_size=None), Transform(resize=300, crop_size=256)):
        pixels = resize_crop(load_rgb(path, transform.resize), transform.resize, transform.crop_size)
        expected = transform.image(load_image(path, transform.resize))
        assert torch.equal(torch.from_numpy(to_uint8(expected[None], transform)[0]), torch.from_numpy(pixels))
        x = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0)
        mean, std = torch.tensor(transform.mean).view(3, 1, 1), torch.tensor(transform.std).view(3, 1, 1)
        assert torch.equal((x - mean) / std, expected)  # the graph's normalisation, bit for bit


# ---- command lines -------------------------------------------------------------------------------
def _scores(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


@pytest.mark.parametrize("which", ["onnx_file", "openvino_folder"])
def test_predict_command_runs_exports_like_the_torch_model(which: str, exports, calibrated: FAPM, data: Path,
                                                           tmp_path: Path) -> None:
    if which == "openvino_folder":
        pytest.importorskip("openvino")
    model_file = calibrated.save(tmp_path / "model.safetensors")
    images = sorted((data / CATEGORY / "test").rglob("*.png"))[:5]
    target = exports["calibrated"] / "model.onnx" if which == "onnx_file" else exports["openvino"]
    assert main(["predict", "--model", str(model_file), *map(str, images), "--output", str(tmp_path / "t"),
                 "--no-progress"]) == 0
    assert main(["predict", "--model", str(target), *map(str, images), "--output", str(tmp_path / "x"),
                 "--no-progress"]) == 0
    ref, got = _scores(tmp_path / "t" / "scores.csv"), _scores(tmp_path / "x" / "scores.csv")
    assert list(ref) == list(got) == [str(p) for p in images]
    for path in ref:
        for column in ("raw_score", "score"):
            assert float(got[path][column]) == pytest.approx(float(ref[path][column]), rel=RTOL)
        assert got[path]["decision"] == ref[path]["decision"]
        assert (tmp_path / "x" / got[path]["overlay"]).is_file() and (tmp_path / "x" / got[path]["mask"]).is_file()


def test_standalone_runner_writes_scores_and_masks(exports, calibrated: FAPM, calibration: Calibration,
                                                   test_set: MVTecDataset, tmp_path: Path, capsys) -> None:
    paths = [str(s.path) for s in test_set.samples]
    out = tmp_path / "run"
    assert runner_main([*paths, "--model", str(exports["calibrated"]), "--output", str(out), "--masks", "--maps",
                        "--batch-size", "3", "--threads", "1"]) == 0
    rows = _scores(out / "scores.csv")
    ref = calibrated.predict(torch.stack([test_set[i]["image"] for i in range(len(test_set))]))
    assert list(rows) == paths
    for j, path in enumerate(paths):
        assert float(rows[path]["raw_score"]) == pytest.approx(float(ref.pred_score[j]), rel=RTOL)
        assert rows[path]["decision"] == ("NG" if ref.pred_score[j] >= calibration.image_threshold else "OK")
    assert len(list((out / "masks").glob("*.png"))) == len(paths) == len(list((out / "maps").glob("*.npy")))
    capsys.readouterr()
    assert runner_main([paths[0], "--model", str(exports["dynamic"]), "--output", str(out), "--masks"]) == 2
    assert "no calibration" in capsys.readouterr().err
    assert runner_main([str(tmp_path / "nope.png"), "--model", str(exports["dynamic"]), "--output", str(out)]) == 2
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert runner_main([str(bad), "--model", str(exports["dynamic"]), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "bad.png: cannot read image" in err[-1]


def test_runner_refuses_a_model_file_without_its_sidecar(exports, tmp_path: Path) -> None:
    lone = tmp_path / "model.onnx"
    lone.write_bytes((exports["dynamic"] / "model.onnx").read_bytes())
    with pytest.raises(ValueError, match="no fapm_export.json"):
        ExportedRunner(lone)
