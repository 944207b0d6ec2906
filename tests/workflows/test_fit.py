"""``fapm fit``: settings that would not act are refused with one line, and a plain folder of good images
is fitted on, listing what it skipped. Tiny 64 px parts, real offline backbone."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import one_line, run_main
from tests.parts_support import CATEGORY, TINY_YAML

pytestmark = pytest.mark.usefixtures("cached_extractors")


@pytest.mark.parametrize(("flags", "expected"), [
    (["--image-score", "reweighted", "--k", "1"], "k=1 must be >= 2 with image_score reweighted"),
    (["--k", "8"], "--k=8 acts only with image_score reweighted"),
    (["--false-alarm-rate", "0"], "false_alarm_rate=0.0 must be in (0, 1)"),
    (["--calibration-folds", "1"], "calibration_folds=1 must be 0 (no calibration) or >= 2"),
])
def test_fit_refuses_settings_that_would_not_act(capsys, tmp_path: Path, part_data: Path, part_yaml: Path,
                                                 flags: list[str], expected: str) -> None:
    code, _, err = run_main(capsys, "fit", "--config", str(part_yaml), "--data-root", str(part_data),
                            "--category", CATEGORY, *flags, "--output", str(tmp_path / "o"))
    assert code == 2 and expected in one_line(err)
    assert not (tmp_path / "o").exists()


def test_yaml_k_with_max_is_refused(capsys, tmp_path: Path, part_data: Path) -> None:
    config = tmp_path / "k.yaml"
    config.write_text(TINY_YAML + "k: 8\n")
    code, _, err = run_main(capsys, "fit", "--config", str(config), "--data-root", str(part_data),
                            "--category", CATEGORY, "--output", str(tmp_path / "o"))
    assert code == 2 and one_line(err) == (f"fapm fit: error: {config}: k=8 acts only with image_score reweighted "
                                          "(the max score and the maps read the nearest distance only); drop it "
                                          "or set image_score reweighted")


def test_fit_on_a_flat_folder_lists_what_it_skipped(capsys, flat_folders: Path, tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "fit", "--config", str(flat_folders.parent / "tiny.yaml"), "--good",
                              str(flat_folders / "train"), "--output", str(tmp_path), "--no-progress")
    assert code == 0 and out.startswith(f"fitted {flat_folders / 'train'} on 10 images")
    assert one_line(err) == f"skipped: {flat_folders / 'train' / 'notes.txt'}: not an image file"
