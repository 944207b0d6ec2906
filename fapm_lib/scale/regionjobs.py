"""What one job does with one chunk of regions of one layer, here or on a Dask worker that reads
the shared feature store (:mod:`fapm_lib.scale.pipeline` plans and runs them).

Greedy runs of different regions never interact, so each job reads its regions (all rows, or
some images' rows) and returns small results (chosen rows, radii, paused runs); the region pass
writes its output to files beside the store (the memory banks, the held-out distances), so
nothing large travels back. Every job also returns how long it took and how many bytes it read.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..config import FAPMConfig
from ..method.coreset import GreedyKCenter, GreedyState, random_projection
from ..method.machinery.cells import CellChoice, choose_regions
from ..method.memory import BankGroup
from ..method.regions import image_rows
from ..system.positional import byte_view, pwrite_all, read_tensor
from .region_source import RegionSource
from .store import LayerStore


def _report(began: float, source: RegionSource, ids: Sequence[int], images: Tensor | None = None) -> dict[str, float]:
    return {"seconds": time.perf_counter() - began, "regions": len(ids),
            "read_bytes": 4 * len(ids) * source.rows(images) * source.dim}


def cells_job(source: RegionSource, ids: list[int], variants: list[Tensor], per_image: int,
              config: FAPMConfig) -> tuple[list[list[CellChoice]], dict]:
    """The greedy within cells (:func:`~fapm_lib.method.machinery.cells.choose_regions`) of regions ``ids``,
    for each variant (image set: every image, or the images outside one calibration fold)."""
    began = time.perf_counter()
    choices = choose_regions(source.read(ids), ids, variants, per_image, config)
    return choices, _report(began, source, ids)


def greedy_first_job(source: RegionSource, ids: list[int], images: Tensor | None, n_near: int, projection: int | None,
                     seed: int) -> tuple[GreedyState, dict]:
    """The exact greedy of regions ``ids`` (over ``images``' rows; None: all) to ``n_near``
    centres, paused (:meth:`~fapm_lib.method.coreset.GreedyKCenter.state`)."""
    began = time.perf_counter()
    x = source.read(ids, images)
    state = GreedyKCenter(random_projection(x, projection, seed)).extend(n_near).state()
    return state, _report(began, source, ids, images)


def greedy_resume_job(source: RegionSource, ids: list[int], images: Tensor | None, state: GreedyState, n_far: int,
                      projection: int | None, seed: int) -> tuple[Tensor, dict]:
    """A paused greedy run of regions ``ids`` continued to ``n_far`` centres: ``[G, n_far]`` rows."""
    began = time.perf_counter()
    x = source.read(ids, images)
    indices = GreedyKCenter.resume(random_projection(x, projection, seed), state).extend(n_far).indices
    return indices, _report(began, source, ids, images)


class BankSlots:
    """The memory banks of one layer being filled region by region: per size class, a tensor
    ``bank_t [G, C, M]`` and the slot of each region in it (the in-process sink)."""

    def __init__(self, groups: list[tuple[Tensor, Tensor]], dim: int) -> None:
        """``groups``: (region ids [G], rows [G, M]) per size class."""
        self.tensors = [torch.empty(len(ids), dim, rows.shape[1]) for ids, rows in groups]
        self.slot = {int(r): (c, i) for c, (ids, _) in enumerate(groups) for i, r in enumerate(ids.tolist())}

    def put(self, region: int, bank_t: Tensor) -> None:
        """Region ``region``'s bank, ``[C, M]``."""
        c, i = self.slot[region]
        self.tensors[c][i] = bank_t

    def load(self, bank_file: "BankFile") -> None:
        """Fill every slot from a :class:`BankFile` written by the jobs (one read per region)."""
        for region, (c, i) in self.slot.items():
            read_tensor(bank_file.path, self.tensors[c][i], bank_file.offsets[region])


@dataclass
class BankFile:
    """The memory banks of one layer in one file beside the store, each region's ``[C, M]``
    float32 at ``offsets[region]`` (the sink of jobs that run on other processes)."""

    path: Path
    offsets: dict[int, int]

    @classmethod
    def plan(cls, path: Path, groups: list[tuple[Tensor, Tensor]], dim: int) -> "BankFile":
        offsets, at = {}, 0
        for ids, rows in groups:
            for r in ids.tolist():
                offsets[int(r)] = at
                at += 4 * dim * rows.shape[1]
        with open(path, "wb") as fh:
            fh.truncate(at)
        return cls(path, offsets)

    def put(self, region: int, bank_t: Tensor) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            pwrite_all(fd, byte_view(bank_t.contiguous()), self.offsets[region])
        finally:
            os.close(fd)


@dataclass
class HeldOutTask:
    """The k-fold part of a region pass: per fold ``f``, ``images[f]`` (the scored images it
    holds out, :mod:`fapm_lib.method.machinery.folds`) and ``slots[f]`` (their places among the scored
    images, in ``knn``: a store of ``[R, n_scored * s*s, k]``); ``rows[f][i]``: the rows of the
    i-th region of the job kept by fold ``f``'s memory; ``k`` neighbours kept."""

    images: list[Tensor]
    slots: list[Tensor]
    rows: list[list[Tensor]]
    k: int
    knn: LayerStore
    partial_bytes: int = 64 * 2**20

    def of(self, positions: list[int]) -> "HeldOutTask":
        """The same task for the regions at ``positions`` of this one's."""
        return HeldOutTask(self.images, self.slots, [[rows[p] for p in positions] for rows in self.rows], self.k,
                           self.knn, self.partial_bytes)


def query_batches(n: int, size: int) -> list[slice]:
    """``0..n`` in slices of about ``size`` (at least 2), none of length 1 unless ``n`` is 1: the
    batched product's rows then come out bit-identical to one product over all ``n`` queries
    (a single query takes another code path in the BLAS)."""
    size = max(2, size)
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def region_pass_job(source: RegionSource, ids: list[int], final_rows: list[Tensor], sink: Any, per_image: int,
                    heldout: HeldOutTask | None = None) -> dict:
    """One read of regions ``ids`` (all images): their memory banks (``final_rows``, one tensor
    of rows per region) into ``sink``; with ``heldout``, every fold's memory of these regions
    searched by the fold's scored images, the ``k`` nearest distances written to ``heldout.knn``."""
    began = time.perf_counter()
    x = source.read(ids)  # [G, N * s*s, C]
    for i, r in enumerate(ids):  # a handful of regions per job
        sink.put(r, x[i, final_rows[i]].T)
    if heldout is not None:
        distances = torch.zeros(len(ids), heldout.knn.n_images * per_image, heldout.k)
        for images, slots, rows in zip(heldout.images, heldout.slots, heldout.rows):
            held, into = image_rows(images, per_image), image_rows(slots, per_image)
            for members in _size_classes(rows):
                local = torch.tensor(members)
                group = BankGroup(local, x[local[:, None], torch.stack([rows[m] for m in members])])
                per_batch = heldout.partial_bytes // (4 * len(members) * group.bank_t.shape[2])
                for part in query_batches(len(held), per_batch):
                    distances[local[:, None], into[part]] = group.nearest(x[local[:, None], held[part]], heldout.k)
        for i, r in enumerate(ids):
            heldout.knn.write_region(r, distances[i])
    return _report(began, source, ids)


def _size_classes(rows: list[Tensor]) -> list[list[int]]:
    """Positions of ``rows`` grouped by length (near and far banks: two classes at most)."""
    classes: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        classes.setdefault(len(r), []).append(i)
    return [classes[n] for n in sorted(classes)]
