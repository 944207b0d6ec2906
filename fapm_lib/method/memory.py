"""One memory bank per region of one layer, subsampled by the adaptive coreset, searched by k-NN.

Banks of one size class ("near": ``r``; "far": ``a * r``) are stacked into one tensor, so the
search is one batched matrix product per size class, with no padding rows. This module holds
the search arithmetic (:meth:`BankGroup.nearest`); every caller (prediction, calibration,
ablations, export) goes through :meth:`LayerMemory.search`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .cells import choose_regions, select_layer
from .coreset import GreedyKCenter, GreedyState, Selection, far_regions, near_far_sizes, random_projection


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


def _finish(partial: Tensor, queries: Tensor) -> Tensor:
    """Add ``|q|^2`` to the picked partial distances ``[G, Q, k]`` and take the root (in place)."""
    return partial.add_(queries.pow(2).sum(-1, keepdim=True)).clamp_min_(0).sqrt_()


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

    ``fixed``: every region keeps ``ceil(r N)`` greedy centres. ``adaptive``: a "far" region
    (:func:`~fapm_lib.method.coreset.far_regions`) keeps ``ceil(a r N)`` (the same greedy run,
    continued); the others keep ``ceil(r N)``.
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
    n_near, n_far = near_far_sizes(features.shape[1], ratio, multiplier, sampling)
    greedy.extend(n_near, progress, desc=f"coreset {name} (r)")
    radii = greedy.radii[:, n_near - 1].cpu()
    far = far_regions(radii, n_near, n_far)
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


def memory_from_selection(features: Tensor, selection: Selection) -> LayerMemory:
    """The memory keeping ``features[r, rows]`` for each region ``r`` of ``selection``
    (``features [R, N, C]``)."""
    groups = [_group(features, ids.to(features.device), rows.to(features.device)) for ids, rows in selection.groups()]
    return LayerMemory(groups, selection.radii, selection.far)


def _group(features: Tensor, regions: Tensor, indices: Tensor) -> BankGroup:
    """Gather ``features[regions[g], indices[g]]`` -> ``BankGroup`` with bank ``[G, M, C]``
    (the greedy's row ``indices [G, M]`` are the vectors' sources)."""
    return BankGroup(regions, features[regions[:, None], indices], indices)


def check_k(memories: list[LayerMemory], k: int) -> None:
    """ConfigError when ``k`` exceeds the smallest bank of any layer."""
    check_k_sizes([int(mem.bank_sizes().min()) for mem in memories], k)


def check_k_sizes(sizes: list[int], k: int) -> None:
    """:func:`check_k` from each layer's smallest bank size."""
    least = min(sizes)
    if k > least:
        raise ConfigError(
            f"k={k} exceeds the smallest memory bank ({least} vectors, layer {sizes.index(least)}); "
            "lower k, raise coreset_ratio or add training images"
        )


def check_fold_k(k: int, kept: int) -> None:
    """ConfigError when ``k`` exceeds the ``kept`` neighbours the calibration folds' memories give."""
    if k > kept:
        raise ConfigError(f"k={k} exceeds the smallest calibration fold memory ({kept} vectors); lower k or "
                          "calibration_folds, or add training images")


def build_memories(regions: list[Tensor], config, progress: bool = False, rows_per_image: list[int] | None = None,
                   method: str = "exact") -> list[LayerMemory]:
    """Every layer's memory from its region features (per layer ``[R, N, C]``) with the
    coreset settings of ``config`` (a :class:`~fapm_lib.config.FAPMConfig`); checks that the
    neighbours scoring reads exist. ``method``: ``exact`` or ``cells`` (which needs
    ``rows_per_image``, ``s*s`` per layer)."""
    if method == "cells":
        memories = [build_layer_memory_cells(r, per_image, config, name=f"layer {i}")
                    for i, (r, per_image) in enumerate(zip(regions, rows_per_image or []))]
    else:
        memories = [build_layer_memory(r, config.coreset_ratio, config.adaptive_multiplier, config.sampling,
                                       config.coreset_projection, config.seed, progress, name=f"layer {i}")
                    for i, r in enumerate(regions)]
    check_k(memories, config.search_k)
    return memories



def extend_layer_memory(memory: LayerMemory, features: Tensor, n_old_rows: int, ratio: float = 0.1,
                        multiplier: float = 2.0, sampling: str = "adaptive", projection: int | None = None,
                        seed: int = 0) -> tuple[LayerMemory, Tensor, Tensor]:
    """Add new normal vectors to a fitted memory without refitting it.

    ``features [R, N, C]``: region ``r``'s new vectors in ``features[r]`` (rows ordered as
    :func:`~fapm_lib.method.regions.split_regions` orders them). Per region, a greedy k-center
    run starts with *all* of the region's old bank vectors as its centres and the new vectors as
    its candidates (each candidate's distance to the old bank, then the farthest candidate each
    step), and adds ``ceil(r N)`` centres, ``ceil(a r N)`` in a "far" region: the rule and the
    ratios of the fit applied to the new rows. The near / far classes and the radii stay as
    fitted. A new vector's source is ``n_old_rows + its row`` (the new images continue the old
    image numbering). Returns the new memory and, per region ``[R]``, the covering radius of the
    new vectors by the old bank and by the extended one (in the projected space when
    ``projection`` is set, as the greedy selection runs there)."""
    n_near, n_far = near_far_sizes(features.shape[1], ratio, multiplier, sampling)
    before = torch.zeros(memory.n_regions)
    after = torch.zeros(memory.n_regions)
    groups = []
    for group in memory.groups:
        regions, bank = group.regions, group.bank
        candidates = features.index_select(0, regions.to(features.device)).to(bank.device)  # [G, N, C]
        projected = random_projection(candidates, projection, seed)
        probe = group if projected is candidates else BankGroup(regions, random_projection(bank, projection, seed))
        distance = probe.nearest(projected, 1)[..., 0]  # [G, N]: each candidate to the old bank
        state = GreedyState(torch.zeros(len(regions), 0, dtype=torch.long, device=bank.device),
                            distance.new_zeros(len(regions), 0), distance.square(), distance.argmax(dim=1))
        far = bool(memory.far[regions[0]])  # a group holds one size class
        greedy = GreedyKCenter.resume(projected, state).extend(n_far if far else n_near)
        index = greedy.indices  # [G, m]
        added = candidates[torch.arange(len(regions), device=bank.device)[:, None], index]
        sources = None if group.sources is None else torch.cat([group.sources, index + n_old_rows], dim=1)
        groups.append(BankGroup(regions, torch.cat([bank, added], dim=1), sources))
        before[regions.cpu()] = distance.max(dim=1).values.cpu()
        after[regions.cpu()] = greedy.radii[:, -1].cpu()
    return LayerMemory(groups, memory.radii, memory.far), before, after


def build_layer_memory_cells(features: Tensor, per_image: int, config, images: Tensor | None = None,
                             name: str = "layer") -> LayerMemory:
    """One layer's memory by the greedy within cells (:mod:`~fapm_lib.method.cells`) from
    ``features [R, N * per_image, C]``, over the rows of ``images`` (default: every image; e.g.
    the images outside a calibration fold). The cells depend on the region only, so a fold's
    memory uses the same cells as the whole fit's."""
    images = torch.arange(features.shape[1] // per_image) if images is None else images
    choices = choose_regions(features, list(range(features.shape[0])), [images], per_image, config)[0]
    return memory_from_selection(features, select_layer(choices, config.sampling))
