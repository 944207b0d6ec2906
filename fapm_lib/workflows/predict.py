"""`fapm predict`'s work: score images; write scores.csv, a mask and a calibrated overlay per image,
named after the image with its extension (``good/000.png`` -> ``overlays/good/000.png.png``), all
atomically; with ``--explain`` an explanation picture per image and ``explanations.json``; with
``--report`` one self-contained ``report.html``."""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from ..data.images import load_image
from ..data.output_names import output_names
from ..decisions.nearest_patch import Explanation, check_explainable, explain_images
from ..decisions.results import Result, predict_images, resolve_calibration
from ..deploy.exported import load_predictor
from ..errors import DataError
from ..report.explanation_panel import explanation_panel, layer_caption
from ..report.html import THUMB_SIDE, ReportImage, data_uri, model_settings, write_report
from ..report.viz import calibrated_overlay, overlay, save_png, with_caption
from ..system.atomic import write_text_atomic
from .options import check_device as _device

COLUMNS = ("path", "raw_score", "score", "decision", "mask", "overlay")


def run_predict(args: argparse.Namespace, model=None) -> int:
    """Score every image given (files or folders, recursive); ``model``: an already loaded one."""
    # FAPM.load for .safetensors; onnxruntime / OpenVINO for an export (folder, .onnx, .xml)
    model = model or load_predictor(args.model, _device(args.device), getattr(args, "threads", None))
    explain, report = getattr(args, "explain", False), getattr(args, "report", False)
    if explain:
        check_explainable(model)  # refuse before scoring anything
    named = output_names(args.inputs)
    for path in named.skipped:
        print(f"skipped: {path}: not an image file", file=sys.stderr)
    for path in named.repeats:
        print(f"skipped: {path}: given more than once (scored once)", file=sys.stderr)
    if not named.pairs:
        raise DataError("no images found in " + ", ".join(args.inputs))
    calibration = resolve_calibration(model, args.threshold, args.pixel_threshold)
    if calibration is None:
        print(f"fapm predict: note: {args.model} is uncalibrated (fitted with calibration_folds 0): "
              "scores.csv holds raw scores with decision 'uncalibrated' and no masks; "
              "pass --threshold and --pixel-threshold for decisions", file=sys.stderr)
    out, rows, pages, details = Path(args.output), [], [], []
    batch = model.config.batch_size
    for start in range(0, len(named.pairs), batch):
        chunk = named.pairs[start : start + batch]
        images = [load_image(path) for path, _ in chunk]
        results = predict_images(model, images, args.threshold, args.pixel_threshold)
        explanations = explain_images(model, images) if explain else [None] * len(chunk)
        for (path, name), image, result, why in zip(chunk, images, results, explanations):
            row, picture = _write_outputs(out, name, path, np.asarray(image), result)
            panel = None
            if why is not None:
                why.path = str(path)
                panel = explanation_panel(why, f"{name}: raw {result.raw_score:.3f} {result.decision}")
                row += (str(save_png(out / "explanations" / f"{name}.png", panel).relative_to(out)),)
                details.append({"name": str(name), "explanation": row[-1], **why.to_dict()})
            rows.append(row)
            if report:
                pages.append(_report_image(str(name), picture, result, why, panel))
    buf = io.StringIO()
    csv.writer(buf).writerows([COLUMNS + (("explanation",) if explain else ()), *rows])
    write_text_atomic(out / "scores.csv", buf.getvalue())
    if explain:
        write_text_atomic(out / "explanations.json", json.dumps(details, indent=1))
    if report:
        notes = [] if explain else ["Run with --explain to add, for every image, the nearest normal patch."]
        write_report(out / "report.html", "fapm predict", pages, calibration,
                     {**model_settings(model), "model file": str(args.model), "inputs": " ".join(args.inputs)},
                     notes=notes)
    flagged = sum(row[3] == "NG" for row in rows)
    summary = f"{flagged} NG, {len(rows) - flagged} OK" if calibration is not None else "uncalibrated"
    extra = "".join(f", {name}" for name, on in (("explanations/", explain), ("report.html", report)) if on)
    print(f"scored {len(rows)} images ({summary}); wrote {out / 'scores.csv'}{extra}")
    return 0


def _report_image(name: str, picture: np.ndarray, result: Result, why: Explanation | None,
                  panel: np.ndarray | None) -> ReportImage:
    """The report's entry of one image (pictures encoded at once: the report holds no arrays)."""
    text = "" if why is None else "; ".join(layer_caption(m) for m in why.layers)
    return ReportImage(name, data_uri(picture, "JPEG", THUMB_SIDE), result.raw_score, result.score, result.decision,
                       explanation=None if panel is None else data_uri(panel, "JPEG"), explanation_text=text)


def _write_outputs(out: Path, name: Path, path: Path, rgb: np.ndarray,
                   result: Result) -> tuple[tuple[str, ...], np.ndarray]:
    """Write the overlay (and the mask) of one image; its scores.csv row and the overlay."""
    overlay_name = Path("overlays") / name.with_name(name.name + ".png")
    mask_name = Path("masks") / name.with_name(name.name + ".png")
    if result.calibration is None:
        caption = f"{name}  raw {result.raw_score:.3f}  uncalibrated (colours: this image's own range)"
        picture = with_caption(overlay(rgb, result.anomaly_map), caption)
        save_png(out / overlay_name, picture)
        return (str(path), f"{result.raw_score:.6f}", "", result.decision, "", str(overlay_name)), picture
    caption = f"{name}  score {result.score:.3f}  {result.decision}  (raw {result.raw_score:.3f})"
    picture = calibrated_overlay(rgb, result.score_map(), result.mask, caption)
    save_png(out / overlay_name, picture)
    assert result.mask is not None
    save_png(out / mask_name, result.mask.astype(np.uint8) * 255)
    return (str(path), f"{result.raw_score:.6f}", f"{result.score:.6f}", result.decision, str(mask_name),
            str(overlay_name)), picture
