"""`fapm predict`'s work: score images; write scores.csv, a mask and a calibrated overlay per image,
named after the source folder (``good/000.png``), all atomically."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from ..data.folders import output_names
from ..data.images import load_image
from ..decisions.results import Result, predict_images, resolve_calibration
from ..deploy.exported import load_predictor
from ..errors import DataError
from ..report.viz import calibrated_overlay, overlay, save_png, with_caption
from ..system.atomic import write_text_atomic
from .options import check_device as _device

COLUMNS = ("path", "raw_score", "score", "decision", "mask", "overlay")


def run_predict(args: argparse.Namespace, model=None) -> int:
    """Score every image given (files or folders, recursive); ``model``: an already loaded one."""
    # FAPM.load for .safetensors; onnxruntime / OpenVINO for an export (folder, .onnx, .xml)
    model = model or load_predictor(args.model, _device(args.device), getattr(args, "threads", None))
    named = output_names(args.inputs)
    if not named:
        raise DataError("no images found in " + ", ".join(args.inputs))
    calibration = resolve_calibration(model, args.threshold, args.pixel_threshold)
    if calibration is None:
        print(f"fapm predict: note: {args.model} is uncalibrated (fitted with calibration_folds 0): "
              "scores.csv holds raw scores with decision 'uncalibrated' and no masks; "
              "pass --threshold and --pixel-threshold for decisions", file=sys.stderr)
    out, rows = Path(args.output), []
    batch = model.config.batch_size
    for start in range(0, len(named), batch):
        chunk = named[start : start + batch]
        images = [load_image(path) for path, _ in chunk]
        results = predict_images(model, images, args.threshold, args.pixel_threshold)
        for (path, name), image, result in zip(chunk, images, results):
            rows.append(_write_outputs(out, name, path, np.asarray(image), result))
    buf = io.StringIO()
    csv.writer(buf).writerows([COLUMNS, *rows])
    write_text_atomic(out / "scores.csv", buf.getvalue())
    flagged = sum(row[3] == "NG" for row in rows)
    summary = f"{flagged} NG, {len(rows) - flagged} OK" if calibration is not None else "uncalibrated"
    print(f"scored {len(rows)} images ({summary}); wrote {out / 'scores.csv'}")
    return 0


def _write_outputs(out: Path, name: Path, path: Path, rgb: np.ndarray, result: Result) -> tuple[str, ...]:
    """Write the overlay (and the mask) of one image; its scores.csv row."""
    overlay_name = Path("overlays") / name.with_name(name.name + ".png")
    mask_name = Path("masks") / name.with_name(name.name + ".png")
    if result.calibration is None:
        caption = f"{name}  raw {result.raw_score:.3f}  uncalibrated (colours: this image's own range)"
        picture = with_caption(overlay(rgb, result.anomaly_map), caption)
        save_png(out / overlay_name, picture)
        return str(path), f"{result.raw_score:.6f}", "", result.decision, "", str(overlay_name)
    caption = f"{name}  score {result.score:.3f}  {result.decision}  (raw {result.raw_score:.3f})"
    save_png(out / overlay_name, calibrated_overlay(rgb, result.score_map(), result.mask, caption))
    assert result.mask is not None
    save_png(out / mask_name, result.mask.astype(np.uint8) * 255)
    return (str(path), f"{result.raw_score:.6f}", f"{result.score:.6f}", result.decision, str(mask_name),
            str(overlay_name))
