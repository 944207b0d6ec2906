"""``fapm fit-all`` and ``fapm evaluate --categories``: one fit (or fit + evaluation) per
category, here or on a Dask cluster (:mod:`fapm_lib.system.jobs`).

Output folder ``O``: ``O/<category>/model.safetensors`` (and, for evaluate, ``metrics.json`` and
``heatmaps/``), each written atomically by its own job; ``O/summary.md`` + ``summary.json``
(evaluate) or ``O/fits.md`` + ``fits.json`` (fit-all). The summaries hold no timings, so they do
not depend on where the jobs ran.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..report.tables import write_summary
from ..system.atomic import write_text_atomic
from ..system.jobs import Job, parse_scheduler, run_jobs
from ..detectors.model_file import MODEL_FILE
from .category import evaluate_category, fit_from_args
from .folders import uses_folders
from .notebook_batch import resolve_categories
from .options import build_config


def _category_args(values: dict[str, Any], category: str) -> argparse.Namespace:
    return argparse.Namespace(**{**values, "category": category, "model": None})


def fit_job(values: dict[str, Any], category: str, output: str) -> dict[str, Any]:
    """Fit one category, save ``output/<category>/model.safetensors``; its size and counts."""
    model = fit_from_args(_category_args(values, category))
    model.save(Path(output) / category / MODEL_FILE)
    size = model.memory_size()
    return {"n_train": model.fit_stats["n_train"], "vectors": int(size["vectors"]),
            "megabytes": round(float(size["megabytes"]), 3), "fit_seconds": model.fit_stats["fit_seconds"]}


def evaluate_job(values: dict[str, Any], category: str, output: str) -> dict[str, Any]:
    """Fit + evaluate one category into ``output/<category>``; its metrics."""
    return evaluate_category(_category_args(values, category), Path(output) / category)


def _plan(args: argparse.Namespace) -> tuple[list[str], Path, dict[str, Any]]:
    if not args.data_root:
        raise ConfigError("--data-root is required (or set data_root in --config)")
    root = Path(args.data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"{args.data_root}: data root does not exist")
    if args.scheduler is not None:
        parse_scheduler(args.scheduler)
    values = {k: v for k, v in vars(args).items() if k != "func"}
    if args.scheduler is not None:
        values["no_progress"] = True  # progress bars of several workers would interleave
    return resolve_categories(root, args.categories), Path(args.output), values


def run_fit_all(args: argparse.Namespace) -> int:
    """``fapm fit-all``: exit 1 when a category failed."""
    config = build_config(args)  # refuse bad settings before any job starts
    categories, out, values = _plan(args)
    jobs = [Job(c, fit_job, (values, c, str(out))) for c in categories]
    outcome = run_jobs(jobs, args.scheduler, label="fit", debug=args.debug)
    lines = [f"# FAPM fits over {len(categories)} categories", "",
             f"- data: {args.data_root}; backbone: {config.backbone}, input {config.input_size}",
             f"- FAPM: grid {config.grid}x{config.grid}, r = {config.coreset_ratio}, a = {config.adaptive_multiplier}",
             "", "| category | training images | memory vectors | memory MB | model |", "|---|---|---|---|---|"]
    for c, r in outcome.results.items():
        lines.append(f"| {c} | {r['n_train']} | {r['vectors']} | {r['megabytes']:.2f} | {c}/{MODEL_FILE} |")
    if outcome.failures:
        lines += ["", "## Failed categories", ""] + [f"- {c}: {why}" for c, why in outcome.failures.items()]
    write_text_atomic(out / "fits.json", json.dumps({"results": outcome.results, "failures": outcome.failures}, indent=2))
    path = write_text_atomic(out / "fits.md", "\n".join(lines) + "\n")
    print(path.read_text(encoding="utf-8"))
    return 1 if outcome.failures else 0


def run_evaluate_all(args: argparse.Namespace) -> int:
    """``fapm evaluate --categories``: per-category outputs and ``summary.md``; exit 1 when a
    category failed."""
    if getattr(args, "model", None):
        raise ConfigError("--model evaluates one model: use --category, not --categories")
    if args.category:
        raise ConfigError("give --category or --categories, not both")
    config = build_config(args)
    categories, out, values = _plan(args)
    jobs = [Job(c, evaluate_job, (values, c, str(out))) for c in categories]
    outcome = run_jobs(jobs, args.scheduler, label="fit + evaluate", debug=args.debug)
    notes = [f"data: {args.data_root}",
             f"backbone: {config.backbone}, input {config.input_size}x{config.input_size}, device {args.device}",
             f"FAPM: grid {config.grid}x{config.grid}, r = {config.coreset_ratio}, a = {config.adaptive_multiplier}, "
             f"k = {config.k}", "per category: <category>/metrics.json, model.safetensors, heatmaps/"]
    path = write_summary(out, {"FAPM": outcome.results}, f"FAPM over {len(categories)} categories", notes,
                         outcome.failures)
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path}", file=sys.stderr)
    return 1 if outcome.failures else 0


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
