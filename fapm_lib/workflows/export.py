"""``fapm export``: write one ONNX / OpenVINO graph of a fitted model with its sidecar and the
standalone runner (:mod:`fapm_lib.deploy.graph_export`), then check it against the torch model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..data.mvtec import list_samples
from ..deploy.exported import ExportedModel
from ..deploy.graph_export import (
    CHECK_IMAGES,
    FORMATS,
    PARITY_RTOL,
    RUNNER,
    SIDECAR,
    export_model,
    parity,
    parse_batch_size,
    preprocessing,
)
from ..deploy.run_fapm import load_rgb, prepare
from ..detectors.fapm import FAPM
from ..errors import ConfigError, ModelFileError


def run_export(args: argparse.Namespace) -> int:
    """``fapm export``: write the export folder, then check it against the torch model."""
    if args.format not in FORMATS:
        raise ConfigError(f"--format {args.format}: must be one of {', '.join(FORMATS)}")
    if args.int8 and args.format != "openvino":
        raise ConfigError("--int8: only with --format openvino (NNCF quantizes the OpenVINO model)")
    batch = parse_batch_size(args.batch_size)
    model = FAPM.load(args.model)
    int8_images = None
    if args.int8:
        if not args.data_root or not args.category:
            raise ConfigError("--int8 needs --data-root and --category (its training images calibrate the ranges)")
        pre = preprocessing(model)
        int8_images = [prepare(load_rgb(s.path, pre["resize"], pre["channels"]), pre, str(s.path))
                       for s in list_samples(args.data_root, args.category, "train")]
    elif args.data_root or args.category:
        raise ConfigError("--data-root/--category are only used with --int8")
    path = export_model(model, args.output, args.format, batch, int8_images, progress=not args.no_progress)
    meta = json.loads(path.read_text())
    out = Path(args.output)
    size_mb = sum((out / f).stat().st_size for f in meta["files"]) / 2**20
    print(f"wrote {out}: {', '.join(meta['files'])} ({size_mb:.1f} MB), {RUNNER}, {SIDECAR}; "
          f"input uint8 {meta['input']['shape']} (NHWC, {meta['input']['channels']}; {meta['preprocessing']['rule']}), "
          f"batch {meta['batch_size']}")
    if meta["calibration"] is None:
        print("no calibration in this model: the graph outputs anomaly_map, raw_score and patch_scores only "
              "(no normalised score, decision or mask)")
    else:
        print(f"calibrated: outputs {', '.join(meta['outputs'])} (image threshold "
              f"{meta['calibration']['image_threshold']:.4g}, "
              f"pixel threshold {meta['calibration']['pixel_threshold']:.4g})")
    if not args.no_check:
        n = batch or CHECK_IMAGES
        images = np.random.default_rng(0).integers(0, 256, (n, *meta["input"]["shape"][1:]), dtype=np.uint8)
        check = parity(model, ExportedModel(out, threads=args.threads), images)
        line = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items())
        print(f"check against the torch model on {n} random images ({meta['runtime_format']}): {line}")
        if args.int8:
            return 0  # INT8 differs by design; its accuracy is measured by `fapm benchmark`
        if check["map_rel_diff"] > PARITY_RTOL or not check.get("decisions_equal", True):
            raise ModelFileError(f"{out}: the exported graph disagrees with the torch model ({line})")
    return 0
