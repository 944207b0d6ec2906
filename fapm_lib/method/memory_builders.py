"""Step 3 of the fit: each region's training vectors subsampled into its memory bank, with the
coreset and FAPM's adaptive near / far rule (:mod:`fapm_lib.method.coreset`); the checks that the
neighbours scoring reads exist."""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import FAPMConfig
from ..errors import ConfigError
from .coreset import GreedyKCenter, Selection, far_regions, near_far_sizes, random_projection
from .machinery.cells import choose_regions, select_layer
from .memory import BankGroup, LayerMemory


def build_memories(regions: list[Tensor], config: FAPMConfig, progress: bool = False,
                   rows_per_image: list[int] | None = None,
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


def build_layer_memory_cells(features: Tensor, per_image: int, config: FAPMConfig, images: Tensor | None = None,
                             name: str = "layer") -> LayerMemory:
    """One layer's memory by the greedy within cells (:mod:`~fapm_lib.method.machinery.cells`) from
    ``features [R, N * per_image, C]``, over the rows of ``images`` (default: every image; e.g.
    the images outside a calibration fold). The cells depend on the region only, so a fold's
    memory uses the same cells as the whole fit's."""
    images = torch.arange(features.shape[1] // per_image) if images is None else images
    choices = choose_regions(features, list(range(features.shape[0])), [images], per_image, config)[0]
    return memory_from_selection(features, select_layer(choices, config.sampling))


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
