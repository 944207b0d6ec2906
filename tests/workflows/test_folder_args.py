"""``--good`` / ``--defect`` / ``--masks`` on the command line: flags that cannot act together are refused
with one line each. Tiny 64 px parts."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import one_line, run_main

pytestmark = pytest.mark.usefixtures("cached_extractors")


@pytest.mark.parametrize("case", ["both", "no_model", "no_defect", "categories", "masks_alone", "validation"])
def test_folder_flags_that_cannot_act_are_refused(capsys, flat_folders: Path, flat_model_file: Path, tmp_path: Path,
                                                  case: str) -> None:
    base = ["evaluate", "--output", str(tmp_path), "--no-progress"]
    argv, expected = {
        "both": (["fit", "--good", str(flat_folders / "train"), "--data-root", str(flat_folders), "--category", "x",
                  "--output", str(tmp_path)], "give --good (with --defect, --masks) or --data-root with --category"),
        "no_model": (base + ["--good", str(flat_folders / "ok"), "--defect", str(flat_folders / "ng")],
                     "give the fitted --model"),
        "no_defect": (base + ["--model", str(flat_model_file), "--good", str(flat_folders / "ok")],
                      "needs both --good DIR"),
        "categories": (base + ["--good", str(flat_folders / "ok"), "--categories", "all"], "drop --categories"),
        "masks_alone": (base + ["--model", str(flat_model_file), "--good", str(flat_folders / "ok"), "--masks",
                                str(flat_folders / "gt")], "needs both --good DIR"),
        "validation": (["fit", "--good", str(flat_folders / "train"), "--validation-root", str(flat_folders),
                        "--output", str(tmp_path)], "--validation-root reads the MVTec layout"),
    }[case]
    code, _, err = run_main(capsys, *argv)
    assert code == 2 and expected in one_line(err)
