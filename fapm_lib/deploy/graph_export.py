"""Export a fitted FAPM as one graph: uint8 image in, anomaly map, scores and decisions out.

The graph (:class:`FAPMGraph`) holds every step after decoding and resizing::

    uint8 [B, H, W, C] (the model's canvas: C = 1 gray or 3 RGB, channels last)
      -> float, / 255, (x - mean) / std           -> [B, C, H, W]
      -> FAPMModel, traced as is: the gray channel expanded, the canvas padded to whole regions,
         the backbone (tile by tile, blended, when the canvas is larger than a tile), 3x3
         pooling, per-region search with the banks as constants, layer alignment (2x2 tiling),
         fusion, anomaly map, image score
      -> with a calibration: normalised score, decision, mask, normalised map

Outputs, by name: ``anomaly_map [B, H, W]``, ``raw_score [B]``, ``patch_scores [B, H/8, W/8]``
and, for a calibrated model, ``score [B]``, ``decision [B]`` (bool, True = NG), ``mask [B, H, W]``
(bool) and ``score_map [B, H, W]``. The sidecar ``fapm_export.json`` describes the input
contract, what to do before the graph (the native canvas, or the protocol's resize and crop),
the thresholds and the versions.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.transform import ASPECT_TOLERANCE
from ..decisions.calibration import Calibration, normalize_score
from ..detectors.fapm import FAPM
from ..errors import ConfigError, ModelFileError
from ..method.backbone import FEATURE_STRIDES
from ..method.geometry import valid_cells
from ..system.atomic import atomic_path, write_text_atomic

SIDECAR = "fapm_export.json"
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"
RUNNER = "run_fapm.py"
FORMATS = ("onnx", "openvino")
EXPORT_FORMAT_VERSION = 1
OPSET = 17
INPUT_NAME = "image"
BASE_OUTPUTS = ("anomaly_map", "raw_score", "patch_scores")
CALIBRATED_OUTPUTS = ("score", "decision", "mask", "score_map")


def output_names(calibrated: bool) -> tuple[str, ...]:
    """The graph's output names, in order."""
    return BASE_OUTPUTS + (CALIBRATED_OUTPUTS if calibrated else ())


