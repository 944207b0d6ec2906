"""``fapm fit-all``: one fit per category, here or on a Dask cluster (:mod:`fapm_lib.system.jobs`).

Output folder ``O``: ``O/<category>/model.safetensors``, each written atomically by its own job;
``O/fits.md`` + ``fits.json`` (no timings, so they do not depend on where the jobs ran).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..detectors.model_file import MODEL_FILE
from ..system.atomic import write_text_atomic
from ..system.jobs import Job, run_jobs
from .category_run import category_args, fit_from_args, plan_categories
from .options import build_config


def run_fit_all(args: argparse.Namespace) -> int:
    """``fapm fit-all``: exit 1 when a category failed."""
    config = build_config(args)  # refuse bad settings before any job starts
    categories, out, values = plan_categories(args)
    jobs = [Job(c, fit_job, (values, c, str(out))) for c in categories]
    outcome = run_jobs(jobs, args.scheduler, label="fit", debug=args.debug)
    lines = [f"# FAPM fits over {len(categories)} categories", "",
             f"- data: {args.data_root}; backbone: {config.backbone}, input: {config.input_description()}",
             f"- FAPM: r = {config.coreset_ratio}, a = {config.adaptive_multiplier}",
             "", "| category | training images | memory vectors | memory MB | model |", "|---|---|---|---|---|"]
    for c, r in outcome.results.items():
        lines.append(f"| {c} | {r['n_train']} | {r['vectors']} | {r['megabytes']:.2f} | {c}/{MODEL_FILE} |")
    if outcome.failures:
        lines += ["", "## Failed categories", ""] + [f"- {c}: {why}" for c, why in outcome.failures.items()]
    fits = {"results": outcome.results, "failures": outcome.failures}
    write_text_atomic(out / "fits.json", json.dumps(fits, indent=2))
    path = write_text_atomic(out / "fits.md", "\n".join(lines) + "\n")
    print(path.read_text(encoding="utf-8"))
    return 1 if outcome.failures else 0


def fit_job(values: dict[str, Any], category: str, output: str) -> dict[str, Any]:
    """Fit one category, save ``output/<category>/model.safetensors``; its size and counts."""
    model = fit_from_args(category_args(values, category))
    model.save(Path(output) / category / MODEL_FILE)
    size = model.memory_size()
    return {"n_train": model.fit_stats["n_train"], "vectors": int(size["vectors"]),
            "megabytes": round(float(size["megabytes"]), 3), "fit_seconds": model.fit_stats["fit_seconds"]}
