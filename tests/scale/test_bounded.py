"""Bounded-memory fit (``max_memory``): bit-identical to the in-RAM fit, its store cleaned up also on
errors, a budget too small refused with the minimum, the same through ``fapm fit --max-memory``, and the
peak RSS of a real process under the budget."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fapm_lib import FAPM, FAPMConfig
from fapm_lib.cli import main as cli
from fapm_lib.data.synthetic import generate_category
from fapm_lib.errors import ConfigError, DataError
from tests.helpers import REPO
from tests.scale_support import Stub, assert_same_memory, map_batches

ROOT = REPO


@pytest.mark.parametrize("known_count", [True, False])
def test_bounded_fit_is_bit_identical_to_in_ram(tmp_path: Path, known_count: bool) -> None:
    config = FAPMConfig(coreset_ratio=0.05)
    ref = FAPM(config, extractor=Stub()).fit_map_batches(map_batches(20), 20)
    assert any(m.far.any() for m in ref.memories)
    bounded = FAPM(config.replace(max_memory="64GB", store_dir=str(tmp_path), calibration_folds=0), extractor=Stub())
    bounded.fit_map_batches(map_batches(20), 20 if known_count else None)
    assert_same_memory(ref.memories, bounded.memories)
    assert list(tmp_path.iterdir()) == []


def test_bounded_fit_cleans_up_its_store_on_errors(tmp_path: Path) -> None:
    def failing():
        yield from map_batches(6)
        raise DataError("unreadable image")

    model = FAPM(FAPMConfig(max_memory="64GB", store_dir=str(tmp_path), calibration_folds=0), extractor=Stub())
    with pytest.raises(DataError, match="unreadable"):
        model.fit_map_batches(failing(), 12)
    with pytest.raises(DataError, match="no training images"):
        model.fit_map_batches(iter([]), None)
    assert list(tmp_path.iterdir()) == [] and not model.is_fitted


def test_too_small_budget_is_refused_with_the_minimum() -> None:
    model = FAPM(FAPMConfig(max_memory="50MB", calibration_folds=0), extractor=Stub())
    with pytest.raises(ConfigError) as info:
        model.fit_map_batches(map_batches(12), 12)
    message = str(info.value)
    assert message.startswith("max_memory=50MB is too small for this fit") and "\n" not in message
    need = int(message.split("needs at least ")[1].split(" MB")[0])
    parts = [int(x) for x in re.findall(r" (\d+) MB", message.split("needs at least ")[1])]
    assert need > 50 and len(parts) == 4 and abs(sum(parts) - need) <= len(parts)  # the parts add up (rounding)
    # the stated minimum is enough (give or take what the process itself grows in between)
    enough = FAPMConfig(max_memory=f"{need + 50}MB", calibration_folds=0)
    fitted = FAPM(enough, extractor=Stub()).fit_map_batches(map_batches(12), 12)
    assert fitted.is_fitted


def test_cli_fit_with_max_memory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    generate_category(data, "vial", size=96, n_train=6, n_test_good=1, n_per_defect=1)
    common = ["--data-root", str(data), "--category", "vial", "--no-progress", "--batch-size", "4",
              "--coreset-ratio", "0.2", "--calibration-folds", "0"]
    assert cli.main(["fit", *common, "--output", str(tmp_path / "a")]) == 0
    store = tmp_path / "store"
    store.mkdir()
    assert cli.main(["fit", *common, "--max-memory", "64GB", "--store-dir", str(store),
                     "--output", str(tmp_path / "b")]) == 0
    assert list(store.iterdir()) == []
    a, b = FAPM.load(tmp_path / "a" / "model.safetensors"), FAPM.load(tmp_path / "b" / "model.safetensors")
    assert_same_memory(a.memories, b.memories)
    capsys.readouterr()
    assert cli.main(["fit", *common, "--max-memory", "20MB", "--output", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_memory=20MB is too small for this fit" in err[0] and "needs at least" in err[0]
    assert not (tmp_path / "c" / "model.safetensors").exists()
    assert cli.main(["fit", *common, "--max-memory", "lots", "--output", str(tmp_path / "c")]) == 2
    assert "max_memory='lots'" in capsys.readouterr().err


def measure(*args: str) -> dict:
    cmd = [sys.executable, str(ROOT / "tools" / "measure_fit_rss.py"), "--synthetic-features", "--no-progress", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_stays_under_the_budget(tmp_path: Path) -> None:
    """Real processes, 300 WRN-shaped images (722 MB of features): in RAM, then with a budget of
    the process's own size plus 450 MB, which the in-RAM fit exceeds: same memory, peak under it."""
    common = ("--n-images", "300", "--coreset-ratio", "0.01")
    in_ram = measure(*common)
    budget_mb = int(in_ram["rss_before_fit_mb"] + 450)
    assert in_ram["peak_rss_mb"] > budget_mb  # the budget binds
    bounded = measure(*common, "--max-memory", f"{budget_mb}MB", "--store-dir", str(tmp_path))
    assert bounded["peak_rss_mb"] < budget_mb
    assert bounded["memory_sha256"] == in_ram["memory_sha256"]
    assert bounded["regions_per_chunk"]["coreset"]["0"] < 49 and list(tmp_path.iterdir()) == []
