"""``fapm gif``: animate a fitted model's heatmaps over a category's test split."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.mvtec import MVTecDataset
from ..detectors.fapm import FAPM
from ..errors import ConfigError
from ..report.animation import make_gif, pick_frames
from .options import check_device


def run_gif(args: argparse.Namespace) -> int:
    if Path(args.output).suffix.lower() != ".gif":
        raise ConfigError(f"--output {args.output}: expected a file name ending in .gif")
    pick_frames(1, args.max_frames)  # validate before the slow part
    model = FAPM.load(args.model, device=check_device(args.device))
    dataset = MVTecDataset(args.data_root, args.category, "test", model.transform)
    path = make_gif(model, dataset, args.output, args.max_frames)
    n = min(len(dataset), args.max_frames)
    print(f"wrote {path} ({n} frames, {path.stat().st_size / 1024:.0f} KB)")
    return 0
