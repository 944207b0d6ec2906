"""``fapm export``: bad options are one line each, a model without calibration exports and says so."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fapm_lib.cli.main import main  # noqa: E402
from fapm_lib.detectors.fapm import FAPM  # noqa: E402


def test_export_cli_options(tmp_path: Path, export_fitted: FAPM, capsys) -> None:
    model_file = export_fitted.save(tmp_path / "model.safetensors")
    for extra, expected in [(["--batch-size", "zero"], "--batch-size zero"), (["--int8"], "--int8: only with"),
                            (["--format", "openvino", "--int8"], "--int8 needs --data-root"),
                            (["--data-root", "x"], "only used with --int8")]:
        code = main(["export", "--model", str(model_file), "--output", str(tmp_path / "e"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert main(["export", "--model", str(tmp_path / "missing.safetensors"), "--output", str(tmp_path / "e")]) == 2


def test_export_without_calibration_works_and_says_so(tmp_path: Path, export_fitted: FAPM, capsys) -> None:
    model_file = export_fitted.save(tmp_path / "model.safetensors")
    assert main(["export", "--model", str(model_file), "--batch-size", "1", "--output", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "no calibration" in out and "map_rel_diff" in out
    assert json.loads((tmp_path / "e" / "fapm_export.json").read_text())["batch_size"] == 1
