"""``fapm synth``: write the built-in dataset (MVTec AD layout)."""
from __future__ import annotations

import argparse
import time

from ..data.synthetic import generate_dataset


def run_synth(args: argparse.Namespace) -> int:
    categories = args.categories.split(",") if args.categories else None
    start = time.perf_counter()
    generate_dataset(args.output, seed=args.seed, size=args.size, categories=categories, progress=not args.no_progress)
    print(f"wrote the built-in dataset to {args.output} in {time.perf_counter() - start:.1f} s")
    return 0
