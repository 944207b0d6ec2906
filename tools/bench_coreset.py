"""The machine's memory bandwidth against the greedy k-center step's effective bandwidth.

Prints one JSON line per measurement: a sum, a copy and a vector-matrix product over a large
float32 buffer (GB/s read), then the greedy step (:class:`fapm_lib.method.coreset.GreedyKCenter`)
over WRN-shaped regions at 10,000 images (one layer-2 region: 160,000 x 512 floats, 328 MB;
seven of them; 14 layer-3 regions, 40,000 x 1024; a batch of 128 cells of 256 x 512, as
``coreset_method cells`` steps them, 64 MB)
in ms per step and GB/s (bytes of the vectors read per step / time). Best of ``--repeats``.

    python tools/bench_coreset.py                # this checkout
    PYTHONPATH=/path/to/old/checkout python tools/bench_coreset.py   # another version of the library
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch

from fapm_lib.method.coreset import GreedyKCenter


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth(n_bytes: int, repeats: int) -> dict[str, float]:
    """GB/s of a sum, a copy (read + write counted) and ``v @ X`` over ``n_bytes`` of float32."""
    x = torch.rand(n_bytes // 4 // 512, 512)
    y = torch.empty_like(x)
    v = torch.rand(x.shape[0])
    gb = x.numel() * 4 / 1e9
    return {"sum_gbs": gb / best_seconds(x.sum, repeats),
            "copy_gbs": 2 * gb / best_seconds(lambda: y.copy_(x), repeats),
            "vector_matrix_gbs": gb / best_seconds(lambda: v @ x, repeats)}


def greedy_step(sets: int, rows: int, dim: int, steps: int, repeats: int) -> dict[str, float]:
    """ms per greedy step over ``[sets, rows, dim]`` and the GB/s of vectors it reads."""
    x = torch.rand(sets, rows, dim, generator=torch.Generator().manual_seed(0))
    greedy = GreedyKCenter(x).extend(2)
    seconds = best_seconds(lambda: greedy.extend(greedy.n_selected + steps), repeats) / steps
    return {"sets": sets, "rows": rows, "dim": dim, "ms_per_step": seconds * 1e3,
            "gbs": sets * rows * dim * 4 / 1e9 / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--buffer-mb", type=int, default=1024)
    args = p.parse_args()
    print(json.dumps({"torch_threads": torch.get_num_threads(), **bandwidth(args.buffer_mb * 10**6, args.repeats)}))
    for sets, rows, dim, steps in ((1, 160_000, 512, 20), (7, 160_000, 512, 5), (14, 40_000, 1024, 10),
                                   (128, 256, 512, 20)):
        print(json.dumps(greedy_step(sets, rows, dim, steps, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