class FAPMGraph(nn.Module):
    """What is exported: ``uint8 [B, H, W, C]`` -> the named outputs (:func:`output_names`), in
    that order. The normalisation, then the fitted :class:`~fapm_lib.method.fapm_model.FAPMModel`
    as is (the same search, alignment, map and score that ``predict`` runs), then, for a
    calibrated model, the normalised scores and the decisions."""

    def __init__(self, model: FAPM, calibration: Calibration | None = None) -> None:
        super().__init__()
        info, channels = model.backbone_info, model.channels or 3
        self.fapm = model.runnable()
        self.register_buffer("mean", torch.tensor(info.mean[:channels], dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(info.std[:channels], dtype=torch.float32).view(1, channels, 1, 1))
        self.calibration = calibration

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = image.permute(0, 3, 1, 2).float() / 255.0  # as data.transform.Transform.image
        prediction = self.fapm((x - self.mean) / self.std)
        amap, raw = prediction.anomaly_map, prediction.pred_score
        outputs = (amap, raw, prediction.patch_scores)
        cal = self.calibration
        if cal is not None:
            score = normalize_score(raw, cal.image_threshold, cal.image_scale)
            score_map = normalize_score(amap, cal.pixel_threshold, cal.pixel_scale)
            outputs += (score, raw >= cal.image_threshold, amap >= cal.pixel_threshold, score_map)
        return outputs


def model_calibration(model: FAPM) -> Calibration | None:
    """``model.calibration`` when the model has one (None otherwise), checked to be usable."""
    cal = getattr(model, "calibration", None)
    if cal is None:
        return None
    for name in ("image_threshold", "image_scale", "pixel_threshold", "pixel_scale"):
        value = getattr(cal, name, None)
        if not isinstance(value, (int, float)) or value != value or (name.endswith("scale") and value <= 0):
            raise ConfigError(f"calibration.{name}={value!r}: must be a finite number (scales > 0)")
    return cal


def parse_batch_size(value: str | int) -> int | None:
    """``--batch-size``: a positive integer (fixed) or ``dynamic`` (None)."""
    if isinstance(value, int) or str(value).isdigit():
        n = int(value)
        if n >= 1:
            return n
    elif str(value) == "dynamic":
        return None
    raise ConfigError(f"--batch-size {value}: must be a positive integer or 'dynamic'")


def export_onnx(model: FAPM, path: str | Path, batch_size: int | None = None,
                calibration: Calibration | None = None) -> Path:
    """Write ``model`` as one ONNX graph (TorchScript-based ``torch.onnx.export``, opset
    :data:`OPSET`); ``batch_size`` None: a dynamic batch dimension."""
    model = model.to("cpu")
    graph = FAPMGraph(model, calibration).eval()
    names = output_names(calibration is not None)
    example = torch.zeros(batch_size or 2, *model.canvas, model.channels or 3, dtype=torch.uint8)
    dynamic = None if batch_size else {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(graph, (example,), str(tmp), input_names=[INPUT_NAME], output_names=list(names),
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    return Path(path)


def convert_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """ONNX -> OpenVINO IR (``.xml`` + ``.bin``), weights kept in float32."""
    import openvino as ov

    from .int8 import save_ir  # the IR writer lives beside the INT8 step that also uses it

    return save_ir(ov.convert_model(str(onnx_path)), xml_path)


def sidecar(model: FAPM, fmt: str, model_file: str, batch_size: int | None,
            calibration: Calibration | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON description of an export: everything needed to run it without this library."""
    cfg, info = model.config, model.backbone_info
    height, width = model.canvas
    channels = model.channels or 3
    batch = batch_size if batch_size else "batch"
    cells = list(valid_cells(model.canvas, FEATURE_STRIDES[0]))
    shapes = {"anomaly_map": [batch, height, width], "raw_score": [batch], "patch_scores": [batch, *cells],
              "score": [batch], "decision": [batch], "mask": [batch, height, width],
              "score_map": [batch, height, width]}
    return {
        "format": "fapm_export", "format_version": EXPORT_FORMAT_VERSION, "runtime_format": fmt,
        "model_file": model_file,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC",
                  "channels": "gray" if channels == 1 else "RGB",
                  "shape": [batch, height, width, channels]},
        "batch_size": batch_size if batch_size else "dynamic",
        "preprocessing": preprocessing(model),
        "outputs": {name: {"shape": shapes[name], "dtype": "bool" if name in ("decision", "mask") else "float32"}
                    for name in output_names(calibration is not None)},
        "calibration": None if calibration is None else {
            k: v for k, v in asdict(calibration).items() if k != "summary"},
        "model": {"backbone": info.name, "pretrained": info.pretrained, "image_score": cfg.image_score,
                  "grid": list(model.region_grid), "k": cfg.k, "feature_sizes": [list(s) for s in model.feature_sizes],
                  "memory_mb": round(model.memory_size()["megabytes"], 3), "config": cfg.to_dict()},
        "versions": versions(),
        "runtime_notes": ("OpenVINO: compile with INFERENCE_PRECISION_HINT=f32 (on CPUs with bf16 support its "
                          "default precision is bf16, which changes the maps); a fixed-batch graph takes exactly "
                          "batch_size images (run_fapm.py pads the last chunk)"),
        **(extra or {}),
    }


def preprocessing(model: FAPM) -> dict[str, Any]:
    """The sidecar's ``preprocessing``: what a runner does to a decoded image before the graph
    (``mode`` native: the whole image resized to the ``canvas`` when its size differs, the same
    aspect ratio only; ``mode`` protocol: ``resize`` and ``crop_size``), and what the graph does."""
    cfg, info = model.config, model.backbone_info
    channels = model.channels or 3
    common = {"channels": channels, "interpolation": "bilinear (Pillow)",
              "in_graph": "x = uint8 / 255; x = (x - mean) / std (per channel; gray: the first channel's)",
              "mean": list(info.mean), "std": list(info.std)}
    if cfg.native:
        return {"mode": "native", "canvas": list(model.canvas), "resize": None, "crop_size": None,
                "rule": f"the whole image; resized to {model.canvas[1]}x{model.canvas[0]} (width x height) "
                        "when its size "
                        f"differs, refused when its aspect ratio differs by more than {ASPECT_TOLERANCE:.0%}",
                **common}
    return {"mode": "protocol", "resize": cfg.resize, "crop_size": cfg.crop_size,
            "rule": ("resize the shorter side to `resize` (longer side int(resize * long / short)), then centre-crop "
                     "`crop_size` (offsets round((side - crop) / 2))"
                     if cfg.crop_size else "resize to resize x resize"),
            **common}


def versions() -> dict[str, str | None]:
    """Versions of the packages that made the export."""
    from importlib import metadata

    from .. import __version__

    out: dict[str, str | None] = {"fapm": __version__, "torch": torch.__version__}
    for pkg in ("onnx", "onnxruntime", "openvino", "timm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_model(model: FAPM, output: str | Path, fmt: str = "onnx", batch_size: int | None = None,
                 int8_images: list | None = None, progress: bool = True) -> Path:
    """Export ``model`` into the folder ``output``: the graph (``model.onnx``, and for
    ``openvino`` also ``model.xml``/``.bin``), ``fapm_export.json`` and ``run_fapm.py``
    (``model`` is moved to the CPU). ``int8_images`` (uint8 ``[S, S, 3]`` training images, OpenVINO only): quantize the
    backbone of ``model.xml`` to INT8 (:mod:`fapm_lib.deploy.int8`). Returns the sidecar's path."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    if int8_images is not None and fmt != "openvino":
        raise ConfigError("--int8: only with --format openvino (NNCF quantizes the OpenVINO model)")
    if model.kind != "fapm":
        raise ModelFileError(f"only FAPM models can be exported (got a {model.kind} model)")
    calibration = model_calibration(model)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, out / ONNX_FILE, batch_size, calibration)
    files = {ONNX_FILE: file_sha256(onnx_path)}
    model_file, extra = ONNX_FILE, {}
    if fmt == "openvino" and int8_images is None:
        convert_openvino(onnx_path, out / OPENVINO_FILE)
        model_file = OPENVINO_FILE
    elif fmt == "openvino":
        from .int8 import quantize_openvino

        fp32 = convert_openvino(onnx_path, out / ".model_fp32.xml")
        try:
            extra["quantization"] = quantize_openvino(fp32, int8_images, out / OPENVINO_FILE, batch_size, progress)
        finally:
            fp32.unlink(missing_ok=True)
            fp32.with_suffix(".bin").unlink(missing_ok=True)
        model_file = OPENVINO_FILE
    if fmt == "openvino":
        files.update({OPENVINO_FILE: file_sha256(out / OPENVINO_FILE), "model.bin": file_sha256(out / "model.bin")})
    runner = Path(__file__).with_name(RUNNER)
    with atomic_path(out / RUNNER) as tmp:
        shutil.copyfile(runner, tmp)
    meta = sidecar(model, fmt, model_file, batch_size, calibration,
                   {"exporter": "torch.onnx.export (TorchScript-based, dynamo=False)", "opset": OPSET, "files": files,
                    "quantization": None, **extra})
    return write_text_atomic(out / SIDECAR, json.dumps(meta, indent=2))


# ---- the `fapm export` command --------------------------------------------------------------
CHECK_IMAGES = 2
#: exported vs torch anomaly maps: largest difference relative to the largest map value
PARITY_RTOL = 1e-4


def parity(model: FAPM, exported, images) -> dict[str, float | bool]:
    """Compare the exported graph with the torch model on uint8 ``images [B, H, W, C]``: the
    largest map difference relative to the largest map value, the same for the raw scores,
    and whether the decisions (when calibrated) agree."""
    import numpy as np

    t = model.transform
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    c = x.shape[1]
    x = (x - torch.tensor(t.mean[:c]).view(1, c, 1, 1)) / torch.tensor(t.std[:c]).view(1, c, 1, 1)
    ref = model.predict(x)
    got = exported.predict_uint8(np.asarray(images))
    scale = float(ref.anomaly_map.abs().max()) or 1.0
    out: dict[str, float | bool] = {
        "map_rel_diff": float((got.anomaly_map - ref.anomaly_map).abs().max()) / scale,
        "score_rel_diff": float(((got.pred_score - ref.pred_score).abs()
                                 / ref.pred_score.abs().clamp_min(1e-12)).max()),
    }
    cal = model_calibration(model)
    if cal is not None and got.decision is not None:
        out["decisions_equal"] = bool(torch.equal(got.decision, ref.pred_score >= cal.image_threshold))
    return out
