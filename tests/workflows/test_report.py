"""``fapm fit --good``, ``fapm evaluate --good --defect --masks --report`` and ``fapm predict
--explain --report`` on plain folders: the files, the columns, the self-contained page, and the
refusals (one line each). Tiny 64 px parts."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fapm_lib import FAPM, FolderDataset
from fapm_lib.detectors.model_file import MODEL_FILE
from tests.decisions.test_decisions import CATEGORY, TINY, TINY_YAML, cached_extractors, one_line, run_main, write_tree  # noqa: F401


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flat/train (png and a jpg copy in a sub-folder, a text file), flat/ok, flat/ng/crack, flat/gt/crack."""
    tree = write_tree(tmp_path_factory.mktemp("flat") / "mvtec", n_train=10, n_good=3, n_bad=3)
    part, flat = tree / CATEGORY, tree.parent / "flat"
    shutil.copytree(part / "train" / "good", flat / "train")
    (flat / "train" / "line2").mkdir()
    for png in sorted((flat / "train").glob("00[0-2].png")):
        Image.open(png).save(flat / "train" / "line2" / f"{png.stem}.jpg", quality=95)
        png.unlink()
    (flat / "train" / "notes.txt").write_text("shift 3")
    shutil.copytree(part / "test" / "good", flat / "ok")
    shutil.copytree(part / "test" / "crack", flat / "ng" / "crack")
    shutil.copytree(part / "ground_truth" / "crack", flat / "gt" / "crack")
    (tree.parent / "tiny.yaml").write_text(TINY_YAML)
    return flat


@pytest.fixture(scope="module")
def model(folders: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fapm_lib.cli import main as cli

    out = tmp_path_factory.mktemp("model")
    assert cli.main(["fit", "--config", str(folders.parent / "tiny.yaml"), "--good", str(folders / "train"),
                     "--output", str(out), "--no-progress"]) == 0
    return out / MODEL_FILE


def test_fit_on_a_flat_folder_lists_what_it_skipped(capsys, folders: Path, tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "fit", "--config", str(folders.parent / "tiny.yaml"), "--good",
                              str(folders / "train"), "--output", str(tmp_path), "--no-progress")
    assert code == 0 and out.startswith(f"fitted {folders / 'train'} on 10 images")
    assert one_line(err) == f"skipped: {folders / 'train' / 'notes.txt'}: not an image file"


def test_evaluate_flat_folders_with_masks_and_a_report(capsys, folders: Path, model: Path, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "evaluate", "--model", str(model), "--good", str(folders / "ok"), "--defect",
                            str(folders / "ng"), "--masks", str(folders / "gt"), "--report", "--output",
                            str(tmp_path), "--no-progress")
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test"] == 6 and metrics["pixel_auroc"] is not None and metrics["image_auroc"] > 0.5
    assert metrics["settings"]["good"] == str(folders / "ok") and metrics["settings"]["masks"] == str(folders / "gt")
    page = (tmp_path / "report.html").read_text()
    assert page.count('<figure class="thumb">') == 6 and page.count("truth <b") == 6
    assert "<h2>Metrics</h2>" in page and page.count('class="explain"') == 6  # every test image picked


def test_predict_explains_and_reports(capsys, folders: Path, model: Path, tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "predict", "--model", str(model), str(folders / "ok"), str(folders / "ng"),
                              "--explain", "--report", "--output", str(tmp_path), "--no-progress")
    assert code == 0 and err == "" and out.endswith("explanations/, report.html\n")
    with open(tmp_path / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and rows[0]["explanation"] == "explanations/ok/000.png.png"
    assert all((tmp_path / r["explanation"]).is_file() for r in rows)
    details = json.loads((tmp_path / "explanations.json").read_text())
    assert [d["explanation"] for d in details] == [r["explanation"] for r in rows]
    assert all(d["layers"][0]["train_image"].startswith(str(folders / "train")) for d in details)
    page = (tmp_path / "report.html").read_text()
    assert page.count('<figure class="thumb">') == 6 and page.count('class="explain"') == 6
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    first = page
    assert run_main(capsys, "predict", "--model", str(model), str(folders / "ok"), str(folders / "ng"), "--explain",
                    "--report", "--output", str(tmp_path), "--no-progress")[0] == 0
    assert (tmp_path / "report.html").read_text() == first  # deterministic


@pytest.mark.parametrize("case", ["both", "no_model", "no_defect", "categories", "masks_alone", "validation"])
def test_folder_flags_that_cannot_act_are_refused(capsys, folders: Path, model: Path, tmp_path: Path,
                                                  case: str) -> None:
    base = ["evaluate", "--output", str(tmp_path), "--no-progress"]
    argv, expected = {
        "both": (["fit", "--good", str(folders / "train"), "--data-root", str(folders), "--category", "x",
                  "--output", str(tmp_path)], "give --good (with --defect, --masks) or --data-root with --category"),
        "no_model": (base + ["--good", str(folders / "ok"), "--defect", str(folders / "ng")],
                     "give the fitted --model"),
        "no_defect": (base + ["--model", str(model), "--good", str(folders / "ok")], "needs both --good DIR"),
        "categories": (base + ["--good", str(folders / "ok"), "--categories", "all"], "drop --categories"),
        "masks_alone": (base + ["--model", str(model), "--good", str(folders / "ok"), "--masks", str(folders / "gt")],
                        "needs both --good DIR"),
        "validation": (["fit", "--good", str(folders / "train"), "--validation-root", str(folders), "--output",
                        str(tmp_path)], "--validation-root reads the MVTec layout"),
    }[case]
    code, _, err = run_main(capsys, *argv)
    assert code == 2 and expected in one_line(err)


def test_explain_is_refused_for_a_model_without_image_paths(capsys, folders: Path, tmp_path: Path) -> None:
    model = FAPM(TINY)
    train = FolderDataset(good=folders / "train", transform=model.transform)
    images = torch.stack([train[i]["image"] for i in range(len(train))])  # tensors: no paths to record
    path = model.fit(images, progress=False).save(tmp_path / "m.safetensors")
    code, _, err = run_main(capsys, "predict", "--model", str(path), str(folders / "ok"), "--explain", "--output",
                            str(tmp_path / "p"))
    assert code == 2 and "does not record its training image paths" in one_line(err)
    assert not (tmp_path / "p").exists()  # refused before scoring anything

