"""The standalone runner (``run_fapm.py``, beside every export): its pre-processing is the library's, bit
for bit; it writes scores, masks and maps; it refuses a model file without its sidecar."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fapm_lib.data.images import load_image  # noqa: E402
from fapm_lib.data.mvtec import MVTecDataset  # noqa: E402
from fapm_lib.data.transform import Transform  # noqa: E402
from fapm_lib.decisions.calibration import Calibration  # noqa: E402
from fapm_lib.deploy.exported import to_uint8  # noqa: E402
from fapm_lib.deploy.run_fapm import ExportedRunner, load_rgb, resize_crop  # noqa: E402
from fapm_lib.deploy.run_fapm import main as runner_main  # noqa: E402
from fapm_lib.detectors.fapm import FAPM  # noqa: E402
from tests.export_support import RTOL, read_scores  # noqa: E402


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


# ---- the runner's command line ------------------------------------------------------------------
def test_standalone_runner_writes_scores_and_masks(exports, export_calibrated: FAPM, export_calibration: Calibration,
                                                   export_test_set: MVTecDataset, tmp_path: Path, capsys) -> None:
    paths = [str(s.path) for s in export_test_set.samples]
    out = tmp_path / "run"
    assert runner_main([*paths, "--model", str(exports["calibrated"]), "--output", str(out), "--masks", "--maps",
                        "--batch-size", "3", "--threads", "1"]) == 0
    rows = read_scores(out / "scores.csv")
    ref = export_calibrated.predict(torch.stack([export_test_set[i]["image"] for i in range(len(export_test_set))]))
    assert list(rows) == paths
    for j, path in enumerate(paths):
        assert float(rows[path]["raw_score"]) == pytest.approx(float(ref.pred_score[j]), rel=RTOL)
        assert rows[path]["decision"] == ("NG" if ref.pred_score[j] >= export_calibration.image_threshold else "OK")
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
