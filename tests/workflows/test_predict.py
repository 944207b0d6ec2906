"""``fapm predict``: scores, masks and calibrated overlays, output names that keep source folders apart, an
uncalibrated model that says so, explanations and the self-contained report on plain folders, and exported
models (ONNX, OpenVINO) run like the torch model. Tiny 64 px parts, real offline backbone."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm_lib import FAPM, FolderDataset
from fapm_lib.cli import main as cli
from fapm_lib.detectors.model_file import MODEL_FILE
from tests.export_support import CATEGORY as EXPORT_CATEGORY
from tests.export_support import RTOL, read_scores
from tests.helpers import evaluate_metrics, one_line, run_main
from tests.parts_support import CATEGORY, SIZE, TINY, part_image

pytestmark = pytest.mark.usefixtures("cached_extractors")


# ---- scores, masks, overlays ---------------------------------------------------------------------
def test_predict_cli_writes_scores_masks_and_calibrated_overlays(capsys, tmp_path: Path, part_data: Path,
                                                                 part_model_file: Path) -> None:
    test = part_data / CATEGORY / "test"
    out = tmp_path / "pred"
    code, stdout, err = run_main(capsys, "predict", "--model", str(part_model_file), str(test / "good"),
                                 str(test / "crack"),
                                 "--output", str(out), "--no-progress")
    assert code == 0 and err == "" and stdout.startswith("scored 6 images")
    with open(out / "scores.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames[:4] == ["path", "raw_score", "score", "decision"]
        rows = list(reader)
    names = [r["overlay"] for r in rows]
    assert len(set(names)) == 6 and "overlays/good/000.png.png" in names and "overlays/crack/000.png.png" in names
    model = FAPM.load(part_model_file)
    for row in rows:
        raw, score = float(row["raw_score"]), float(row["score"])
        assert row["decision"] == ("NG" if raw >= model.calibration.image_threshold else "OK")
        assert (score >= 0.5) == (row["decision"] == "NG")
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
    good = [r for r in rows if "/good/" in r["path"]]
    bad = [r for r in rows if "/crack/" in r["path"]]
    assert all(r["decision"] == "NG" for r in bad)

    def coloured(row: dict) -> float:
        """Fraction of the overlay's picture area that differs from the input image."""
        picture = np.asarray(Image.open(out / row["overlay"]), dtype=np.int16)
        image = np.asarray(Image.open(row["path"]).convert("RGB"), dtype=np.int16)
        area = picture[-SIZE:, :SIZE]
        return float((np.abs(area - image).max(-1) > 8).mean())

    def flagged(row: dict) -> float:
        return float((np.asarray(Image.open(out / row["mask"])) > 0).mean())

    assert max(coloured(r) for r in good) < min(coloured(r) for r in bad)
    assert max(flagged(r) for r in good) < min(flagged(r) for r in bad)
    assert np.mean([flagged(r) for r in good]) < 0.05  # about the 1% pixel false-alarm target, not the map's own max


def test_predict_cli_keeps_source_folders_apart(capsys, tmp_path: Path, part_data: Path, part_model_file: Path) -> None:
    test = part_data / CATEGORY / "test"
    out = tmp_path / "pred"
    Image.fromarray(part_image(3)).save(tmp_path / "000.jpg")  # same stem, another format, another folder
    shutil.copy(tmp_path / "000.jpg", test / "good" / "000.jpg")
    code, _, err = run_main(capsys, "predict", "--model", str(part_model_file), str(test / "good" / "000.png"),
                            str(test / "crack" / "000.png"), str(test / "good" / "000.png"),
                            str(test / "good" / "000.jpg"), str(tmp_path / "000.jpg"), "--output", str(out))
    (test / "good" / "000.jpg").unlink()
    assert code == 0 and one_line(err) == f"skipped: {test / 'good' / '000.png'}: given more than once (scored once)"
    with open(out / "scores.csv", newline="") as fh:
        overlays = [r["overlay"] for r in csv.DictReader(fh)]
    assert overlays == ["overlays/good/000.png.png", "overlays/crack/000.png.png", "overlays/good/000.jpg.png",
                        f"overlays/{tmp_path.name}/000.jpg.png"]  # the extension kept, never a counter
    assert all((out / o).is_file() for o in overlays)


