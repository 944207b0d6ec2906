"""OpenVINO runs share one Core, so the CPU plugin's alternate signal stack outlives every compiled
model: releasing exported models in any order leaves the main thread's stack mapped (else the next
signal, e.g. SIGCHLD from a subprocess, kills the process with SIGSEGV and no traceback)."""
from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from fapm_lib import FAPM, FAPMConfig  # noqa: E402
from fapm_lib.deploy.exported import ExportedModel  # noqa: E402
from fapm_lib.deploy.graph_export import export_model  # noqa: E402
from fapm_lib.deploy.run_fapm import openvino_core  # noqa: E402
from tests.signal_stack_support import alt_stack_is_valid  # noqa: E402

TINY = FAPMConfig(resize=64, crop_size=64, grid=2, batch_size=4, coreset_ratio=0.5, calibration_folds=0)


def test_one_openvino_core_per_process() -> None:
    assert openvino_core() is openvino_core()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack: the CPU plugin sets it on Linux")
def test_exported_models_released_in_creation_order_leave_the_signal_stack_mapped(tmp_path: Path) -> None:
    model = FAPM(TINY).fit(torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)), progress=False)
    folder = export_model(model, tmp_path / "ov", "openvino").parent
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    first, second = ExportedModel(folder), ExportedModel(folder)
    first.predict_uint8(pixels), second.predict_uint8(pixels)
    del first  # not last-in-first-out: with a Core per model this unmapped the stack in use
    del second
    gc.collect()
    assert alt_stack_is_valid()
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0  # a child's SIGCHLD is delivered
