"""``fapm benchmark``: one run of FAPM against PatchCore side by side
(:mod:`fapm_lib.workflows.side_by_side`), or with ``--suite`` every table of the front page and
its benchmark and deploy pages (:mod:`fapm_lib.workflows.bench_suite`, ``make bench``)."""
from __future__ import annotations

import argparse

from ..deploy.runtime_benchmark import parse_runtimes
from ..errors import ConfigError
from .bench_suite import run_bench_suite
from .options import build_config, check_device
from .side_by_side import METHOD_KEYS, RATIO_KEYS, benchmark_category, benchmark_markdown, device_name

#: The options that only ``--suite`` reads.
SUITE_FLAGS = ("pages", "quick", "builtin_root", "parts", "resume", "backbones_table")

__all__ = ["METHOD_KEYS", "RATIO_KEYS", "benchmark_category", "benchmark_markdown", "device_name", "run_benchmark"]


def run_benchmark(args: argparse.Namespace) -> int:
    """``fapm benchmark``: run, write ``O/benchmark.json`` and ``O/benchmark.md``, print the summary;
    with ``--suite``, measure and write every table (:func:`run_bench_suite`)."""
    if args.suite:
        return run_bench_suite(args)
    suite_only = [f"--{name.replace('_', '-')}" for name in SUITE_FLAGS if getattr(args, name)]
    if suite_only:
        raise ConfigError(f"{', '.join(suite_only)}: only with --suite")
    config = build_config(args)
    if not args.data_root or not args.category:
        raise ConfigError("--data-root and --category are required (or set them in --config)")
    runtimes = parse_runtimes(args.runtimes)
    repeats = 20 if args.repeats is None else args.repeats
    report = benchmark_category(config, args.data_root, args.category, args.output, check_device(args.device),
                                repeats, progress=not args.no_progress, skip_bad=args.skip_bad, runtimes=runtimes)
    print(benchmark_markdown(report))
    return 0
