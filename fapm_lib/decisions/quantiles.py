"""Exact quantiles of more float32 values than RAM holds (the held-out pixels of a large
calibration: 10,000 maps of 224 x 224 are 5e8 values, 2 GB).

The values are appended to a file batch by batch. A float32's bits, read as an unsigned integer
with the sign handled (:func:`sort_keys`), order the same way as the values, so a value is found
from its rank in two passes over the file, with no sort: pass 1 counts the values per upper 16
bits (65,536 bins), pass 2 counts the lower 16 bits inside the few bins holding the ranks
needed. numpy's linear interpolation between those order statistics then gives the quantile, so
a threshold equals ``np.quantile`` over all the values, bit for bit. Mean and standard deviation
are accumulated in float64 chunk by chunk (equal to numpy's up to rounding).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from ..system.positional import byte_view, drop_cache, pread_into, pwrite_all

#: Values per read when passing over the file (8 MB; each pass makes a few temporaries of that size).
READ_VALUES = 2 * 2**20
BINS = 1 << 16


def sort_keys(values: np.ndarray) -> np.ndarray:
    """float32 values -> uint32 keys in the same order (negative values: all bits flipped;
    others: the sign bit set)."""
    bits = values.view(np.uint32)
    return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))


def from_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`sort_keys`: uint32 keys -> float32 values."""
    keys = keys.astype(np.uint32)
    bits = np.where(keys >> 31 == 1, keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.view(np.float32)


class ValueFile:
    """float32 values appended to ``path`` batch by batch, with their count, sum, min and max."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.n = 0
        self.total = 0.0
        self.min, self.max = math.inf, -math.inf
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def append(self, values: Tensor) -> None:
        """Add ``values`` (any shape, float32, CPU)."""
        flat = values.detach().float().cpu().contiguous().view(-1)
        if flat.numel() == 0:
            return
        pwrite_all(self._fd, byte_view(flat), self.n * 4)
        array = flat.numpy()
        self.n += array.size
        self.total += float(array.sum(dtype=np.float64))
        self.min, self.max = min(self.min, float(array.min())), max(self.max, float(array.max()))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def batches(self) -> Iterator[np.ndarray]:
        """The values, in order, :data:`READ_VALUES` at a time (one buffer reused)."""
        buffer = torch.empty(min(READ_VALUES, max(self.n, 1)))
        for start in range(0, self.n, READ_VALUES):
            part = buffer[: min(READ_VALUES, self.n - start)]
            pread_into(self._fd, byte_view(part), start * 4)
            drop_cache(self._fd, start * 4, part.numel() * 4)
            yield part.numpy()

    def order_statistics(self, ranks: list[int]) -> dict[int, np.float32]:
        """The values of the given ranks (0-based, ascending order), two passes."""
        upper = np.zeros(BINS, dtype=np.int64)
        for values in self.batches():
            upper += np.bincount(sort_keys(values) >> 16, minlength=BINS)
        before = np.concatenate([[0], np.cumsum(upper)])
        bins = {r: int(np.searchsorted(before, r, side="right")) - 1 for r in ranks}
        wanted = np.array(sorted(set(bins.values())), dtype=np.int64)
        slot_of = np.full(BINS, -1, dtype=np.int64)  # upper 16 bits -> row of `lower`, -1: not needed
        slot_of[wanted] = np.arange(len(wanted))
        lower = np.zeros((len(wanted), BINS), dtype=np.int64)
        for values in self.batches():
            keys = sort_keys(values)
            slot = slot_of[keys >> 16]
            hit = slot >= 0
            lower += np.bincount(slot[hit] * BINS + (keys[hit] & 0xFFFF),
                                 minlength=len(wanted) * BINS).reshape(-1, BINS)
        out = {}
        for rank, b in bins.items():
            i = int(np.searchsorted(wanted, b))
            low = int(np.searchsorted(np.cumsum(lower[i]), rank - before[b], side="right"))
            out[rank] = from_keys(np.array([(b << 16) | low], dtype=np.uint32))[0]
        return out

    def quantiles(self, qs: list[float], dtype: type = np.float64) -> np.ndarray:
        """``np.quantile(values.astype(dtype), qs)`` (linear interpolation), exactly: the two order
        statistics around each virtual index ``(n - 1) q``, then numpy's own interpolation between
        them (``np.quantile`` of the pair, in ``dtype``, at the fractional part). float32 gives
        what ``np.quantile`` of a float32 array gives (it subtracts the pair in float32)."""
        places = []
        for q in qs:
            virtual = (self.n - 1) * q
            lo = min(math.floor(virtual), self.n - 1)
            places.append((lo, min(lo + 1, self.n - 1), virtual - lo if virtual < self.n - 1 else 0.0))
        stats = self.order_statistics(sorted({r for lo, hi, _ in places for r in (lo, hi)}))
        return np.array([np.quantile(np.array([stats[lo], stats[hi]], dtype=dtype), np.array([gamma]))[0]
                         for lo, hi, gamma in places])

    def std(self) -> float:
        """Population standard deviation (float64, one more pass)."""
        mean = self.total / self.n
        return math.sqrt(sum(float(np.square(v.astype(np.float64) - mean).sum()) for v in self.batches()) / self.n)

    def describe(self) -> dict[str, Any]:
        """What :func:`~fapm_lib.decisions.calibration.describe` gives for these values."""
        qs = (0.5, 0.9, 0.95, 0.99)
        return {"n": self.n, "mean": self.total / self.n, "std": self.std(), "min": self.min, "max": self.max,
                "quantiles": {str(q): float(v) for q, v in zip(qs, self.quantiles(list(qs)))}}
