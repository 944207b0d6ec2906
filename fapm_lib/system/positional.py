"""Positional file I/O of tensors: writes and reads at byte offsets, in pieces of at most 1 GiB,
without a memory map (the resident pages of a mapped file count in the process's RSS); the page
cache is told to drop what was read."""
from __future__ import annotations

import contextlib
import os

from torch import Tensor

from ..errors import DataError

MAX_IO = 1 << 30  # bytes per read/write call (Linux moves at most ~2 GiB per call)


def byte_view(t: Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor (no copy)."""
    return memoryview(t.numpy()).cast("B")


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (positional, in pieces of at most 1 GiB)."""
    data = data.cast("B")
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done : done + MAX_IO], offset + done)


def pread_into(fd: int, out: memoryview, offset: int) -> None:
    """Fill ``out`` from ``offset``; DataError when the file is shorter."""
    out = out.cast("B")
    done = 0
    while done < len(out):
        got = os.preadv(fd, [out[done : done + MAX_IO]], offset + done)
        if got == 0:
            raise DataError(f"file ended early at byte {offset + done}")
        done += got


def drop_cache(fd: int, offset: int, length: int) -> None:
    """Tell the kernel the bytes just read are not needed again soon (spares the page cache)."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def read_tensor(path: str | os.PathLike, out: Tensor, offset: int = 0) -> Tensor:
    """Fill the contiguous CPU tensor ``out`` with the bytes of ``path`` from ``offset``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pread_into(fd, byte_view(out), offset)
        drop_cache(fd, offset, out.numel() * out.element_size())
    finally:
        os.close(fd)
    return out
