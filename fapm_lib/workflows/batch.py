"""``fapm batch``: execute a notebook once per category with papermill, collect its metrics and
write ``summary.md``.

Output folder ``R``: ``R/notebooks/<category>.ipynb`` (every executed copy, failed ones included,
so the error can be read in place), ``R/metrics/<category>.json`` (written by the notebook through
its ``metrics_path`` parameter), ``R/summary.md`` and ``R/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..report.tables import write_summary
from ..system.atomic import atomic_path
from ..system.jobs import Job, parse_scheduler, run_jobs

KERNEL = "python3"
METHOD = "FAPM (notebook)"
BASELINE = "PatchCore (notebook)"


def resolve_categories(data_root: Path, spec: str) -> list[str]:
    """``all`` -> every visible category folder under ``data_root`` (sorted); else the comma list."""
    if spec.strip() == "all":
        names = sorted(p.name for p in data_root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise DataError(f"{data_root}: no category folders")
        return names
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise ConfigError(f"--categories {spec!r}: give a comma-separated list of categories, or all")
    return names


def execute(notebook: Path, target: Path, parameters: dict[str, Any], progress: bool) -> None:
    """Execute ``notebook`` in its own folder into a temporary file renamed onto ``target``, also
    when a cell fails (the copy then shows the error); the papermill error is re-raised after."""
    import papermill as pm

    failure: Exception | None = None
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The specified file .* does not end in")
        try:
            pm.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name=KERNEL,
                                cwd=str(notebook.parent), progress_bar=progress)
        except pm.PapermillExecutionError as exc:
            failure = exc
    if failure is not None:
        raise failure


def run_category(notebook: Path, data_root: Path, category: str, output: Path, backbone: str | None,
                 fast: bool, progress: bool) -> dict[str, Any]:
    """Execute the notebook for one category; return the metrics it wrote."""
    metrics_path = output / "metrics" / f"{category}.json"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.unlink(missing_ok=True)  # never read a previous run's numbers
    parameters: dict[str, Any] = {"data_root": str(data_root), "category": category, "fast": fast,
                                  "metrics_path": str(metrics_path)}
    if backbone:
        parameters["backbone"] = backbone
    execute(notebook, output / "notebooks" / f"{category}.ipynb", parameters, progress)
    if not metrics_path.is_file():
        raise DataError(f"{notebook.name} wrote no metrics to {metrics_path} (does it use the metrics_path parameter?)")
    return json.loads(metrics_path.read_text(encoding="utf-8"))


def run_batch(args: argparse.Namespace) -> int:
    """Run ``args.notebook`` per category (here, or on Dask with ``args.scheduler``); exit code 1
    when any category failed, else 0. ``summary.md`` holds no timings, so it does not depend on
    where or how fast the categories ran."""
    notebook = Path(args.notebook).resolve()
    if not notebook.is_file():
        raise DataError(f"{args.notebook}: notebook not found")
    data_root = Path(args.data_root).expanduser().resolve()
    if not data_root.is_dir():
        raise DataError(f"{args.data_root}: data root does not exist")
    output = Path(args.output).resolve()
    categories = resolve_categories(data_root, args.categories)
    scheduler = getattr(args, "scheduler", None)
    if scheduler is not None:
        parse_scheduler(scheduler)  # refuse a bad address before anything runs
    progress = not args.no_progress and scheduler is None
    jobs = [Job(category, run_category,
                (notebook, data_root, category, output, args.backbone, bool(args.fast), progress),
                hint=f" (see {output / 'notebooks' / (category + '.ipynb')})") for category in categories]
    start = time.perf_counter()
    outcome = run_jobs(jobs, scheduler, label=notebook.name, debug=args.debug)
    results: dict[str, dict[str, Any]] = {METHOD: {}}
    for category, metrics in outcome.results.items():
        baseline = metrics.get("patchcore")
        if isinstance(baseline, dict):
            results.setdefault(BASELINE, {})[category] = baseline
        results[METHOD][category] = metrics
    notes = [f"notebook: {notebook.name}, executed once per category with papermill; copies in notebooks/",
             f"data: {data_root}",
             f"backbone: {args.backbone or 'the notebook default'}; fast: {bool(args.fast)}"]
    path = write_summary(output, results, f"{notebook.stem} over {len(categories)} categories", notes, outcome.failures)
    print(path.read_text(encoding="utf-8"))
    print(f"total time {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if outcome.failures else 0
