"""Step 3 of the search: one memory bank per region of one layer, searched by k-NN.

Banks of one size class ("near": ``r``; "far": ``a * r``) are stacked into one tensor, so the
search is one batched matrix product per size class, with no padding rows. This module holds
the search arithmetic (:meth:`BankGroup.nearest`); every caller (prediction, calibration,
ablations, export) goes through :meth:`LayerMemory.search`. How the banks are built from the
training vectors: :mod:`fapm_lib.method.memory_builders`; how they grow without a refit:
:mod:`fapm_lib.method.memory_update`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class LayerMemory(nn.Module):
    """The memory of one backbone layer: ``R`` banks in size groups, plus coreset diagnostics.

    Buffers: ``radii [R]``, the covering radius of each region at the base ratio (with the
    greedy within cells, its bound: the largest radius of the region's cells); ``far [R]``, the
    regions that kept ``a * r`` of their vectors; ``order [R]``, the regions in group order, and
    ``inverse [R]``, its inverse permutation.
    """

    def __init__(self, groups: list[BankGroup], radii: Tensor, far: Tensor) -> None:
        super().__init__()
        self.groups = nn.ModuleList(groups)
        order = torch.cat([g.regions for g in groups])
        self.register_buffer("radii", radii)
        self.register_buffer("far", far)
        self.register_buffer("order", order)
        self.register_buffer("inverse", torch.argsort(order))

    @property
    def n_regions(self) -> int:
        return int(self.radii.shape[0])

    @property
    def dim(self) -> int:
        return int(self.groups[0].bank_t.shape[1])

    def bank_sizes(self) -> Tensor:
        """``[R]`` number of memory vectors of each region."""
        sizes = torch.zeros(self.n_regions, dtype=torch.long)
        for g in self.groups:
            sizes[g.regions.cpu()] = g.bank_t.shape[2]
        return sizes

    def n_vectors(self) -> int:
        return int(sum(g.bank_t.shape[0] * g.bank_t.shape[2] for g in self.groups))

    def megabytes(self) -> float:
        """Size of the banks (float32)."""
        return sum(g.bank_t.numel() * g.bank_t.element_size() for g in self.groups) / 2**20

    def search(self, queries: Tensor, k: int) -> Tensor:
        """The k smallest L2 distances from each query to its own region's bank, ascending:
        ``queries [R, Q, C]`` (region ``r``'s queries in ``queries[r]``) ``-> [R, Q, k]``.

        The regions are put in group order first, so each size group is one contiguous slice
        and one batched product (:meth:`BankGroup.nearest`), then put back in region order."""
        ordered = queries.index_select(0, self.order)
        parts, start = [], 0
        for group in self.groups:  # one or two size classes ("near", "far"), never one per region
            size = group.regions.shape[0]
            parts.append(group.nearest(ordered[start : start + size], k))
            start += size
        nearest = parts[0] if len(parts) == 1 else torch.cat(parts)
        return nearest.index_select(0, self.inverse)

    def search_around(self, queries: Tensor, grid: tuple[int, int], reach: int, k: int) -> Tensor:
        """:meth:`search`, each region's queries also searched in the banks of the regions up to
        ``reach`` rings around it on the ``grid`` (rows, cols) (0: the own bank only, FAPM's
        rule; 1: the 3 x 3 block, for parts that shift by up to a region): ``[R, Q, C] -> [R, Q, k]``,
        the k smallest over all those banks. One :meth:`search` per offset."""
        if reach == 0:
            return self.search(queries, k)
        found = [distances for distances, _ in self._around(queries, grid, reach, lambda q: (self.search(q, k),))]
        return smallest(torch.cat(found, dim=-1), k)

    def search_sources_around(self, queries: Tensor, grid: tuple[int, int],
                              reach: int) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`search_sources` over the banks :meth:`search_around` searches: ``[R, Q, C] ->``
        (1-NN distance, source row, the region whose bank holds it), each ``[R, Q]``."""
        rows, cols = grid
        if reach == 0:
            distances, sources = self.search_sources(queries)
            own = torch.arange(rows * cols, device=queries.device)[:, None].expand_as(sources)
            return distances, sources, own
        parts = list(self._around(queries, grid, reach, lambda q: self.search_sources(q)))
        distances = torch.stack([d for (d, _), _ in parts])  # [offsets, R, Q]
        best = distances.argmin(dim=0, keepdim=True)
        sources = torch.stack([s for (_, s), _ in parts]).gather(0, best)[0]
        regions = torch.stack([r for _, r in parts]).gather(0, best)[0]
        return distances.gather(0, best)[0], sources, regions

    def _around(self, queries: Tensor, grid: tuple[int, int], reach: int,
                search: Callable[[Tensor], tuple[Tensor, ...]]) -> Iterator[tuple[Any, Tensor]]:
        """For each offset ``(dy, dx)`` within ``reach``: ``search`` run on the queries moved to
        the region at that offset (each bank answers its neighbour's queries), its results moved
        back (``inf`` where the neighbour lies outside the grid), and the answering regions
        ``[R, Q]``. ``search``: ``[R, Q, C] ->`` a tuple of ``[R, Q, ...]`` tensors."""
        rows, cols = grid
        cells = queries.reshape(rows, cols, *queries.shape[1:])
        ids = torch.arange(rows * cols, device=queries.device).reshape(rows, cols, 1)
        ids = ids.expand(rows, cols, queries.shape[1])
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                moved = _shift(cells, dy, dx, 0.0).reshape(queries.shape)
                results = search(moved)
                back = [_shift(r.reshape(rows, cols, *r.shape[1:]), -dy, -dx, math.inf if r.is_floating_point() else 0)
                        .reshape(r.shape) for r in results]
                answering = _shift(ids, -dy, -dx, 0).reshape(rows * cols, -1)  # [a, b] -> (a + dy, b + dx)
                yield (back[0] if len(back) == 1 else tuple(back)), answering

    def search_sources(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """The nearest memory vector of each query in its own region's bank, and where it came
        from: ``queries [R, Q, C] ->`` (1-NN distance ``[R, Q]``, equal to :meth:`search` with
        ``k = 1``; source row ``[R, Q]`` among that region's training vectors, see
        :class:`BankGroup`). ConfigError when the memory records no sources (format version 1)."""
        if any(g.sources is None for g in self.groups):
            raise ConfigError("this memory does not record where its vectors came from (a model file of "
                              "format version 1); refit it to explain predictions")
        ordered = queries.index_select(0, self.order)
        distances, sources, start = [], [], 0
        for group in self.groups:
            size = group.regions.shape[0]
            dist, index = group.nearest_indexed(ordered[start : start + size], 1)
            distances.append(dist[..., 0])
            sources.append(group.sources.gather(1, index[..., 0]))
            start += size
        return torch.cat(distances).index_select(0, self.inverse), torch.cat(sources).index_select(0, self.inverse)


class BankGroup(nn.Module):
    """Regions whose banks have the same size. Buffers: ``regions [G]`` (region ids),
    ``bank_t [G, C, M]`` (the banks, transposed), ``sq_norms [G, M]`` and ``sources [G, M]``:
    where each memory vector came from, as its row among its region's training vectors
    (``image * s*s + cell``, the order of :func:`~fapm_lib.method.regions.split_regions`), or
    None when unknown (model files of format version 1).

    The bank is held transposed and contiguous, and :attr:`bank` is a view of it (no second
    copy): the search's matrix product then reads it in order (about 20% faster at batch 1 on
    a CPU)."""

    def __init__(self, regions: Tensor, bank: Tensor, sources: Tensor | None = None) -> None:
        """``regions [G]`` long, ``bank [G, M, C]`` float32, ``sources [G, M]`` long or None."""
        super().__init__()
        if sources is not None and tuple(sources.shape) != tuple(bank.shape[:2]):
            raise ValueError(f"sources {tuple(sources.shape)} do not match the banks {tuple(bank.shape[:2])}")
        self.register_buffer("regions", regions)
        self.register_buffer("bank_t", bank.transpose(-1, -2).contiguous())
        self.register_buffer("sq_norms", self.bank.pow(2).sum(-1))
        self.register_buffer("sources", sources)

    @property
    def bank(self) -> Tensor:
        """``[G, M, C]``, a view of ``bank_t``."""
        return self.bank_t.transpose(-1, -2)

    def nearest(self, queries: Tensor, k: int) -> Tensor:
        """k smallest L2 distances, ascending, from each region's queries to that region's bank:
        ``queries [G, Q, C]`` (in the order of :attr:`regions`) ``-> [G, Q, k]``.

        ``|q - b|^2 = |q|^2 + |b|^2 - 2 q.b``: one batched matrix product gives the last two
        terms for every pair; ``|q|^2`` is the same for all of a query's candidates, so it is
        added after the k smallest are picked."""
        return _finish(smallest(self._partial(queries), k), queries)

    def nearest_indexed(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """:meth:`nearest` and the bank index of each neighbour: ``queries [G, Q, C] ->``
        (distances ``[G, Q, k]``, ascending; indices ``[G, Q, k]`` into the banks' ``M`` rows).
        The same product as :meth:`nearest`; the distances are equal to its own."""
        values, index = self._partial(queries).topk(k, dim=-1, largest=False)
        return _finish(values, queries), index

    def _partial(self, queries: Tensor) -> Tensor:
        """``|b|^2 - 2 q.b`` for every query and bank vector: ``[G, Q, C] -> [G, Q, M]``."""
        return torch.baddbmm(self.sq_norms.unsqueeze(1), queries, self.bank_t, alpha=-2.0)


def smallest(values: Tensor, k: int) -> Tensor:
    """The ``k`` smallest values along the last dimension, ascending: ``[..., M] -> [..., k]``
    (a plain minimum for ``k = 1``, several times faster than ``topk``)."""
    if k == 1:
        return values.amin(-1, keepdim=True)
    return values.topk(k, dim=-1, largest=False).values


def _finish(partial: Tensor, queries: Tensor) -> Tensor:
    """Add ``|q|^2`` to the picked partial distances ``[G, Q, k]`` and take the root (in place)."""
    return partial.add_(queries.pow(2).sum(-1, keepdim=True)).clamp_min_(0).sqrt_()


def _shift(x: Tensor, dy: int, dx: int, fill: float) -> Tensor:
    """``x [rows, cols, ...]`` moved by ``(dy, dx)`` regions: ``y[gy, gx] = x[gy - dy, gx - dx]``,
    ``fill`` where that lies outside."""
    rows, cols = x.shape[:2]
    y = torch.full_like(x, fill)
    y[max(dy, 0) : rows + min(dy, 0), max(dx, 0) : cols + min(dx, 0)] = \
        x[max(-dy, 0) : rows - max(dy, 0), max(-dx, 0) : cols - max(dx, 0)]
    return y
