"""Memory budgets for ``fit --max-memory``: sizes like ``4GB``, the process's RSS, and how many
regions one coreset chunk may hold."""
from __future__ import annotations

import os
import re
import resource

from ..errors import ConfigError

#: Decimal units (4GB = 4 * 10**9 bytes) and binary ones (4GiB = 4 * 2**30 bytes).
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
#: Kept free under the budget for what no estimate counts (Python objects, allocator slack).
MARGIN_BYTES = 96 * 10**6


def parse_size(value: str | int, name: str = "max_memory") -> int:
    """``"4GB"``, ``"512MB"``, ``"1.5GiB"`` or a byte count -> bytes (ConfigError naming ``name``)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected a size such as 4GB or 512MB")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in UNITS:
            raise ConfigError(f"{name}={value!r}: expected a size such as 4GB, 512MB or 6GiB")
        size = int(float(match.group(1)) * UNITS[unit])
    if size <= 0:
        raise ConfigError(f"{name}={value!r}: must be larger than 0")
    return size


def mb(n_bytes: float) -> str:
    """``1234567890 -> '1235 MB'`` (decimal megabytes, rounded up)."""
    return f"{-(-int(n_bytes) // 10**6)} MB"


def current_rss() -> int:
    """Resident set size of this process now, bytes (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def regions_per_chunk(budget: int, held: dict[str, int], per_region: int, n_regions: int, setting: str,
                      what: str = "this fit") -> int:
    """How many regions one coreset chunk may hold: ``(budget - held - margin) // per_region``,
    at most ``n_regions``. ConfigError stating the minimum budget when not even one fits.

    ``held``: bytes already resident or reserved, by what holds them (process, banks, state)."""
    room = budget - sum(held.values()) - MARGIN_BYTES
    if room < per_region:
        need = sum(held.values()) + MARGIN_BYTES + per_region
        parts = ", ".join(f"{name} {mb(size)}" for name, size in held.items())
        raise ConfigError(
            f"max_memory={setting} is too small for {what}: it needs at least {mb(need)} "
            f"({parts}, one region's work {mb(per_region)}, margin {mb(MARGIN_BYTES)})"
        )
    return int(min(n_regions, room // per_region))
