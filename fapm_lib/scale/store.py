"""Disk-backed region features for a fit in bounded memory (``fit --max-memory``).

One file per layer, laid out by region: ``[R, M, C]`` float32 with ``M = N * s * s`` rows per
region (image-major within a region, as :func:`fapm_lib.method.regions.split_regions` orders them).
Batches are written with positional writes as they are extracted; region chunks are read back
with explicit reads into a buffer (no memory map: the resident pages of a mapped file count in
the process's RSS), and the page cache is told to drop what was read.

When the image count is not known up front (a loader without ``len``), batches are appended to
a spool file first and reorganised by region when the extraction ends (the disk then holds one
layer twice for a moment).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..method.regions import split_regions
from ..system.positional import byte_view, drop_cache, pread_into, pwrite_all

FLOAT_BYTES = 4


def image_runs(images: Tensor) -> list[tuple[int, int]]:
    """Ascending unique image indices ``[K]`` -> ``[(first, stop), ...]`` contiguous runs."""
    if images.numel() == 0:
        return []
    idx = images.cpu().long()
    if (idx[1:] <= idx[:-1]).any():
        raise ValueError("images must be ascending and unique")
    breaks = torch.nonzero(idx[1:] != idx[:-1] + 1).flatten() + 1
    starts = torch.cat([torch.zeros(1, dtype=torch.long), breaks])
    stops = torch.cat([breaks, torch.tensor([len(idx)])])
    return [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts.tolist(), stops.tolist())]


class LayerStore:
    """One layer's region features on disk: ``[R, capacity * s*s, C]`` float32, of which the
    first ``n_images * s*s`` rows of every region are filled.

    ``read(regions, images)`` -> ``[len(regions), K * s*s, C]`` (all images, or the ``K``
    given ones): what the region jobs (:mod:`fapm_lib.scale.regionjobs`) read, a chunk of regions at a time.
    """

    def __init__(self, path: Path, n_regions: int, rows_per_image: int, dim: int, capacity: int,
                 n_images: int) -> None:
        self.path, self.n_regions, self.rows_per_image, self.dim = path, n_regions, rows_per_image, dim
        self.capacity, self.n_images = capacity, n_images

    @classmethod
    def create(cls, path: Path, n_regions: int, rows_per_image: int, dim: int, n_images: int) -> "LayerStore":
        """A new zero-filled store of ``[n_regions, n_images * rows_per_image, dim]`` (filled region
        by region with :meth:`write_region`; e.g. held-out distances, ``dim`` = neighbours kept)."""
        with open(path, "wb") as fh:
            fh.truncate(n_regions * n_images * rows_per_image * dim * FLOAT_BYTES)
        return cls(path, n_regions, rows_per_image, dim, n_images, n_images)

    def write_region(self, region: int, values: Tensor) -> None:
        """Region ``region``'s rows, all images: ``values [n_rows, dim]`` float32 (CPU)."""
        if tuple(values.shape) != (self.n_rows, self.dim):
            raise ValueError(f"expected [{self.n_rows}, {self.dim}], got {tuple(values.shape)}")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            pwrite_all(fd, byte_view(values.float().contiguous()), self._offset(region, 0))
        finally:
            os.close(fd)

    @property
    def n_rows(self) -> int:
        """Rows (vectors) per region: ``n_images * s*s``."""
        return self.n_images * self.rows_per_image

    def rows(self, images: Tensor | None = None) -> int:
        """Rows per region that :meth:`read` returns for ``images``."""
        return self.n_rows if images is None else int(images.numel()) * self.rows_per_image

    def _offset(self, region: int, row: int) -> int:
        return ((region * self.capacity * self.rows_per_image) + row) * self.dim * FLOAT_BYTES

    def read(self, regions: Sequence[int] | Tensor, images: Tensor | None = None,
             out: Tensor | None = None) -> Tensor:
        """Regions ``regions`` (ascending ids, e.g. ``range(7, 14)``) -> ``[len(regions), rows, C]``
        float32 on the CPU, read with explicit reads (into ``out`` when given: a buffer of at
        least that many elements). ``images``: ascending image indices (e.g. one fold's
        training images); None: all."""
        ids = [int(r) for r in regions]
        if not ids or ids[0] < 0 or ids[-1] >= self.n_regions or any(b <= a for a, b in zip(ids, ids[1:])):
            raise ValueError(f"regions must be ascending unique ids in 0..{self.n_regions - 1}")
        runs = [(0, self.n_images)] if images is None else image_runs(images)
        if runs and (runs[0][0] < 0 or runs[-1][1] > self.n_images):
            raise ValueError(f"image indices outside 0..{self.n_images - 1}")
        rows = sum(b - a for a, b in runs) * self.rows_per_image
        shape = (len(ids), rows, self.dim)
        if out is None:
            out = torch.empty(shape)
        else:
            out = out.view(-1)[: shape[0] * shape[1] * shape[2]].view(shape)
        flat = byte_view(out)
        region_bytes = rows * self.dim * FLOAT_BYTES
        fd = os.open(self.path, os.O_RDONLY)
        try:
            whole = runs == [(0, self.capacity)] and ids[-1] - ids[0] == len(ids) - 1
            if whole:  # consecutive regions, every row: one contiguous range of the file
                pread_into(fd, flat, self._offset(ids[0], 0))
                drop_cache(fd, self._offset(ids[0], 0), len(flat))
                return out
            for i, r in enumerate(ids):  # I/O: one read per region and run of images
                pos = i * region_bytes
                for a, b in runs:
                    size = (b - a) * self.rows_per_image * self.dim * FLOAT_BYTES
                    offset = self._offset(r, a * self.rows_per_image)
                    pread_into(fd, flat[pos : pos + size], offset)
                    drop_cache(fd, offset, size)
                    pos += size
        finally:
            os.close(fd)
        return out


