"""Greedy k-center within cells (``coreset_method cells``): the exact greedy's order, with each
new centre updating only its own cell's distances.

A region's vectors are split into cells: the Voronoi cells of seeded random vectors of the region
(``ceil(N / cell_size)`` of them; a cell above ``2 * cell_size`` is split again the same way).
The exact greedy adds the farthest vector of the region at each step. Here every cell runs its
own greedy (first centre: its seed vector) and a region keeps, of all its cells' centres, the
``B`` chosen in the exact greedy's order, largest current radius first: each cell's prefix
whose radius stays above a common threshold (:func:`allocate`). That is the exact greedy except
that a centre does not cover the vectors of other cells; each step reads one cell (about
``cell_size`` vectors) instead of the whole region, so a region costs about ``B * cell_size * C``
instead of ``B * N * C``.

Guarantee: every vector of a region lies within the region's stated radius (``LayerMemory.radii``)
of the memory: the largest radius, after its prefix, of the region's cells, each measured over
the cell's own vectors; each cell's radius is within twice the optimal k-center radius of that
cell with that many centres (Gonzalez). The calibration folds' memories run the same procedure
on the folds' images, in the same cells (their seeds are random vectors, not chosen by the data).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...config import FAPMConfig
from ..coreset import GreedyKCenter, Selection, coreset_size, far_regions, near_far_sizes, random_projection
from ..regions import image_rows
from .folds import fold_count

#: Vectors per cell on average when ``coreset_cell_size`` is not given.
DEFAULT_CELL_SIZE = 250
#: Bytes of cell vectors (padded) one batched greedy run holds (its transposed copy doubles it).
SET_BATCH_BYTES = 64 * 2**20
#: Cells are padded to a multiple of this many vectors, so that cells of similar size share a run.
PAD = 32
#: Bytes of each temporary of the partition's nearest-seed search (a block of rows against the seeds).
PARTITION_BLOCK_BYTES = 64 * 2**20
#: ``coreset_method auto`` runs the exact greedy while it reads at most this many bytes of
#: vectors (:func:`exact_greedy_bytes`; about 4 minutes at this machine's 20 GB/s), else cells.
AUTO_EXACT_MAX_BYTES = 5e12


def choose_regions(x: Tensor, region_ids: list[int], variants: list[Tensor], per_image: int, config: FAPMConfig
                   ) -> list[list[CellChoice]]:
    """For regions ``x [G, N * per_image, C]`` (ids ``region_ids`` in the layer) and each variant
    (the images whose rows count: every image, or the images outside one calibration fold): per
    variant, per region, the cells' :class:`CellChoice`. The cells are drawn once per region (seed:
    ``config.seed`` and the region id) and shared by the variants. The runs start at 1.25 times a
    cell's share of the ``a r`` budget and are run again, twice as long, for the cells the
    allocation would take further, until none would: the choice is then the one of runs as long
    as the cells."""
    rows = [image_rows(images, per_image) for images in variants]
    budgets = [near_far_sizes(len(r), config.coreset_ratio, config.adaptive_multiplier, config.sampling) for r in rows]
    max_cells = coreset_size(x.shape[1] // 3, config.coreset_ratio)  # below any fold memory's size
    sets = CellSets.build([partition(x[g], cell_size(config), max_cells, config.seed * 1_000_003 + region)
                           for g, region in enumerate(region_ids)], rows)
    pairs = [(g, v) for g in range(len(region_ids)) for v in range(len(variants))]
    share = torch.cat([sets.size[sets.pair_start[p]:sets.pair_start[p + 1]] * budgets[v][1] / len(rows[v])
                       for p, (_, v) in enumerate(pairs)])
    caps = (1.25 * share).ceil().long() + 2
    everything = torch.arange(len(sets.size))
    runs = run_cells(x, sets, everything, caps, config.coreset_projection, config.seed)
    todo = list(range(len(pairs)))
    while todo:  # a few rounds
        short = []
        for p in todo:
            cells = everything[sets.pair_start[p]:sets.pair_start[p + 1]]
            kept, _, _, lowest = allocate(runs, cells, budgets[pairs[p][1]][1])
            end = runs.radii[runs.at[cells] + runs.length[cells] - 1]
            longer = (kept >= runs.length[cells]) & (runs.length[cells] < sets.size[cells]) & (end >= lowest)
            short.append(cells[longer])
        again = torch.cat(short)
        todo = [p for p, s in zip(todo, short) if len(s)]
        if len(again):
            caps[again] *= 2
            runs.add(again, run_cells(x, sets, again, caps[again], config.coreset_projection, config.seed))
    out: list[list[CellChoice]] = [[] for _ in variants]
    for p, (_, v) in enumerate(pairs):
        cells = everything[sets.pair_start[p]:sets.pair_start[p + 1]]
        _, far_rows, _, _ = allocate(runs, cells, budgets[v][1])
        _, near_rows, radius, _ = allocate(runs, cells, budgets[v][0])
        out[v].append(CellChoice(near_rows, far_rows, radius))
    return out


def select_layer(choices: list[CellChoice], sampling: str) -> Selection:
    """The layer's :class:`~fapm_lib.method.coreset.Selection` from its regions' choices (in region
    order): FAPM's near/far rule on their stated radii."""
    radii = torch.tensor([c.radius for c in choices])
    n_near, n_far = len(choices[0].near_rows), len(choices[0].far_rows)
    far = far_regions(radii, n_near, n_far if sampling == "adaptive" else n_near)
    near_rows = [c.near_rows for c, f in zip(choices, far.tolist()) if not f]
    far_rows = [c.far_rows for c, f in zip(choices, far.tolist()) if f]
    return Selection(radii, far, torch.stack(near_rows) if near_rows else torch.empty(0, n_near, dtype=torch.long),
                     torch.stack(far_rows) if far_rows else torch.empty(0, n_far, dtype=torch.long))


