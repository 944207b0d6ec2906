"""``fapm evaluate``: fit (or load ``--model``) and evaluate one category, or each of several
(``--categories``, maybe on a Dask cluster: :mod:`fapm_lib.system.jobs`).

With ``--categories``, output folder ``O``: ``O/<category>/`` (model, ``metrics.json``,
``heatmaps/``), each written atomically by its own job, and ``O/summary.md`` + ``summary.json``
(no timings, so they do not depend on where the jobs ran).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..report.tables import write_summary
from ..system.jobs import Job, run_jobs
from .category_run import category_args, evaluate_category, plan_categories
from .folder_args import uses_folders
from .options import build_config


def run_evaluate(args: argparse.Namespace) -> int:
    """``fapm evaluate``: one category (``--category``) or several (``--categories``, maybe on Dask)."""
    if args.categories is not None:
        if uses_folders(args):
            raise ConfigError("--good / --defect evaluate one model on one set of folders: drop --categories")
        return run_evaluate_all(args)
    if args.scheduler is not None:
        raise ConfigError("--scheduler runs several categories: add --categories a,b or --categories all")
    metrics = evaluate_category(args, Path(args.output))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}))
    return 0


def run_evaluate_all(args: argparse.Namespace) -> int:
    """``fapm evaluate --categories``: per-category outputs and ``summary.md``; exit 1 when a
    category failed."""
    if getattr(args, "model", None):
        raise ConfigError("--model evaluates one model: use --category, not --categories")
    if args.category:
        raise ConfigError("give --category or --categories, not both")
    config = build_config(args)
    categories, out, values = plan_categories(args)
    jobs = [Job(c, evaluate_job, (values, c, str(out))) for c in categories]
    outcome = run_jobs(jobs, args.scheduler, label="fit + evaluate", debug=args.debug)
    notes = [f"data: {args.data_root}",
             f"backbone: {config.backbone}, input: {config.input_description()}, device {args.device}",
             f"FAPM: r = {config.coreset_ratio}, a = {config.adaptive_multiplier}, "
             f"k = {config.k}", "per category: <category>/metrics.json, model.safetensors, heatmaps/"]
    path = write_summary(out, {"FAPM": outcome.results}, f"FAPM over {len(categories)} categories", notes,
                         outcome.failures)
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path}", file=sys.stderr)
    return 1 if outcome.failures else 0


def evaluate_job(values: dict[str, Any], category: str, output: str) -> dict[str, Any]:
    """Fit + evaluate one category into ``output/<category>``; its metrics."""
    return evaluate_category(category_args(values, category), Path(output) / category)
