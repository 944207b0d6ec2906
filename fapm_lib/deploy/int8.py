"""Optional INT8: post-training quantization of the backbone of an OpenVINO export (NNCF).

Only the backbone's operations (``/fapm/backbone/...``: the exported graph's FAPM module, its
backbone) are quantized; the memory search, the
layer fusion, the anomaly map and the score stay in float32. The activation ranges are
calibrated on **training (normal) images only**, prepared as for inference (the native canvas, or the
protocol's resize and crop).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .run_fapm import openvino_core

#: operations outside the backbone stay float32 (regex over OpenVINO's friendly names)
KEEP_FLOAT = r"^(?!/fapm/backbone/).*"


def quantize_openvino(xml_path: str | Path, images: list[np.ndarray], output: str | Path,
                      batch_size: int | None = None, progress: bool = True) -> dict:
    """Quantize ``xml_path``'s backbone to INT8 with NNCF, calibrated on ``images`` (uint8
    ``[H, W, C]`` each, training images); write the IR to ``output``. Returns what was done."""
    try:
        import nncf
        import openvino  # noqa: F401  (nncf quantizes an OpenVINO model: both are needed)
    except ImportError:
        raise ConfigError("--int8 needs nncf and openvino: pip install nncf openvino") from None
    if not images:
        raise ConfigError("--int8: no calibration images")
    import logging

    nncf.set_log_level(logging.WARNING)  # not one line per float operation kept
    n = batch_size or 1
    batches = [np.stack(images[i : i + n]) for i in range(0, len(images) - n + 1, n)]
    core = openvino_core()
    # the shared Core's CPU plugin first, so the plugins NNCF makes for its statistics (each with its
    # own alternate signal stack, see openvino_core) are stacked on one that outlives them
    core.get_property("CPU", "FULL_DEVICE_NAME")
    model = core.read_model(str(xml_path))
    with contextlib.ExitStack() as quiet:
        if not progress:  # NNCF's progress bars print to the console as they go
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                                  ignored_scope=nncf.IgnoredScope(patterns=[KEEP_FLOAT], validate=False))

    save_ir(quantized, output)
    return {"method": "NNCF post-training quantization (nncf.quantize), INT8 weights and activations",
            "scope": "backbone only; search, fusion, map and score in float32",
            "calibration_images": len(batches) * n, "calibration_split": "train (normal images only)",
            "nncf_version": nncf.__version__}


def save_ir(ov_model, xml_path: str | Path) -> Path:
    """``ov.save_model`` (float32 weights kept) onto ``xml_path`` and its ``.bin``, each file
    replaced in one step."""
    import os

    import openvino as ov

    xml_path = Path(xml_path)
    tmp = xml_path.with_name(f".{xml_path.stem}.tmp.xml")
    try:
        ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp, xml_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    return xml_path
