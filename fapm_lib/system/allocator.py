"""Keep freed tensor memory in the process (glibc), so a forward pass does not page-fault.

glibc's ``malloc`` serves blocks above its mmap threshold with fresh ``mmap`` pages and gives
them back on ``free``. A CNN forward pass allocates and frees the same few-MB activations every
call, so each call pays page faults in the kernel again: on the 2-core development machine that
was a third of the backbone's time at batch 1 and half of it at batch 16. Raising the mmap and
trim thresholds lets ``malloc`` reuse those blocks instead (the peak memory is unchanged; up to
``TRIM_BYTES`` of freed memory stays with the process).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 32 * 2**20  # glibc's largest allowed mmap threshold on 64-bit
TRIM_BYTES = 256 * 2**20
#: set to 1 to leave the C allocator as it is
OPT_OUT = "FAPM_NO_MALLOC_TUNING"

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are set.

    A no-op (False) off Linux/glibc, when ``FAPM_NO_MALLOC_TUNING=1``, or when the user already
    set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (their choice wins)."""
    global _tuned
    if _tuned is None:
        _tuned = _tune()
    return _tuned


def _tune() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT, "0") not in ("", "0"):
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    mallopt = _glibc("mallopt")
    if mallopt is None:  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))


def release_free_memory() -> bool:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``), e.g. between
    the jobs of a bounded fit, whose budget counts what the process holds; False off glibc."""
    trim = _glibc("malloc_trim") if sys.platform.startswith("linux") else None
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


@functools.lru_cache(maxsize=None)
def _glibc(name: str):
    """The C library's function ``name`` (ctypes), or None when it has none."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