class LayerStoreWriter:
    """Writes one layer's aggregated maps ``[B, C, h, w]`` batch by batch into a :class:`LayerStore`.

    ``n_images`` known: positional writes straight into the region layout. None: the batches
    are appended to a spool file, reorganised by region in :meth:`finish`."""

    def __init__(self, path: Path, grid: tuple[int, int], n_images: int | None) -> None:
        self.path, self.grid, self.capacity = path, grid, n_images
        self.filled = 0
        self.shape: tuple[int, int, int] | None = None  # R, s*s, C
        self._spooled: list[int] = []  # images per spooled batch
        target = path if n_images is not None else path.with_suffix(".spool")
        self._fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._spool_path = None if n_images is not None else target

    def add(self, feature: Tensor) -> None:
        """Append ``[B, C, h, w]`` (the next B images)."""
        regions = split_regions(feature.detach().float().cpu(), self.grid)  # [R, B*s*s, C], contiguous
        batch = feature.shape[0]
        shape = (regions.shape[0], regions.shape[1] // batch, regions.shape[2])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise DataError(f"feature batch of shape {tuple(feature.shape)} does not match the first ones")
        if self._spool_path is not None:
            pwrite_all(self._fd, byte_view(regions), self.filled * self._image_bytes)
            self._spooled.append(batch)
        else:
            if self.filled + batch > self.capacity:
                raise DataError(f"more than the announced {self.capacity} training images")
            self._write_regions(self._fd, regions, self.filled, self.capacity)
        self.filled += batch

    @property
    def _image_bytes(self) -> int:
        assert self.shape is not None
        return self.shape[0] * self.shape[1] * self.shape[2] * FLOAT_BYTES

    def _write_regions(self, fd: int, regions: Tensor, first_image: int, capacity: int) -> None:
        """``regions [R, b*s*s, C]`` of images ``first_image..`` into the region layout."""
        assert self.shape is not None
        n_regions, rows, dim = regions.shape
        region_stride = capacity * self.shape[1] * dim * FLOAT_BYTES
        start = first_image * self.shape[1] * dim * FLOAT_BYTES
        data, size = byte_view(regions), rows * dim * FLOAT_BYTES
        for r in range(n_regions):  # I/O: one positional write per region
            pwrite_all(fd, data[r * size : (r + 1) * size], r * region_stride + start)

    def finish(self) -> LayerStore:
        """Close the file (reorganising a spool) and return the store."""
        try:
            if self.shape is None:
                raise DataError("no training images to fit on")
            if self._spool_path is not None:
                self._reorganise()
            capacity = self.capacity if self.capacity is not None else self.filled
            return LayerStore(self.path, self.shape[0], self.shape[1], self.shape[2], capacity, self.filled)
        finally:
            self.close()

    def _reorganise(self) -> None:
        """Spool (batches in arrival order) -> region layout, one batch in memory at a time."""
        assert self.shape is not None and self._spool_path is not None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            first = 0
            for batch in self._spooled:
                regions = torch.empty(self.shape[0], batch * self.shape[1], self.shape[2])
                pread_into(self._fd, byte_view(regions), first * self._image_bytes)
                drop_cache(self._fd, first * self._image_bytes, batch * self._image_bytes)
                self._write_regions(fd, regions, first, self.filled)
                first += batch
        finally:
            os.close(fd)
        os.close(self._fd)
        self._fd = -1
        self._spool_path.unlink()
        self._spool_path = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._spool_path is not None:
            self._spool_path.unlink(missing_ok=True)


class FeatureStore:
    """A temporary folder (under ``directory``, default the system's temp dir) holding one
    :class:`LayerStore` file per layer; removed on exit from the ``with`` block, also on errors."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        if directory is not None and not Path(directory).is_dir():
            raise ConfigError(f"store_dir={str(directory)!r}: no such folder")
        self.directory = directory
        self.root: Path | None = None

    def __enter__(self) -> "FeatureStore":
        self.root = Path(tempfile.mkdtemp(prefix="fapm-store-", dir=self.directory))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def writer(self, layer: int, grid: tuple[int, int], n_images: int | None) -> LayerStoreWriter:
        assert self.root is not None, "use FeatureStore in a with block"
        return LayerStoreWriter(self.root / f"layer{layer}.f32", grid, n_images)
