"""Composable coresets (``coreset_method chunked``): greedy k-center within chunks of images, and
a region's memory is the union of its chunks' selections.

A chunk holds the images of one calibration fold (image ``i`` is in fold ``i % folds``) within a
block of ``folds * chunk_images`` consecutive images, so no chunk mixes folds. Each chunk's
greedy run goes to ``ceil(a r n)`` centres of its ``n`` vectors once; its prefixes are nested, so
the same run gives the chunk's ``ceil(r n)``-prefix and its covering radius there. A region's
memory keeps, from every chunk, the ``r``-prefix ("near") or the ``a r``-prefix ("far"); the
memory of calibration fold ``f`` is the union over the chunks outside fold ``f``: the k-fold
calibration costs no greedy work of its own.

Guarantee: every vector of a chunk lies within that chunk's radius of one of the chunk's
centres, so every training vector of a region lies within the region's stated radius, the
largest radius of its chunks (``LayerMemory.radii``), of its memory; each chunk's radius is at
most twice the optimal k-center radius of that chunk with that many centres (Gonzalez). The
exact greedy gives the same kind of bound over the whole region at once. Cost per region:
``a r N n C`` (``n`` vectors per chunk) instead of about ``r N^2 C``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .coreset import GreedyKCenter, Selection, far_regions, near_far_sizes, random_projection
from .regions import image_rows

#: Images per chunk (per fold) when ``coreset_chunk_images`` is not given.
DEFAULT_CHUNK_IMAGES = 100
#: Bytes of chunk vectors one batched greedy run holds (their transposed copy doubles it).
SET_BATCH_BYTES = 64 * 2**20
#: ``coreset_method auto`` runs the exact greedy while it reads at most this many bytes of
#: vectors (:func:`exact_greedy_bytes`; about 4 minutes at this machine's 20 GB/s), else chunked.
AUTO_EXACT_MAX_BYTES = 5e12


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


def resolve_method(config, n_images: int, layers: list[tuple[int, int]]) -> str:
    """``exact`` or ``chunked`` for ``config`` (a :class:`~fapm_lib.config.FAPMConfig`) and
    ``n_images`` training images; ``layers``: per layer (vectors per image and region, dim)."""
    if config.coreset_method != "auto":
        return config.coreset_method
    folds = min(config.calibration_folds, n_images)
    work = exact_greedy_bytes([(n_images * per_image, dim) for per_image, dim in layers], config.grid**2,
                              config.coreset_ratio, config.adaptive_multiplier, config.sampling, folds)
    return "exact" if work <= AUTO_EXACT_MAX_BYTES else "chunked"


def chunk_images(config) -> int:
    """Images per chunk and fold: ``config.coreset_chunk_images``, or :data:`DEFAULT_CHUNK_IMAGES`."""
    return config.coreset_chunk_images or DEFAULT_CHUNK_IMAGES


def image_chunks(n_images: int, chunk_images: int, folds: int) -> tuple[list[Tensor], list[int]]:
    """The chunks' image indices (each ascending) and each chunk's fold. ``folds`` below 2: one
    fold (plain blocks of ``chunk_images`` consecutive images). Chunks come block by block, then
    fold by fold within a block."""
    folds = max(1, min(folds, n_images))
    chunks, fold_of = [], []
    block = folds * chunk_images
    for start in range(0, n_images, block):  # start is a multiple of folds: image start + f is in fold f
        for f in range(min(folds, n_images - start)):
            chunks.append(torch.arange(start + f, min(start + block, n_images), folds))
            fold_of.append(f)
    return chunks, fold_of


@dataclass
class ChunkRuns:
    """The greedy runs of every chunk of a set of regions, ``R`` of them.

    ``indices [R, T]``: the chosen rows among each region's vectors, chunk after chunk, chunk
    ``k``'s ``n_keep[k]`` rows (in selection order) from column ``offsets[k]``; ``radii [R, K]``:
    the covering radius of chunk ``k``'s first ``n_near[k]`` centres over its vectors; ``folds``:
    each chunk's calibration fold."""

    indices: Tensor
    radii: Tensor
    n_near: list[int]
    n_keep: list[int]
    folds: list[int]

    @property
    def offsets(self) -> list[int]:
        return [sum(self.n_keep[:k]) for k in range(len(self.n_keep))]

    def columns(self, chunks: list[int], far: bool) -> Tensor:
        """Columns of :attr:`indices` holding the r-prefixes (``far`` False) or the whole runs
        (the ``a r``-prefixes) of ``chunks``."""
        sizes = self.n_keep if far else self.n_near
        return torch.cat([torch.arange(self.offsets[k], self.offsets[k] + sizes[k]) for k in chunks])

    def rows(self, regions: Tensor, chunks: list[int], far: bool) -> Tensor:
        """``[G, M]``: the rows kept by ``regions`` (ids into this run's regions) from ``chunks``."""
        return self.indices[regions][:, self.columns(chunks, far)]

    def select(self, exclude_fold: int | None, sampling: str) -> "Selection":
        """The union memory of the chunks outside ``exclude_fold`` (None: every chunk): a region
        is "far" (:func:`~fapm_lib.method.coreset.far_regions`) when the largest r-radius of those
        chunks exceeds the mean over the regions."""
        chunks = [k for k, f in enumerate(self.folds) if f != exclude_fold]
        radii = self.radii[:, chunks].amax(dim=1)
        n_near = sum(self.n_near[k] for k in chunks)
        n_far = sum(self.n_keep[k] for k in chunks) if sampling == "adaptive" else n_near
        far = far_regions(radii, n_near, n_far)
        ids = torch.arange(radii.shape[0])
        return Selection(radii, far, self.rows(ids[~far], chunks, False), self.rows(ids[far], chunks, True))

    @staticmethod
    def cat(parts: list["ChunkRuns"]) -> "ChunkRuns":
        """Runs of consecutive sets of regions, joined (region order kept)."""
        first = parts[0]
        return ChunkRuns(torch.cat([p.indices for p in parts]), torch.cat([p.radii for p in parts]),
                         first.n_near, first.n_keep, first.folds)


