"""One memory bank per region of one layer, subsampled by the adaptive coreset, searched by k-NN.

Banks of one size class ("near": ``r``; "far": ``a * r``) are stacked into one tensor, so the
search is one batched matrix product per size class, with no padding rows.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .coreset import GreedyKCenter, GreedyState, coreset_size, random_projection
from .errors import ConfigError


@dataclass
class BankGroup:
    """Regions whose banks have the same size: ``regions [G]``, ``bank [G, M, C]``.

    The bank is held transposed, ``bank_t [G, C, M]`` contiguous, and ``bank`` is a view of it
    (no second copy): the search's matrix product then reads it in order (about 20% faster at
    batch 1 on a CPU)."""

    regions: Tensor
    bank: Tensor
    bank_t: Tensor = field(init=False, repr=False)
    sq_norms: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bank_t = self.bank.transpose(-1, -2).contiguous()
        self.bank = self.bank_t.transpose(-1, -2)
        self.sq_norms = self.bank.pow(2).sum(-1)  # [G, M]

    def nearest(self, queries: Tensor, k: int) -> Tensor:
        """k smallest L2 distances, ascending, from each region's queries to that region's bank:
        ``queries [G, Q, C]`` (in the order of :attr:`regions`) ``-> [G, Q, k]``.

        ``|q - b|^2 = |q|^2 + |b|^2 - 2 q.b``: one batched matrix product gives the last two
        terms for every pair; ``|q|^2`` is the same for all of a query's candidates, so it is
        added after the k smallest are picked."""
        partial = torch.baddbmm(self.sq_norms.unsqueeze(1), queries, self.bank_t, alpha=-2.0)  # [G, Q, M]
        nearest = smallest(partial, k)
        return nearest.add_(queries.pow(2).sum(-1, keepdim=True)).clamp_min_(0).sqrt_()

    def to(self, device: torch.device | str) -> "BankGroup":
        return BankGroup(self.regions.to(device), self.bank.to(device))


@dataclass
class LayerMemory:
    """The memory of one backbone layer: ``R`` banks in size groups, plus coreset diagnostics.

    ``radii [R]``: covering radius of each region at the base ratio; ``far [R]``: regions that
    kept ``a * r`` of their vectors.
    """

    groups: list[BankGroup]
    radii: Tensor
    far: Tensor

    @property
    def n_regions(self) -> int:
        return int(self.radii.shape[0])

    @property
    def dim(self) -> int:
        return int(self.groups[0].bank.shape[-1])

    def bank_sizes(self) -> Tensor:
        """``[R]`` number of memory vectors of each region."""
        sizes = torch.zeros(self.n_regions, dtype=torch.long)
        for g in self.groups:
            sizes[g.regions.cpu()] = g.bank.shape[1]
        return sizes

    def n_vectors(self) -> int:
        return int(sum(g.bank.shape[0] * g.bank.shape[1] for g in self.groups))

    def search(self, queries: Tensor, k: int) -> Tensor:
        """The k smallest L2 distances from each query to its own region's bank, ascending:
        ``queries [R, Q, C]`` (region ``r``'s queries in ``queries[r]``) ``-> [R, Q, k]``."""
        out = queries.new_empty(queries.shape[0], queries.shape[1], k)
        for g in self.groups:  # one or two size classes ("near", "far"), never one per region
            out[g.regions] = g.nearest(queries[g.regions], k)
        return out

    @functools.cached_property
    def order(self) -> tuple[int, ...]:
        """The regions in group order (the row order of :meth:`search_ordered`), a permutation."""
        return tuple(int(r) for g in self.groups for r in g.regions.tolist())

    def search_ordered(self, queries: Tensor, k: int) -> Tensor:
        """Fast path of :meth:`search` for queries already in :attr:`order`: ``[R, Q, C] ->
        [R, Q, k]`` in the same order, each size group a contiguous slice (no gather, no scatter)."""
        parts, start = [], 0
        for g in self.groups:
            parts.append(g.nearest(queries[start : start + len(g.regions)], k))
            start += len(g.regions)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def to(self, device: torch.device | str) -> "LayerMemory":
        return LayerMemory([g.to(device) for g in self.groups], self.radii, self.far)


def smallest(values: Tensor, k: int) -> Tensor:
    """The ``k`` smallest values along the last dimension, ascending: ``[..., M] -> [..., k]``
    (a plain minimum for ``k = 1``, several times faster than ``topk``)."""
    if k == 1:
        return values.amin(-1, keepdim=True)
    return values.topk(k, dim=-1, largest=False).values


def build_layer_memory(
    features: Tensor,
    ratio: float = 0.1,
    multiplier: float = 2.0,
    sampling: str = "adaptive",
    projection: int | None = None,
    seed: int = 0,
    progress: bool = False,
    name: str = "layer",
) -> LayerMemory:
    """Subsample each region's training vectors ``[R, N, C]`` into its memory bank.

    ``fixed``: every region keeps ``ceil(r N)`` greedy centres. ``adaptive``: a region whose
    covering radius at ``r`` exceeds the layer's mean radius is "far" and keeps ``ceil(a r N)``
    (the same greedy run, continued); the others keep ``ceil(r N)``.
    """
    greedy = GreedyKCenter(random_projection(features, projection, seed))
    return memory_from_greedy(features, greedy, ratio, multiplier, sampling, progress, name)


def memory_from_greedy(
    features: Tensor,
    greedy: GreedyKCenter,
    ratio: float,
    multiplier: float,
    sampling: str = "adaptive",
    progress: bool = False,
    name: str = "layer",
) -> LayerMemory:
    """The memory of :func:`build_layer_memory` from a greedy run over ``features [R, N, C]``
    (or their projection) that may already hold more centres: prefixes are reused, and only
    the far regions are extended when the run is too short."""
    n = features.shape[1]
    n_near, n_far = coreset_size(n, ratio), coreset_size(n, ratio * multiplier)
    greedy.extend(n_near, progress, desc=f"coreset {name} (r)")
    radii = greedy.radii[:, n_near - 1].cpu()
    far = torch.zeros_like(radii, dtype=torch.bool)
    if sampling == "adaptive" and n_far > n_near:
        far = radii > radii.mean()
    groups = []
    near_ids = (~far).nonzero().flatten().to(features.device)
    if len(near_ids):
        groups.append(_group(features, near_ids, greedy.indices[near_ids, :n_near]))
    if far.any():
        far_ids = far.nonzero().flatten().to(features.device)
        if greedy.n_selected >= n_far:
            far_indices = greedy.indices[far_ids, :n_far]
        else:
            far_indices = greedy.subset(far_ids).extend(n_far, progress, desc=f"coreset {name} (a*r)").indices
        groups.append(_group(features, far_ids, far_indices))
    return LayerMemory(groups, radii, far)


def _group(features: Tensor, regions: Tensor, indices: Tensor) -> BankGroup:
    """Gather ``features[regions[g], indices[g]]`` -> ``BankGroup`` with bank ``[G, M, C]``."""
    return BankGroup(regions, features[regions[:, None], indices])


def check_k(memories: list[LayerMemory], k: int) -> None:
    """ConfigError when ``k`` exceeds the smallest bank of any layer."""
    sizes = [int(mem.bank_sizes().min()) for mem in memories]
    smallest = min(sizes)
    if k > smallest:
        raise ConfigError(
            f"k={k} exceeds the smallest memory bank ({smallest} vectors, layer {sizes.index(smallest)}); "
            "lower k, raise coreset_ratio or add training images"
        )


# ---- bounded memory: the same memories from region chunks (``fit --max-memory``) -----------------
class RegionSource(Protocol):
    """Region features readable a chunk of regions at a time (a disk store, or a tensor)."""

    n_regions: int
    dim: int

    def rows(self, images: Tensor | None = None) -> int:
        """Vectors per region for ``images`` (ascending image indices; None: all)."""

    def read(self, regions: Sequence[int] | Tensor, images: Tensor | None = None,
             out: Tensor | None = None) -> Tensor:
        """Regions ``regions`` (ascending ids) -> ``[len(regions), rows(images), C]`` on the CPU."""


class TensorRegions:
    """A :class:`RegionSource` over region features in RAM, ``[R, N * rows_per_image, C]``."""

    def __init__(self, features: Tensor, rows_per_image: int = 1) -> None:
        self.features, self.rows_per_image = features, rows_per_image
        self.n_regions, self.dim = int(features.shape[0]), int(features.shape[2])

    def rows(self, images: Tensor | None = None) -> int:
        return int(self.features.shape[1]) if images is None else int(images.numel()) * self.rows_per_image

    def read(self, regions: Sequence[int] | Tensor, images: Tensor | None = None,
             out: Tensor | None = None) -> Tensor:
        ids = torch.as_tensor(list(map(int, regions)), dtype=torch.long, device=self.features.device)
        chunk = self.features.index_select(0, ids)
        if images is not None:
            rows = (images.long()[:, None] * self.rows_per_image + torch.arange(self.rows_per_image)).flatten()
            chunk = chunk.index_select(1, rows.to(chunk.device))
        return chunk


def chunk_work_bytes(n_rows: int, dim: int, n_keep: int, projection: int | None = None) -> int:
    """Peak bytes of one region's coreset work in :func:`build_layer_memory_chunked`: the read
    vectors ``[M, C]``, their transposed copy (or projection and its transposed copy), five
    ``[M]`` buffers (norms, distances, nearest-centre distances, a paused run's distances and
    their resumed copy) and the gathered bank rows ``[n_keep, C]`` with their transposed copy."""
    greedy_dim = projection if projection is not None and projection < dim else dim
    copies = 2 * greedy_dim if greedy_dim < dim else dim
    return 4 * (n_rows * (dim + copies + 5) + 2 * n_keep * dim)


def layer_fixed_bytes(n_regions: int, n_rows: int, dim: int, n_keep: int) -> int:
    """Bytes :func:`build_layer_memory_chunked` holds for the whole layer: the paused greedy
    runs (``[R, M]`` distances, ``[R, n_keep]`` indices and radii) and the banks it builds
    (at most ``[R, n_keep, C]`` plus their squared norms)."""
    return n_regions * (4 * n_rows + 12 * n_keep + 4 * n_keep * (dim + 1))


def build_layer_memory_chunked(
    source: RegionSource,
    regions_per_chunk: int,
    ratio: float = 0.1,
    multiplier: float = 2.0,
    sampling: str = "adaptive",
    projection: int | None = None,
    seed: int = 0,
    images: Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    name: str = "layer",
) -> LayerMemory:
    """:func:`build_layer_memory` over ``source`` read ``regions_per_chunk`` regions at a time,
    bit-identical to it on the same features (greedy runs of different regions never interact).

    ``images``: build from these images' rows only (ascending indices, e.g. a calibration fold).
    Pass 1 runs every region's greedy to ``r`` and keeps its state; when regions can be "far",
    pass 2 reads the near regions again to gather their banks and the far ones to resume their
    runs to ``a * r``. Holds :func:`layer_fixed_bytes` plus ``regions_per_chunk`` x
    :func:`chunk_work_bytes` (one region's work) at most."""
    n_regions, dim = source.n_regions, source.dim
    n = source.rows(images)
    if n == 0:
        raise ValueError("no vectors to build a memory from")
    per_chunk = max(1, min(regions_per_chunk, n_regions))
    n_near, n_far = coreset_size(n, ratio), coreset_size(n, ratio * multiplier)
    maybe_far = sampling == "adaptive" and n_far > n_near
    buffer = torch.empty(per_chunk * n * dim)  # one read buffer for every chunk
    indices = torch.empty(n_regions, n_near, dtype=torch.long)
    radii_all = torch.empty(n_regions, n_near)
    min_sq = torch.empty(n_regions, n) if maybe_far else None
    farthest = torch.empty(n_regions, dtype=torch.long)
    near_bank_t = None if maybe_far else torch.empty(n_regions, dim, n_near)  # filled in pass 1
    bar = tqdm(total=n_regions * (2 if maybe_far else 1), desc=f"coreset {name} (regions)", disable=not progress,
               leave=False)
    for ids in _chunks(torch.arange(n_regions), per_chunk):  # pass 1: greedy to r, chunk by chunk
        x = source.read(ids, images, out=buffer).to(device)
        greedy = GreedyKCenter(random_projection(x, projection, seed)).extend(n_near)
        state = greedy.state()
        indices[ids], radii_all[ids], farthest[ids] = state.indices.cpu(), state.radii.cpu(), state.farthest.cpu()
        if min_sq is not None:
            min_sq[ids] = state.min_sq.cpu()
        else:
            near_bank_t[ids] = _gather_t(x, state.indices).cpu()
        del greedy, state, x
        bar.update(len(ids))
    radii = radii_all[:, n_near - 1].clone()
    far = torch.zeros_like(radii, dtype=torch.bool)
    if maybe_far:
        far = radii > radii.mean()
    near_ids, far_ids = (~far).nonzero().flatten(), far.nonzero().flatten()
    if maybe_far:  # pass 2
        near_bank_t = torch.empty(len(near_ids), dim, n_near)
        far_bank_t = torch.empty(len(far_ids), dim, n_far)
        at = 0
        for ids in _chunks(near_ids, per_chunk):
            x = source.read(ids, images, out=buffer).to(device)
            near_bank_t[at : at + len(ids)] = _gather_t(x, indices[ids].to(x.device)).cpu()
            at += len(ids)
            del x
            bar.update(len(ids))
        at = 0
        for ids in _chunks(far_ids, per_chunk):
            x = source.read(ids, images, out=buffer).to(device)
            state = GreedyState(indices[ids], radii_all[ids], min_sq[ids], farthest[ids])
            greedy = GreedyKCenter.resume(random_projection(x, projection, seed), state).extend(n_far)
            far_bank_t[at : at + len(ids)] = _gather_t(x, greedy.indices).cpu()
            at += len(ids)
            del greedy, state, x
            bar.update(len(ids))
    bar.close()
    del buffer
    groups = []
    if len(near_ids):
        groups.append(BankGroup(near_ids.to(device), near_bank_t.to(device).transpose(1, 2)))
    if len(far_ids):
        groups.append(BankGroup(far_ids.to(device), far_bank_t.to(device).transpose(1, 2)))
    return LayerMemory(groups, radii, far)


def _chunks(ids: Tensor, size: int) -> list[Tensor]:
    """``ids [K]`` in pieces of at most ``size``."""
    return list(ids.split(size)) if len(ids) else []


def _gather_t(x: Tensor, indices: Tensor) -> Tensor:
    """Bank rows ``x[g, indices[g]]``, transposed: ``[G, N, C], [G, m] -> [G, C, m]`` contiguous."""
    return torch.gather(x, 1, indices[:, :, None].expand(-1, -1, x.shape[2])).transpose(1, 2).contiguous()


def search_regions(memory: LayerMemory, queries: Tensor, start: int, k: int) -> Tensor:
    """k smallest L2 distances for a chunk of regions: ``queries [r, Q, C]`` of regions
    ``start..start+r-1`` -> ``[r, Q, k]`` ascending (e.g. held-out rows read from a store)."""
    stop = start + queries.shape[0]
    out = torch.empty(queries.shape[0], queries.shape[1], k, device=queries.device, dtype=queries.dtype)
    for g in memory.groups:  # one or two size classes
        mask = (g.regions >= start) & (g.regions < stop)
        if not mask.any():
            continue
        local = g.regions[mask] - start
        q = queries.index_select(0, local)
        partial = torch.baddbmm(g.sq_norms[mask].unsqueeze(1), q, g.bank_t[mask], alpha=-2.0)
        nearest = smallest(partial, k).add_(q.pow(2).sum(-1, keepdim=True)).clamp_min_(0).sqrt_()
        out.index_copy_(0, local, nearest)
    return out
