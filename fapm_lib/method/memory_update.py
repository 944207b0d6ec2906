"""Normal vectors added to a fitted memory without a refit (``fapm update``): each region's
greedy run resumes from all of its old bank vectors."""
from __future__ import annotations

import torch
from torch import Tensor

from .coreset import GreedyKCenter, GreedyState, near_far_sizes, random_projection
from .memory import BankGroup, LayerMemory


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