def run_chunks(x: Tensor, chunks: list[Tensor], folds: list[int], per_image: int, ratio: float,
               multiplier: float, sampling: str = "adaptive", projection: int | None = None,
               seed: int = 0, progress: bool = False, name: str = "layer") -> ChunkRuns:
    """Greedy runs of every chunk of the regions ``x [G, N * per_image, C]`` (rows image-major):
    each chunk's run to ``ceil(a r n)`` centres (``ceil(r n)`` with ``fixed`` sampling), chunks of
    equal size batched together, a few MB of vectors at a time."""
    sizes = [len(c) * per_image for c in chunks]
    n_near, n_keep = zip(*(near_far_sizes(n, ratio, multiplier, sampling) for n in sizes))
    runs = ChunkRuns(torch.empty(x.shape[0], sum(n_keep), dtype=torch.long), torch.empty(x.shape[0], len(chunks)),
                     list(n_near), list(n_keep), list(folds))
    offsets = torch.tensor(runs.offsets)
    bar = tqdm(total=len(chunks), desc=f"coreset {name} (chunks)", disable=not progress, leave=False)
    for size in sorted(set(sizes)):
        same = torch.tensor([k for k, n in enumerate(sizes) if n == size])
        rows = torch.stack([image_rows(chunks[k], per_image) for k in same.tolist()])  # [K', n]
        per_batch = max(1, SET_BATCH_BYTES // (x.shape[0] * size * x.shape[2] * 4))
        for at in torch.arange(len(same)).split(per_batch):  # a handful of batches of chunks
            batch, batch_rows = same[at], rows[at]
            sets = x[:, batch_rows.flatten()].view(x.shape[0] * len(batch), size, x.shape[2])
            keep, near = n_keep[batch[0]], n_near[batch[0]]
            greedy = GreedyKCenter(random_projection(sets, projection, seed)).extend(keep)
            local = greedy.indices.view(x.shape[0], len(batch), keep)
            chosen = batch_rows.to(local.device)[None].expand(x.shape[0], -1, -1).gather(2, local)  # [G, B, keep]
            columns = (offsets[batch][:, None] + torch.arange(keep)).flatten()
            runs.indices[:, columns] = chosen.reshape(x.shape[0], -1).cpu()
            runs.radii[:, batch] = greedy.radii[:, near - 1].view(x.shape[0], len(batch)).cpu()
            bar.update(len(batch))
    bar.close()
    return runs
