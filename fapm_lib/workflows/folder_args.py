"""Plain labelled folders on the command line: ``fapm fit --good DIR`` and
``fapm evaluate --model M --good DIR --defect DIR [--masks DIR]`` (:mod:`fapm_lib.data.folders`),
beside the MVTec layout's ``--data-root`` / ``--category``."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..data.folders import FolderDataset
from ..errors import ConfigError


def uses_folders(args: argparse.Namespace) -> bool:
    """True when the images come from ``--good`` / ``--defect`` folders."""
    return any(getattr(args, key, None) for key in ("good", "defect", "masks"))


def folder_datasets(model, args: argparse.Namespace, splits: tuple[str, ...]) -> list[FolderDataset]:
    """The ``train`` (``--good``) or ``test`` (``--good`` + ``--defect`` [+ ``--masks``]) images,
    read with ``model``'s transform; skipped files listed on stderr, one line each."""
    if getattr(args, "data_root", None) or getattr(args, "category", None):
        raise ConfigError("give --good (with --defect, --masks) or --data-root with --category, not both")
    if getattr(args, "validation_root", None):
        raise ConfigError("--validation-root reads the MVTec layout of --category; with --good, set the thresholds "
                          "with --false-alarm-rate, --threshold or --pixel-threshold")
    out = []
    for split in splits:
        if split == "train":
            if "defect" in vars(args) or not getattr(args, "good", None):  # evaluate's flags: test images
                raise ConfigError("--good and --defect are the images to evaluate on: give the fitted --model "
                                  "(fapm fit --good TRAIN_DIR --output O fits one)")
            dataset = FolderDataset(good=args.good, transform=model.transform, skip_bad=args.skip_bad, split="train")
        else:
            if not getattr(args, "good", None) or not getattr(args, "defect", None):
                raise ConfigError("evaluate needs both --good DIR (normal images) and --defect DIR (defective ones)")
            dataset = FolderDataset(args.good, args.defect, getattr(args, "masks", None), model.transform,
                                    args.skip_bad, split="test")
        for _, why in dataset.skipped:
            print(f"skipped: {why}", file=sys.stderr)
        out.append(dataset)
    return out


def data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Where the images came from, for ``metrics.json``'s settings."""
    if uses_folders(args):
        return {"good": args.good, "defect": getattr(args, "defect", None), "masks": getattr(args, "masks", None)}
    return {"data_root": str(args.data_root), "category": args.category}


def data_name(args: argparse.Namespace) -> str:
    """A short name of the data for messages: the category, or the --good folder."""
    return args.category if not uses_folders(args) else f"{args.good}"
