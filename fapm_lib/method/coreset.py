"""Step 3 of the fit: greedy k-center coreset (Sener & Savarese), batched over regions, with
covering radii; and FAPM's adaptive rule on those radii (near / far regions).

All regions of a layer are processed at once: one batched vector-matrix product per greedy
step, no loop over regions or positions. The vectors are kept transposed (``[R, C, N]``), so
that product reads memory in order: about 4x faster on a CPU than ``[R, N, C]``. Greedy
prefixes are nested, so a selection can be extended later (FAPM's "far" regions continue the
same run up to ``a * r``). How the runs are stepped in parallel:
:mod:`fapm_lib.method.machinery.threads`.

Reading order: :class:`GreedyKCenter`; the adaptive rule (:func:`far_regions`,
:func:`near_far_sizes`, :func:`coreset_size`); what a selection is (:class:`Selection`,
:class:`GreedyState`); :func:`random_projection`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .machinery.threads import one_torch_thread, region_slices, thread_pool


class GreedyKCenter:
    """Greedy k-center over ``x: [R, N, C]`` (R independent sets of N vectors).

    The first centre of each set is the vector nearest to the set's mean (deterministic).
    After ``extend(m)``: ``indices [R, m]`` are the chosen rows and ``radii [R, m]`` the
    covering radius (largest distance from any vector to its nearest centre) after each step,
    so ``radii[:, -1]`` is the current radius and ``radii`` never increases along a row.
    """

    def __init__(self, x: Tensor, first: Tensor | None = None) -> None:
        """``first [R]``: each set's first centre (default: the vector nearest to the set's mean)."""
        self._prepare(x)
        if first is None:
            first = self._sq_dist_to(x.mean(dim=1)).argmin(dim=1)  # [R]
        self.min_sq = torch.full_like(self.sq, float("inf"))
        self._index_chunks: list[Tensor] = []
        self._radius_chunks: list[Tensor] = []
        self._add(first)

    @classmethod
    def resume(cls, x: Tensor, state: "GreedyState") -> "GreedyKCenter":
        """Continue a run saved with :meth:`state` on the same vectors ``x: [R, N, C]`` (read
        again, e.g. from a disk store): the same selection as if the run had never stopped."""
        new = object.__new__(cls)
        new._prepare(x)
        if state.min_sq.shape != new.sq.shape:
            raise ValueError(f"state for {tuple(state.min_sq.shape)} vectors, got {tuple(new.sq.shape)}")
        new.min_sq = state.min_sq.to(new.sq.device, copy=True)
        new._farthest = state.farthest.to(new.sq.device)
        new._index_chunks = [state.indices.to(new.sq.device)]
        new._radius_chunks = [state.radii.to(new.sq.device)]
        return new

    def state(self) -> "GreedyState":
        """What :meth:`resume` needs to continue this run without ``xt`` (``[R, N]`` floats)."""
        self._compact()
        return GreedyState(self.indices, self.radii, self.min_sq, self._farthest)

    @property
    def n_selected(self) -> int:
        return sum(c.shape[1] for c in self._index_chunks)

    @property
    def indices(self) -> Tensor:
        """``[R, m]`` selected row indices, in selection order."""
        return torch.cat(self._index_chunks, dim=1)

    @property
    def radii(self) -> Tensor:
        """``[R, m]`` covering radius after 1..m centres."""
        return torch.cat(self._radius_chunks, dim=1)

    def extend(self, n_total: int, progress: bool = False, desc: str = "coreset") -> "GreedyKCenter":
        """Grow every set's selection to ``min(n_total, N)`` centres (the sets in slices, one per
        torch thread, each stepped on one intra-op thread: see the module's docstring)."""
        steps = min(n_total, self.sq.shape[1]) - self.n_selected
        if steps > 0:
            parts = region_slices(self.sq.shape[0], torch.get_num_threads())
            with tqdm(total=steps * len(parts), desc=desc, disable=not progress, leave=False, mininterval=0.5) as bar, \
                    one_torch_thread():
                if len(parts) == 1:
                    runs = [self._steps(parts[0], steps, bar)]
                else:
                    modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
                    runs = list(thread_pool(len(parts)).map(lambda part: self._run(part, steps, bar, modes), parts))
            self._index_chunks.append(torch.cat([r[0] for r in runs]))
            self._radius_chunks.append(torch.cat([r[1] for r in runs]))
            self._farthest = torch.cat([r[2] for r in runs])
        self._compact()
        return self

    def subset(self, regions: Tensor) -> "GreedyKCenter":
        """The same run restricted to some sets (``regions: [G]`` long), state kept."""
        new = object.__new__(GreedyKCenter)
        new.xt, new.sq, new.min_sq = self.xt[regions], self.sq[regions], self.min_sq[regions].clone()
        new._d2 = torch.empty_like(new.sq)
        new._farthest = self._farthest[regions]
        new._index_chunks = [self.indices[regions]]
        new._radius_chunks = [self.radii[regions]]
        return new

    def _prepare(self, x: Tensor) -> None:
        if x.ndim != 3 or x.shape[1] == 0:
            raise ValueError(f"expected [R, N, C] with N > 0, got {tuple(x.shape)}")
        self.xt = x.transpose(1, 2).contiguous()  # [R, C, N]
        self.sq = torch.linalg.vector_norm(x, dim=-1).square_()  # [R, N], no x-sized temporary
        # one distance buffer for the whole run: a fresh [R, N] per step fragments the heap
        # (RSS then grows step after step on long runs)
        self._d2 = torch.empty_like(self.sq)

    def _compact(self) -> None:
        if len(self._index_chunks) > 1:
            self._index_chunks = [self.indices]
            self._radius_chunks = [self.radii]

    def _add(self, idx: Tensor) -> None:
        radius_sq, self._farthest = self._step(idx)
        self._index_chunks.append(idx[:, None])
        self._radius_chunks.append(radius_sq.sqrt()[:, None])

    def _run(self, part: slice, steps: int, bar: tqdm, modes: tuple[bool, bool] = (False, False)
             ) -> tuple[Tensor, Tensor, Tensor]:
        """``steps`` greedy steps of the sets ``part``: their new ``indices``, ``radii [G, steps]``
        and next centre ``[G]``. ``modes``: the caller's (inference mode, grad mode), which are
        per thread in torch."""
        with torch.inference_mode(modes[0]), torch.set_grad_enabled(modes[1]):
            return self._steps(part, steps, bar)

    def _steps(self, part: slice, steps: int, bar: tqdm) -> tuple[Tensor, Tensor, Tensor]:
        idx = self._farthest[part]
        chosen, radii = [], []
        for _ in range(steps):
            radius_sq, nxt = self._step(idx, part)
            chosen.append(idx)
            radii.append(radius_sq.sqrt_())
            idx = nxt
            bar.update(1)
        return torch.stack(chosen, 1), torch.stack(radii, 1), idx

    def _step(self, idx: Tensor, part: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """Add centre ``idx [G]`` to the sets ``part``; their squared radius and next centre ``[G]``."""
        xt = self.xt[part]
        centres = xt[torch.arange(xt.shape[0], device=idx.device), :, idx]  # [G, C]
        min_sq = self.min_sq[part]
        torch.minimum(min_sq, self._sq_dist_to(centres, part), out=min_sq)
        min_sq.scatter_(1, idx[:, None], 0.0)  # a centre covers itself exactly
        return min_sq.max(dim=1)  # the next centre comes with the radius

    def _sq_dist_to(self, centres: Tensor, part: slice = slice(None)) -> Tensor:
        """Squared L2 distance of every vector of the sets ``part`` to its set's centre:
        ``[G, C] -> [G, N]``."""
        d2 = self._d2[part]
        torch.bmm(centres.unsqueeze(1), self.xt[part], out=d2.unsqueeze(1))  # dot products, then in place:
        return d2.mul_(-2).add_(self.sq[part]).add_(centres.pow(2).sum(-1, keepdim=True)).clamp_min_(0)


def far_regions(radii: Tensor, n_near: int, n_far: int) -> Tensor:
    """FAPM's adaptive rule, ``[R] -> [R]`` bool: a region is "far" (keeps ``n_far`` centres)
    when its covering radius at the base ratio exceeds the mean radius of its layer's regions;
    none is when ``n_far == n_near`` (fixed sampling, or a ratio too small to differ)."""
    if n_far <= n_near:
        return torch.zeros_like(radii, dtype=torch.bool)
    return radii > radii.mean()


def near_far_sizes(n: int, ratio: float, multiplier: float, sampling: str) -> tuple[int, int]:
    """Centres a "near" and a "far" region of ``n`` vectors keep: ``ceil(r n)`` and
    ``ceil(a r n)`` with ``adaptive`` sampling; ``ceil(r n)`` both with ``fixed``."""
    n_near = coreset_size(n, ratio)
    return n_near, coreset_size(n, ratio * multiplier) if sampling == "adaptive" else n_near


def coreset_size(n: int, ratio: float) -> int:
    """Number of centres kept from ``n`` vectors at ``ratio`` (at least one)."""
    return max(1, min(n, math.ceil(round(n * ratio, 9))))  # round: 0.1 * 3 * 100 is 30, not 31


@dataclass
class Selection:
    """Which of its training vectors each region of a layer keeps: ``radii [R]`` (the covering
    radius, or its bound, at the base ratio), ``far [R]``, and the rows kept by the near regions
    ``near_rows [Gn, n_near]`` and the far ones ``far_rows [Gf, n_far]``, in region order."""

    radii: Tensor
    far: Tensor
    near_rows: Tensor
    far_rows: Tensor

    def groups(self) -> list[tuple[Tensor, Tensor]]:
        """``(region ids [G], rows [G, M])`` of each non-empty size class: near, then far."""
        ids = torch.arange(self.far.shape[0])
        parts = [(ids[~self.far], self.near_rows), (ids[self.far], self.far_rows)]
        return [(regions, rows) for regions, rows in parts if len(regions)]


@dataclass
class GreedyState:
    """A paused :class:`GreedyKCenter` run over R sets of N vectors: ``indices [R, m]``,
    ``radii [R, m]``, ``min_sq [R, N]`` (squared distance to the nearest centre), ``farthest [R]``."""

    indices: Tensor
    radii: Tensor
    min_sq: Tensor
    farthest: Tensor


def random_projection(x: Tensor, dim: int | None, seed: int = 0) -> Tensor:
    """Johnson-Lindenstrauss projection ``[..., C] -> [..., dim]`` (seeded Gaussian); identity when
    ``dim`` is None or not smaller than C. Used only to pick centres faster."""
    if dim is None or dim >= x.shape[-1]:
        return x
    gen = torch.Generator(device="cpu").manual_seed(seed)
    weight = torch.randn(x.shape[-1], dim, generator=gen, dtype=torch.float32) / math.sqrt(dim)
    return x @ weight.to(device=x.device, dtype=x.dtype)
