"""``fapm update --model M --add-good DIR --output M2``: add normal images (the false alarms an
operator marked) to a fitted model without a refit (:mod:`fapm_lib.detectors.add_good`), save it,
and say what each added image scored before and after."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.folders import FolderDataset
from ..detectors.fapm import FAPM
from ..detectors.model_file import MODEL_FILE
from .options import check_device as _device


def output_file(output: str) -> Path:
    """``--output``: a ``.safetensors`` file as given, else a folder for ``model.safetensors``."""
    path = Path(output)
    return path if path.suffix == ".safetensors" else path / MODEL_FILE


def run_update(args: argparse.Namespace) -> int:
    """Load, add ``--add-good``'s images, save to ``--output``; one line per added image."""
    model = FAPM.load(args.model, device=_device(args.device))
    added = FolderDataset(good=args.add_good, transform=model.transform, skip_bad=args.skip_bad)
    for _, why in added.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    report = model.add_good(added, progress=not args.no_progress)
    path = model.save(output_file(args.output))
    root = Path(args.add_good)
    for name, (raw0, before), (raw1, after) in zip(report.paths or [], report.before, report.after):
        print(f"{Path(name).relative_to(root.resolve()) if Path(name).is_relative_to(root.resolve()) else name}: "
              f"raw {raw0:.3f} {before} -> {raw1:.3f} {after}")
    was_ng = sum(d == "NG" for _, d in report.before)
    now_ng = sum(d == "NG" for _, d in report.after)
    thresholds = ("" if report.threshold_before is None else
                  f"; image threshold {report.threshold_before:.3f} -> {report.threshold_after:.3f}")
    print(f"added {len(report.before)} normal images in {report.seconds:.1f} s (NG before: {was_ng}, after: {now_ng}); "
          f"memory {report.vectors_before} -> {report.vectors_after} vectors{thresholds}; wrote {path}")
    return 0