def test_uncalibrated_model_states_it(capsys, tmp_path: Path, part_data: Path, part_yaml: Path) -> None:
    out = tmp_path / "fit"
    assert cli.main(["fit", "--config", str(part_yaml), "--data-root", str(part_data), "--category", CATEGORY,
                     "--calibration-folds", "0", "--output", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    model_file = out / MODEL_FILE
    image = part_data / CATEGORY / "test" / "good" / "000.png"
    code, stdout, err = run_main(capsys, "predict", "--model", str(model_file), str(image),
                                 "--output", str(tmp_path / "p"))
    assert code == 0 and "uncalibrated" in one_line(err) and "uncalibrated" in stdout
    with open(tmp_path / "p" / "scores.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["decision"] == "uncalibrated" and row["score"] == "" and float(row["raw_score"]) > 0
    result = FAPM.load(model_file).predict_image(image)
    assert result.decision == "uncalibrated" and result.score is None and result.mask is None
    # a manual threshold gives decisions, recorded as manual
    metrics = evaluate_metrics(capsys, tmp_path / "e", "--model", str(model_file), "--data-root", str(part_data),
                       "--category", CATEGORY, "--threshold", "1e9", "--pixel-threshold", "1e9")
    assert metrics["threshold"] == 1e9 and metrics["threshold_method"] == "manual"
    assert metrics["false_alarm_rate"] == 0.0 and metrics["miss_rate"] == 1.0


# ---- plain folders: explanations and the report ---------------------------------------------------
def test_predict_explains_and_reports(capsys, flat_folders: Path, flat_model_file: Path, tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "predict", "--model", str(flat_model_file), str(flat_folders / "ok"),
                              str(flat_folders / "ng"),
                              "--explain", "--report", "--output", str(tmp_path), "--no-progress")
    assert code == 0 and err == "" and out.endswith("explanations/, report.html\n")
    with open(tmp_path / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and rows[0]["explanation"] == "explanations/ok/000.png.png"
    assert all((tmp_path / r["explanation"]).is_file() for r in rows)
    details = json.loads((tmp_path / "explanations.json").read_text())
    assert [d["explanation"] for d in details] == [r["explanation"] for r in rows]
    assert all(d["layers"][0]["train_image"].startswith(str(flat_folders / "train")) for d in details)
    page = (tmp_path / "report.html").read_text()
    assert page.count('<figure class="thumb">') == 6 and page.count('class="explain"') == 6
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    first = page
    assert run_main(capsys, "predict", "--model", str(flat_model_file), str(flat_folders / "ok"),
                    str(flat_folders / "ng"), "--explain",
                    "--report", "--output", str(tmp_path), "--no-progress")[0] == 0
    assert (tmp_path / "report.html").read_text() == first  # deterministic


def test_explain_is_refused_for_a_model_without_image_paths(capsys, flat_folders: Path, tmp_path: Path) -> None:
    model = FAPM(TINY)
    train = FolderDataset(good=flat_folders / "train", transform=model.transform)
    images = torch.stack([train[i]["image"] for i in range(len(train))])  # tensors: no paths to record
    path = model.fit(images, progress=False).save(tmp_path / "m.safetensors")
    code, _, err = run_main(capsys, "predict", "--model", str(path), str(flat_folders / "ok"), "--explain", "--output",
                            str(tmp_path / "p"))
    assert code == 2 and "does not record its training image paths" in one_line(err)
    assert not (tmp_path / "p").exists()  # refused before scoring anything


# ---- exported models ----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["onnx_file", "openvino_folder"])
def test_predict_command_runs_exports_like_the_torch_model(which: str, exports, export_calibrated: FAPM,
                                                           export_data: Path,
                                                           tmp_path: Path) -> None:
    if which == "openvino_folder":
        pytest.importorskip("openvino")
    model_file = export_calibrated.save(tmp_path / "model.safetensors")
    images = sorted((export_data / EXPORT_CATEGORY / "test").rglob("*.png"))[:5]
    target = exports["calibrated"] / "model.onnx" if which == "onnx_file" else exports["openvino"]
    assert cli.main(["predict", "--model", str(model_file), *map(str, images), "--output", str(tmp_path / "t"),
                 "--no-progress"]) == 0
    assert cli.main(["predict", "--model", str(target), *map(str, images), "--output", str(tmp_path / "x"),
                 "--no-progress"]) == 0
    ref, got = read_scores(tmp_path / "t" / "scores.csv"), read_scores(tmp_path / "x" / "scores.csv")
    assert list(ref) == list(got) == [str(p) for p in images]
    for path in ref:
        for column in ("raw_score", "score"):
            assert float(got[path][column]) == pytest.approx(float(ref[path][column]), rel=RTOL)
        assert got[path]["decision"] == ref[path]["decision"]
        assert (tmp_path / "x" / got[path]["overlay"]).is_file() and (tmp_path / "x" / got[path]["mask"]).is_file()