@dataclass
class CellChoice:
    """One region's memory for one image set, both size classes: ``near_rows``, ``far_rows``
    (the rows kept at ``r`` and at ``a r``) and the stated radius at ``r``."""

    near_rows: Tensor
    far_rows: Tensor
    radius: float


def partition(x: Tensor, size: int, max_cells: int, seed: int) -> tuple[Tensor, Tensor]:
    """Cells of one region's vectors ``x [N, C]``: ``cell [N]`` (ids ``0..K-1``) and ``to_seed
    [N]``, each vector's squared distance to its cell's seed. ``K = ceil(N / size)`` seeded random
    vectors seed the cells (at most ``max_cells``); a cell above ``2 * size`` vectors is split by
    ``ceil(n / size)`` random vectors of its own, while the count allows."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    k = max(1, min(max_cells, math.ceil(n / size)))
    seeds = torch.randperm(n, generator=gen)[:k].sort().values
    cell, to_seed = _nearest(x, x[seeds])
    for _ in range(8):  # a few rounds; each splits every cell still too large
        counts = torch.bincount(cell, minlength=k)
        big = (counts > 2 * size).nonzero().flatten().tolist()
        if not big or k >= max_cells:
            break
        for c in big:  # a handful of cells
            rows = (cell == c).nonzero().flatten()
            parts = min(math.ceil(len(rows) / size), max_cells - k + 1)
            if parts < 2:
                continue
            sub = rows[torch.randperm(len(rows), generator=gen)[:parts].sort().values]
            which, dist = _nearest(x[rows], x[sub])
            cell[rows] = torch.where(which == 0, c, k + which - 1)
            to_seed[rows] = dist
            k += parts - 1
    return cell, to_seed


def _nearest(x: Tensor, seeds: Tensor) -> tuple[Tensor, Tensor]:
    """For each row of ``x [N, C]``: the index of its nearest row of ``seeds [K, C]`` and the
    squared distance to it (blocks of rows, so no ``[N, K]`` product is held whole)."""
    seed_sq = seeds.pow(2).sum(1)
    cells, dist = [], []
    for block in x.split(max(1, PARTITION_BLOCK_BYTES // (4 * max(len(seeds), x.shape[1])))):
        d2 = (block @ seeds.T).mul_(-2).add_(seed_sq).add_(block.pow(2).sum(1, keepdim=True))
        best = d2.min(dim=1)
        cells.append(best.indices)
        dist.append(best.values.clamp_min_(0))
    return torch.cat(cells), torch.cat(dist)


@dataclass
class CellSets:
    """The cells of several (region, image set) pairs, flat: cell ``s`` holds the rows
    ``members[start[s] : start[s] + size[s]]`` of region ``region[s]`` (first: the row nearest to
    the cell's seed); the cells of pair ``p`` are ``pair_start[p] .. pair_start[p + 1] - 1``."""

    region: Tensor
    start: Tensor
    size: Tensor
    members: Tensor
    pair_start: Tensor

    @classmethod
    def build(cls, cells: list[tuple[Tensor, Tensor]], rows: list[Tensor]) -> "CellSets":
        """``cells``: per region, ``(cell [N], to_seed [N])`` from :func:`partition`; ``rows``: the
        rows of each image set. Pairs: region-major, then image set."""
        region, size, members, pairs = [], [], [], [0]
        for g, (cell, to_seed) in enumerate(cells):  # the regions of one job: a handful
            for kept in rows:
                order = kept[torch.argsort(to_seed[kept], stable=True)]  # nearest to the seed first ...
                order = order[torch.argsort(cell[order], stable=True)]  # ... within each cell
                counts = torch.unique_consecutive(cell[order], return_counts=True)[1]
                region.append(torch.full((len(counts),), g))
                size.append(counts)
                members.append(order)
                pairs.append(pairs[-1] + len(counts))
        size_t = torch.cat(size)
        return cls(torch.cat(region), torch.cumsum(size_t, 0) - size_t, size_t, torch.cat(members), torch.tensor(pairs))


def run_cells(x: Tensor, sets: CellSets, cells: Tensor, caps: Tensor, projection: int | None, seed: int) -> Runs:
    """Greedy runs of ``cells`` (ids into ``sets``; vectors ``x [G, N, C]``), each from its first
    row to ``caps`` centres (at most its size): cells of similar size are stepped together, padded
    with copies of their first vector."""
    size, first = sets.size[cells], sets.start[cells]
    length = torch.minimum(caps, size)
    at = torch.cumsum(length, 0) - length
    chosen = torch.empty(int(length.sum()), dtype=torch.long)
    radii = torch.empty(len(chosen))
    padded = (size + PAD - 1) // PAD * PAD
    for width in padded.unique().tolist():  # a handful of widths
        members = (padded == width).nonzero().flatten()
        per_batch = max(1, SET_BATCH_BYTES // (width * x.shape[2] * 4))
        for batch in members[torch.argsort(length[members], descending=True, stable=True)].split(per_batch):
            local = torch.arange(width)[None].expand(len(batch), -1)
            rows = sets.members[torch.where(local < size[batch, None], local, 0) + first[batch, None]]  # [b, width]
            steps = int(length[batch].max())
            vectors = random_projection(x[sets.region[cells[batch], None], rows], projection, seed)
            greedy = GreedyKCenter(vectors, torch.zeros(len(batch), dtype=torch.long)).extend(steps)
            keep = torch.arange(steps)[None] < length[batch, None]  # [b, steps]
            picked = rows.gather(1, torch.where(greedy.indices < size[batch, None], greedy.indices, 0))
            where = (at[batch, None] + torch.arange(steps))[keep]
            chosen[where], radii[where] = picked[keep], greedy.radii[keep]
    return Runs(chosen, radii, at, length)


@dataclass
class Runs:
    """Greedy runs of cells, flat: cell ``s``'s run is ``chosen[at[s] : at[s] + length[s]]`` (rows,
    in selection order) with ``radii`` (the cell's radius after each of those centres)."""

    chosen: Tensor
    radii: Tensor
    at: Tensor
    length: Tensor

    def add(self, cells: Tensor, other: "Runs") -> None:
        """Replace the runs of ``cells`` by ``other``'s (longer) runs of them."""
        self.at[cells] = other.at + len(self.chosen)
        self.length[cells] = other.length
        self.chosen, self.radii = torch.cat([self.chosen, other.chosen]), torch.cat([self.radii, other.radii])


def allocate(runs: Runs, cells: Tensor, budget: int) -> tuple[Tensor, Tensor, float, float]:
    """The exact greedy's choice among the runs of ``cells`` (one pair's): ``budget`` centres in
    all, every cell keeping its first; the others go, largest first, to the cells whose radius
    before them is largest (ties: cell order, then run order). Returns the centres per cell, the
    kept rows, the radius (the largest cell radius after its prefix) and the smallest radius a
    centre was given for (``inf`` when none beyond the first ones)."""
    at, length = runs.at[cells], runs.length[cells]
    k = len(cells)
    if budget < k:
        raise ValueError(f"{k} cells need a budget of at least {k} centres, got {budget}")
    extra = length - 1
    worth = runs.radii[_ranges(at, extra)]  # the radius before centre j + 2 of each run
    chosen = torch.argsort(-worth, stable=True)[: budget - k]
    kept = 1 + torch.bincount(torch.repeat_interleave(torch.arange(k), extra)[chosen], minlength=k)
    rows = runs.chosen[_ranges(at, kept)]
    lowest = float(worth[chosen[-1]]) if len(chosen) else math.inf
    return kept, rows, float(runs.radii[at + kept - 1].max()), lowest


def _ranges(starts: Tensor, lengths: Tensor) -> Tensor:
    """``cat(arange(s, s + l) for s, l in zip(starts, lengths))``, vectorised."""
    offsets = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
    return torch.arange(int(lengths.sum())) + offsets


def resolve_method(config: FAPMConfig, n_images: int, layers: list[tuple[int, int]], n_regions: int) -> str:
    """``exact`` or ``cells`` for ``config`` (a :class:`~fapm_lib.config.FAPMConfig`) and
    ``n_images`` training images; ``layers``: per layer (vectors per image and region, dim);
    ``n_regions``: regions per layer."""
    if config.coreset_method != "auto":
        return config.coreset_method
    folds = fold_count(n_images, config.calibration_folds)
    work = exact_greedy_bytes([(n_images * per_image, dim) for per_image, dim in layers], n_regions,
                              config.coreset_ratio, config.adaptive_multiplier, config.sampling, folds)
    return "exact" if work <= AUTO_EXACT_MAX_BYTES else "cells"


def exact_greedy_bytes(layers: list[tuple[int, int]], n_regions: int, ratio: float, multiplier: float,
                       sampling: str, folds: int) -> float:
    """Bytes of vectors the exact greedy reads over a fit (every step reads its region's
    vectors): per layer of ``(N, C)`` (vectors per region, dimension), ``R N C 4`` per step,
    ``n_near + (n_far - n_near) / 2`` steps (about half the regions are far), times
    ``1 + F ((F - 1) / F)^2`` with ``F`` calibration folds (their memories are built too)."""
    total = 0.0
    for n, dim in layers:
        n_near, n_far = near_far_sizes(n, ratio, multiplier, sampling)
        total += n_regions * n * dim * 4 * (n_near + (n_far - n_near) / 2)
    return total * (1 + folds * ((folds - 1) / folds) ** 2 if folds >= 2 else 1)


def work_bytes(n_rows: int, dim: int, n_variants: int) -> tuple[int, int]:
    """Memory of :func:`choose_regions`: bytes per region of ``n_rows x dim`` vectors (the
    vectors, the cell ids and seed distances, each variant's cell members and their sorting
    temporaries) and bytes per call whatever the regions (the greedy batches with their
    transposed copies and distances, the partition's block temporaries)."""
    per_region = 4 * n_rows * dim + 12 * n_rows + 8 * n_rows * (n_variants + 4)
    return per_region, 3 * SET_BATCH_BYTES + 3 * PARTITION_BLOCK_BYTES


def cell_size(config: FAPMConfig) -> int:
    """Vectors per cell: ``config.coreset_cell_size``, or :data:`DEFAULT_CELL_SIZE`."""
    return config.coreset_cell_size or DEFAULT_CELL_SIZE
