"""Fitting within a memory budget (``fit --max-memory``): the training features go to a disk
store (:mod:`fapm_lib.scale.store`), and each layer's memory is built a chunk of regions at a
time, as many regions as the budget allows: the same memories as the in-RAM fit (greedy runs of
different regions never interact)."""
from __future__ import annotations

from typing import Iterable, Protocol, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import DataError
from ..method.coreset import GreedyKCenter, GreedyState, coreset_size, far_regions, near_far_sizes, random_projection
from ..method.memory import BankGroup, LayerMemory
from ..system.budget import current_rss, parse_size, regions_per_chunk
from .store import FeatureStore, LayerStore, LayerStoreWriter


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
    """:func:`~fapm_lib.method.memory.build_layer_memory` over ``source`` read ``regions_per_chunk`` regions at a time,
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
    n_near, n_far = near_far_sizes(n, ratio, multiplier, sampling)
    maybe_far = n_far > n_near
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
    far = far_regions(radii, n_near, n_far)
    near_ids, far_ids = (~far).nonzero().flatten(), far.nonzero().flatten()
    if maybe_far:  # pass 2
        near_bank_t = torch.empty(len(near_ids), dim, n_near)
        far_bank_t = torch.empty(len(far_ids), dim, n_far)
        far_sources = torch.empty(len(far_ids), n_far, dtype=torch.long)
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
            far_sources[at : at + len(ids)] = greedy.indices.cpu()
            at += len(ids)
            del greedy, state, x
            bar.update(len(ids))
    bar.close()
    del buffer
    groups = []
    if len(near_ids):
        groups.append(BankGroup(near_ids.to(device), near_bank_t.to(device).transpose(1, 2),
                                indices[near_ids].to(device)))
    if len(far_ids):
        groups.append(BankGroup(far_ids.to(device), far_bank_t.to(device).transpose(1, 2), far_sources.to(device)))
    return LayerMemory(groups, radii, far)


def _chunks(ids: Tensor, size: int) -> list[Tensor]:
    """``ids [K]`` in pieces of at most ``size``."""
    return list(ids.split(size)) if len(ids) else []


def _gather_t(x: Tensor, indices: Tensor) -> Tensor:
    """Bank rows ``x[g, indices[g]]``, transposed: ``[G, N, C], [G, m] -> [G, C, m]`` contiguous."""
    return torch.gather(x, 1, indices[:, :, None].expand(-1, -1, x.shape[2])).transpose(1, 2).contiguous()


def chunk_plan(config, feature_sizes: list[tuple[int, int]], shapes: list[tuple[int, int]], layer: int | None) -> int:
    """Regions per coreset chunk for ``layer`` under ``config.max_memory`` (ConfigError with
    the minimum budget when one region does not fit). ``shapes``: per layer (channels, images).
    ``layer=None``: check every layer (before extraction)."""
    budget = parse_size(config.max_memory)
    n_regions = config.grid**2
    keep_ratio = config.coreset_ratio * (config.adaptive_multiplier if config.sampling == "adaptive" else 1)
    sizes = []
    for (dim, n_images), (h, w) in zip(shapes, feature_sizes):
        n_rows = n_images * (h // config.grid) * (w // config.grid)
        n_keep = coreset_size(n_rows, keep_ratio)
        sizes.append((layer_fixed_bytes(n_regions, n_rows, dim, n_keep),
                      chunk_work_bytes(n_rows, dim, n_keep, config.coreset_projection)))
    rss = current_rss()
    todo = range(len(sizes)) if layer is None else [layer]
    per_chunk = n_regions
    for i in todo:
        # this layer's greedy state, this and later layers' banks (before extraction: every layer's)
        reserved = sizes if layer is None else sizes[i:]
        held = {"process now": rss, "greedy state and memory banks": sum(fixed for fixed, _ in reserved)}
        per_chunk = regions_per_chunk(budget, held, sizes[i][1], n_regions, str(config.max_memory),
                                      f"this fit (layer {i})")
    return per_chunk


def write_store(store: FeatureStore, batches: Iterable[list[Tensor]], config, n_images: int | None,
                on_first=None) -> list[LayerStore]:
    """Aggregated maps arriving batch by batch (per layer ``[B, C, h, w]``) -> one
    :class:`LayerStore` per layer. ``on_first(maps)``: called with the first batch before
    anything is written (to check sizes and refuse a budget that is too small early)."""
    writers: list[LayerStoreWriter] = []
    try:
        for maps in batches:
            if not writers:
                if on_first is not None:
                    on_first(maps)
                writers = [store.writer(i, config.grid, n_images) for i in range(len(maps))]
            for writer, f in zip(writers, maps):
                writer.add(f)
        if not writers:
            raise DataError("no training images to fit on")
        return [writer.finish() for writer in writers]
    finally:
        for writer in writers:
            writer.close()


def build_memories_chunked(layers: list[RegionSource], config, feature_sizes: list[tuple[int, int]],
                           device: torch.device | str = "cpu", progress: bool = False) -> tuple[list[LayerMemory], list[int]]:
    """Every layer's memory from region features read chunk by chunk (per layer a
    :class:`RegionSource` of ``[R, M, C]``), within ``config.max_memory``; the memories and the
    regions per chunk of each layer."""
    rows = [(h // config.grid) * (w // config.grid) for h, w in feature_sizes]
    shapes = [(src.dim, src.rows() // per_image) for src, per_image in zip(layers, rows)]
    memories, plan = [], []
    for i, source in enumerate(layers):
        plan.append(chunk_plan(config, feature_sizes, shapes, layer=i))  # the layers built so far are in the RSS
        memories.append(build_layer_memory_chunked(
            source, plan[-1], config.coreset_ratio, config.adaptive_multiplier, config.sampling,
            config.coreset_projection, config.seed, device=device, progress=progress, name=f"layer {i}"))
    return memories, plan
