"""Stepping independent greedy runs in parallel without a thread barrier per step.

A greedy step is a handful of passes over ``[R, N]`` after one product; with torch's intra-op
threads every pass ends in a barrier, and on a shared 2-core machine a step over 160,000 x 512
floats took 47 to 60 ms instead of 16 (one thread already reads memory at the machine's
bandwidth). So :meth:`~fapm_lib.method.coreset.GreedyKCenter.extend` runs every step on one
intra-op thread (:func:`one_torch_thread`) and splits the regions into contiguous slices
(:func:`region_slices`), one per torch thread, stepped in parallel by the threads of
:func:`thread_pool`: the same arithmetic per region (results bit-identical), no barrier per pass.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch


def region_slices(n_sets: int, workers: int) -> list[slice]:
    """``n_sets`` in at most ``workers`` contiguous slices of nearly equal size."""
    bounds = torch.linspace(0, n_sets, max(1, min(workers, n_sets)) + 1).round().long().tolist()
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch's intra-op thread count set to 1 inside the block (process-wide), restored after."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads kept for the process (starting threads for every run of a
    few steps cost more than the steps)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="greedy")
    return _POOLS[workers]


_POOLS: dict[int, ThreadPoolExecutor] = {}
