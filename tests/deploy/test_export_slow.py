"""Slower export checks: the runner in a fresh venv with only onnxruntime, numpy and Pillow;
parity on real MVTec AD bottle; INT8; `fapm benchmark --runtimes`."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from fapm_lib.cli.main import main  # noqa: E402
from fapm_lib.config import FAPMConfig  # noqa: E402
from fapm_lib.data.mvtec import MVTecDataset, default_shared_root  # noqa: E402
from fapm_lib.data.synthetic import CATEGORIES, generate_category  # noqa: E402
from fapm_lib.decisions.calibration import Calibration  # noqa: E402
from fapm_lib.decisions.metrics import compute_metrics  # noqa: E402
from fapm_lib.deploy.exported import ExportedModel  # noqa: E402
from fapm_lib.deploy.graph_export import export_model  # noqa: E402
from fapm_lib.deploy.runtime_benchmark import uint8_images  # noqa: E402
from fapm_lib.detectors.fapm import FAPM  # noqa: E402
from tests.helpers import build_mvtec_tree  # noqa: E402

pytestmark = pytest.mark.slow
CATEGORY = next(name for name, spec in CATEGORIES.items() if spec.kind == "object")
SHARED = default_shared_root()
RTOL = 1e-4


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FAPM]:
    root = tmp_path_factory.mktemp("builtin")
    generate_category(root, CATEGORY, size=128, n_train=10, n_test_good=3, n_per_defect=2)
    model = FAPM(FAPMConfig())
    return root, model.fit(MVTecDataset(root, CATEGORY, "train", model.transform), progress=False)


def test_runner_in_a_fresh_venv_with_only_onnxruntime_numpy_pillow(small, tmp_path: Path) -> None:
    root, model = small
    folder = export_model(model, tmp_path / "export").parent
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "--no-cache-dir", "onnxruntime", "numpy", "pillow"], capture_output=True, text=True,
                             env=env, timeout=900)
    if install.returncode != 0:
        pytest.skip(f"pip could not install onnxruntime numpy pillow: {install.stderr.strip().splitlines()[-1:]}")
    isolated = subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env, cwd=tmp_path)
    assert isolated.returncode != 0, "the fresh venv must not see torch"
    isolated = subprocess.run([str(python), "-c", "import fapm_lib"], capture_output=True, env=env, cwd=tmp_path)
    assert isolated.returncode != 0, "the fresh venv must not see fapm_lib"
    test = MVTecDataset(root, CATEGORY, "test", model.transform)
    paths = [str(s.path) for s in test.samples]
    out = tmp_path / "scores"
    run = subprocess.run([str(python), str(folder / "run_fapm.py"), *paths, "--output", str(out), "--maps"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ref = model.predict(torch.stack([test[i]["image"] for i in range(len(test))]))
    assert [r["path"] for r in rows] == paths
    got = torch.tensor([float(r["raw_score"]) for r in rows])
    assert rel_diff(got, ref.pred_score) < RTOL
    maps = torch.from_numpy(np.stack([np.load(p) for p in sorted((out / "maps").glob("*.npy"))]))
    assert rel_diff(maps, ref.anomaly_map) < RTOL


@pytest.fixture(scope="module")
def bottle(tmp_path_factory: pytest.TempPathFactory):
    if SHARED is None or not (SHARED / "bottle").is_dir():
        pytest.skip("shared MVTec AD bottle data is not available")
    model = FAPM(FAPMConfig(backbone="tf_efficientnet_lite0", resize=256, crop_size=224))  # the paper's protocol
    train = MVTecDataset(SHARED, "bottle", "train", model.transform)
    model.fit(train, progress=False)
    # thresholds from the training images' own scores only (never the test set)
    train_scores = torch.cat([model.predict(torch.stack([train[i]["image"] for i in range(j, min(j + 16, len(train)))]))
                              .pred_score for j in range(0, len(train), 16)])
    model.calibration = Calibration(image_threshold=float(train_scores.max()), image_scale=float(train_scores.std()),
                                    pixel_threshold=float(train_scores.max()), pixel_scale=float(train_scores.std()),
                                    method="manual", false_alarm_rate=None)
    test = MVTecDataset(SHARED, "bottle", "test", model.transform)
    items = [test[i] for i in range(len(test))]
    ref = [model.predict(torch.stack([it["image"] for it in items[i : i + 16]])) for i in range(0, len(items), 16)]
    return {"model": model, "pixels": uint8_images(test), "labels": torch.tensor([it["label"] for it in items]),
            "masks": torch.stack([it["mask"] for it in items]), "maps": torch.cat([r.anomaly_map for r in ref]),
            "scores": torch.cat([r.pred_score for r in ref]), "base": tmp_path_factory.mktemp("bottle_export")}


@pytest.mark.parametrize("fmt, batch", [("onnx", None), ("onnx", 1), ("openvino", 8)])
def test_real_bottle_parity(bottle, fmt: str, batch: int | None) -> None:
    if fmt == "openvino":
        pytest.importorskip("openvino")
    model, pixels, labels, masks = bottle["model"], bottle["pixels"], bottle["labels"], bottle["masks"]
    exported = ExportedModel(export_model(model, bottle["base"] / f"{fmt}_{batch}", fmt, batch).parent, threads=2)
    maps, scores, decisions = [], [], []
    for i in range(0, len(pixels), 16):
        got = exported.predict_uint8(pixels[i : i + 16])
        maps.append(got.anomaly_map), scores.append(got.pred_score), decisions.append(got.decision)
    got_maps, got_scores = torch.cat(maps), torch.cat(scores)
    ref_maps, ref_scores = bottle["maps"], bottle["scores"]
    assert rel_diff(got_maps, ref_maps) < RTOL and rel_diff(got_scores, ref_scores) < RTOL
    assert torch.equal(torch.cat(decisions), ref_scores >= model.calibration.image_threshold)
    a, b = compute_metrics(got_scores, labels, got_maps, masks), compute_metrics(ref_scores, labels, ref_maps, masks)
    assert abs(a["image_auroc"] - b["image_auroc"]) < 1e-3 and abs(a["pixel_auroc"] - b["pixel_auroc"]) < 1e-3


def test_int8_export_is_calibrated_on_training_images_and_runs(small, tmp_path: Path, capsys) -> None:
    pytest.importorskip("nncf")
    root, model = small
    model_file = model.save(tmp_path / "model.safetensors")
    assert main(["export", "--model", str(model_file), "--format", "openvino", "--int8", "--data-root", str(root),
                 "--category", CATEGORY, "--output", str(tmp_path / "int8")]) == 0
    assert "check against the torch model" in capsys.readouterr().out
    meta = json.loads((tmp_path / "int8" / "fapm_export.json").read_text())
    assert meta["quantization"]["calibration_split"].startswith("train")
    assert meta["quantization"]["calibration_images"] == 10
    xml = (tmp_path / "int8" / "model.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml or "i8" in xml  # quantized operations are there
    exported = ExportedModel(tmp_path / "int8")
    test = MVTecDataset(root, CATEGORY, "test", model.transform)
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    got, ref = exported.predict(images), model.predict(images)
    assert torch.isfinite(got.anomaly_map).all()
    # INT8 is approximate by design; it must still be the same map, not noise
    assert rel_diff(got.anomaly_map, ref.anomaly_map) < 0.25


def test_benchmark_runtimes(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    root = build_mvtec_tree(tmp_path / "data", n_train=3, test_counts={"good": 2, "crack": 2})
    config = tmp_path / "tiny.yaml"
    config.write_text("resize: 64\ncrop_size: 64\ngrid: 2\ncoreset_ratio: 0.5\nbatch_size: 4\n")
    out = tmp_path / "bench"
    assert main(["benchmark", "--data-root", str(root), "--category", "widget", "--config", str(config),
                 "--repeats", "2", "--output", str(out), "--no-progress", "--threads", "1",
                 "--runtimes", "torch,onnxruntime,openvino"]) == 0
    report = json.loads((out / "benchmark.json").read_text())
    runtimes = report["runtimes"]
    assert {"torch", "onnxruntime", "openvino"} <= set(runtimes)
    for name in ("torch", "onnxruntime", "openvino"):
        row = runtimes[name]
        assert row["total_ms"] > 0 and row["throughput_ips"] > 0
        assert 0 <= row["image_auroc"] <= 1 and 0 <= row["pixel_auroc"] <= 1
    for name in ("onnxruntime", "openvino"):  # fp32 exports: the same accuracy as torch
        assert abs(runtimes[name]["image_auroc_change"]) < 1e-3 and abs(runtimes[name]["pixel_auroc_change"]) < 1e-3
    details = runtimes["_details"]
    assert details["threads"] == 1 and details["onnxruntime_peak_rss_mb"]["batch_1"]["peak_rss_mb"] > 0
    assert "## Runtimes" in (out / "benchmark.md").read_text()


def test_benchmark_refuses_unknown_runtimes(tmp_path: Path, capsys) -> None:
    code = main(["benchmark", "--data-root", str(tmp_path), "--category", "x", "--output", str(tmp_path / "o"),
                 "--runtimes", "torch,tensorrt"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err] and "tensorrt" in err
