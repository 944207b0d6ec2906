"""``fapm update``: normal images added to a fitted model from the command line, each one's score before
and after, the model written where asked; what cannot be updated is refused with one line. Tiny 64 px
parts, grid 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from fapm_lib import FAPM, MVTecDataset, PatchCore
from fapm_lib.detectors.model_file import MODEL_FILE
from tests.helpers import one_line, run_main
from tests.parts_support import CATEGORY, TINY

pytestmark = pytest.mark.usefixtures("cached_extractors")


def test_update_command(capsys, labelled_root: Path, labelled_model_file: Path, tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "update", "--model", str(labelled_model_file), "--add-good",
                              str(labelled_root / "marked"),
                              "--output", str(tmp_path / "m2"), "--no-progress")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].startswith("label_0.png: raw ") and " NG -> " in lines[0] and lines[0].endswith(" OK")
    assert lines[-1].startswith("added 2 normal images in ") and "(NG before: 2, after: 0)" in lines[-1]
    assert FAPM.load(tmp_path / "m2" / MODEL_FILE).calibration.summary["n_images"] == 12
    code, _, _ = run_main(capsys, "update", "--model", str(labelled_model_file), "--add-good",
                          str(labelled_root / "marked"),
                          "--output", str(tmp_path / "m3.safetensors"), "--no-progress")
    assert code == 0 and (tmp_path / "m3.safetensors").is_file()


def test_update_refusals_are_one_line(capsys, labelled_root: Path, labelled_model_file: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    code, _, err = run_main(capsys, "update", "--model", str(labelled_model_file), "--add-good",
                            str(tmp_path / "empty"),
                            "--output", str(tmp_path / "o"))
    assert code == 2 and one_line(err).endswith("empty: no images found")
    train = MVTecDataset(labelled_root, CATEGORY, "train", FAPM(TINY).transform)
    patchcore = PatchCore(TINY).fit(train, progress=False)
    pc = patchcore.save(tmp_path / "pc.safetensors")
    code, _, err = run_main(capsys, "update", "--model", str(pc), "--add-good", str(labelled_root / "marked"),
                            "--output", str(tmp_path / "o"))
    assert code == 2 and "holds a patchcore model, not a fapm model" in one_line(err)
