"""``fapm fit``: fit one category (or a ``--good`` folder) and save the model."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..detectors.model_file import MODEL_FILE
from .category_run import fit_from_args
from .folder_args import data_name


def run_fit(args: argparse.Namespace) -> int:
    """``fapm fit``: fit one category, write ``<output>/model.safetensors`` (``--scheduler``: its
    region jobs on Dask)."""
    model = fit_from_args(args, scheduler=getattr(args, "scheduler", None))
    path = model.save(Path(args.output) / MODEL_FILE)
    stats = model.fit_stats
    print(f"fitted {data_name(args)} on {stats['n_train']} images in {stats['fit_seconds']:.1f} s "
          f"(features {stats['feature_seconds']:.1f} s, coreset {stats['coreset_seconds']:.1f} s); wrote {path}")
    return 0
