"""Steps 5 to 8: from per-layer nearest-neighbour distances to an anomaly map and an image score."""
from __future__ import annotations

import functools
from typing import NamedTuple

import kornia
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .geometry import valid_cells
from .regions import grid_shape

ALIGNMENTS = ("aligned", "official")


class Prediction(NamedTuple):
    """``anomaly_map [B, S, S]``, ``pred_score [B]``, ``patch_scores [B, H8, W8]`` (fused 1-NN).
    A named tuple, so a module returning it traces (``torch.jit.trace``, ONNX export) as is."""

    anomaly_map: Tensor
    pred_score: Tensor
    patch_scores: Tensor


def align_layer(distances: Tensor, fine: int, alignment: str = "aligned", grid: int | tuple[int, int] = 7) -> Tensor:
    """One layer's distances ``[B, h, w, k]`` onto the layer-2 grid, ``fine`` cells high:
    ``aligned`` (:func:`upsample_nearest`, the 2x2 tiling, the library's) or ``official`` (:func:`upsample_official`,
    the official code's, for comparison)."""
    factor = fine // distances.shape[1]
    if alignment == "aligned":
        return upsample_nearest(distances, factor)
    if alignment == "official":
        return upsample_official(distances, factor, grid)
    raise ValueError(f"alignment={alignment!r}: expected one of {', '.join(ALIGNMENTS)}")


def upsample_nearest(coarse: Tensor, factor: int) -> Tensor:
    """Bring a coarse layer's values onto the finer grid, aligned with the 2x2 tiling convention:
    ``[B, h, w, ...] -> [B, h*f, w*f, ...]``, coarse cell (i, j) onto the fine cells
    (f*i .. f*i+f-1, f*j .. f*j+f-1) that tile it (``factor`` 1: ``coarse`` itself).

    The receptive-field centres of the two layers still differ by half a fine cell, in a
    direction that depends on the backbone's padding, so no nearest mapping is exact; this is
    the one that keeps every cell on its own part of the image. :func:`upsample_official` is
    the official code's version of this step, which misplaces half of the fine cells."""
    if factor == 1:
        return coarse
    return coarse.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def upsample_official(coarse: Tensor, factor: int, grid: int | tuple[int, int]) -> Tensor:
    """The official FAPM code's version of :func:`upsample_nearest` (for comparison only):
    ``[B, h, w, ...] -> [B, h*f, w*f, ...]``, computed per region of the ``grid x grid`` grid.

    The official code flattens each region's coarse cells row by row and repeats each one
    ``f*f`` times along the region's flattened fine cells, so fine cell (y, x) of a region with
    fine side ``S`` receives the coarse cell with flat index ``(y*S + x) // f**2``, not the cell
    ``(y // f, x // f)`` above it. At ``f = 2`` (coarse 2x2 cells per region, fine 4x4) fine
    row ``y`` takes coarse cell ``(y // 2, y % 2)`` for the whole row: 8 of the 16 fine cells of
    every region, 392 of the 784 fine cells of a 28x28 map, get a neighbouring cell's value."""
    rows, cols = grid_shape(grid)
    h, w = coarse.shape[1] // rows, coarse.shape[2] // cols  # coarse cells per region, each way
    regions = rearrange(coarse, "b (gy sy) (gx sx) ... -> b gy gx (sy sx) ...", gy=rows, gx=cols)
    fine = regions.repeat_interleave(factor * factor, dim=3)  # flat coarse index c -> fine (c f^2 .. c f^2 + f^2 - 1)
    return rearrange(fine, "b gy gx (sy sx) ... -> b (gy sy) (gx sx) ...", sy=h * factor, sx=w * factor)


def fuse_layers(aligned: list[Tensor]) -> Tensor:
    """Fuse the layers: the sum of their k-NN distances, already on one grid (see
    :func:`upsample_nearest`): list of ``[B, H, W, k] -> [B, H, W, k]`` (a new tensor)."""
    shapes = {tuple(d.shape) for d in aligned} if not torch.jit.is_tracing() else set()  # traced sizes are tensors
    if len(shapes) > 1:
        raise ValueError(f"fuse_layers: the layers are on different grids {sorted(shapes)}; "
                         "bring them onto one grid first (upsample_nearest)")
    total = aligned[0].clone()
    for distances in aligned[1:]:
        total += distances
    return total


def postprocess(knn: Tensor, size: int | tuple[int, int], sigma: float = 4.0, mode: str = "max",
                padded: tuple[int, int] | None = None) -> Prediction:
    """Fused nearest distances ``[B, H8, W8, k]`` -> :class:`Prediction`: the anomaly map
    (:func:`anomaly_map` of the 1-NN distances) at ``size`` ``(H, W)`` and the image score
    (:func:`image_score`). With ``padded`` (native resolution: the distances cover the canvas
    padded to whole regions), the map is made at the padded size and cut to ``size``, and the
    score and the patch scores read only the cells that hold image pixels (:func:`valid_knn`)."""
    height, width = (size, size) if isinstance(size, int) else size
    if padded is None or tuple(padded) == (height, width):
        patch = knn[..., 0]
        return Prediction(anomaly_map(patch, (height, width), sigma), image_score(knn, mode), patch)
    amap = anomaly_map(knn[..., 0], padded, sigma)[:, :height, :width]
    valid = valid_knn(knn, (height, width), padded)
    return Prediction(amap, image_score(valid, mode), valid[..., 0])


def valid_knn(knn: Tensor, canvas: tuple[int, int], padded: tuple[int, int]) -> Tensor:
    """The distances ``[B, H8, W8, k]`` of the cells that hold pixels of the ``canvas`` (the rest
    covers the padding up to ``padded``): ``-> [B, ceil(H / 8), ceil(W / 8), k]``."""
    rows, cols = valid_cells(canvas, padded[0] // knn.shape[1])
    return knn[:, :rows, :cols]


def anomaly_map(patch_scores: Tensor, size: int | tuple[int, int], sigma: float = 4.0) -> Tensor:
    """``[B, h, w] -> [B, H, W]`` (``size``: ``(H, W)``, or one side of a square): bilinear
    upsampling, then a Gaussian blur (reflect border).

    Both steps are linear and separable, so they are applied as one precomputed matrix per
    axis: ``A_h @ X @ A_w.T`` with ``A [size, H]`` (see :func:`resize_blur_operator`). This equals
    ``F.interpolate(bilinear)`` followed by ``kornia.filters.gaussian_blur2d`` up to float
    rounding, at a fraction of the cost of a 33-tap blur on the full-size map.
    """
    h, w = (int(n) for n in patch_scores.shape[-2:])  # python ints, also when traced: the operator is a constant
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    rows = resize_blur_operator(h, height, sigma, patch_scores.device, patch_scores.dtype)
    same = (w, width) == (h, height)
    cols = rows if same else resize_blur_operator(w, width, sigma, patch_scores.device, patch_scores.dtype)
    return rows @ patch_scores @ cols.T


@functools.lru_cache(maxsize=32)
def resize_blur_operator(n_in: int, n_out: int, sigma: float, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """``[n_out, n_in]``: 1-D bilinear resize (align_corners=False) then Gaussian blur with
    kornia's kernel (size :func:`gaussian_kernel_size`) and reflect padding, as one matrix."""
    deltas = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)  # [n_in, 1, n_in]
    out = F.interpolate(deltas, size=n_out, mode="linear", align_corners=False)  # [n_in, 1, n_out]
    if sigma > 0:
        ks = gaussian_kernel_size(sigma)
        kernel = kornia.filters.get_gaussian_kernel1d(ks, sigma, dtype=torch.float64).reshape(1, 1, ks)
        pad = min(ks // 2, n_out - 1)
        out = F.conv1d(F.pad(out, (pad, pad), mode="reflect"), kernel[..., ks // 2 - pad : ks // 2 + pad + 1])
    return out.squeeze(1).T.contiguous().to(device=device, dtype=dtype)


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size covering +-4 sigma, as anomalib and PatchCore use."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def image_score(knn: Tensor, mode: str = "max") -> Tensor:
    """Image scores ``[B]`` from fused k-NN distances ``[B, H, W, k]`` (ascending along k).

    ``max``: the largest 1-NN distance. ``reweighted`` (the official code, from a PatchCore
    port): at the position with the largest 1-NN distance ``s*``, with its k distances ``N_b``,
    ``w = 1 - max(exp N_b) / sum(exp N_b)`` and the score is ``w * s*``.
    """
    neighbours = top_neighbours(knn)  # [B, k]
    top = neighbours[:, 0]
    if mode == "max":
        return top
    if mode == "reweighted":
        weight = 1.0 - torch.softmax(neighbours, dim=-1).max(dim=-1).values
        return weight * top
    raise ValueError(f"unknown image score mode {mode!r}")


def top_neighbours(knn: Tensor) -> Tensor:
    """``[B, H, W, k] -> [B, k]``: the k distances at each image's largest 1-NN position (what
    both image scores read)."""
    flat = knn.flatten(1, 2)  # [B, P, k]
    best = flat[..., 0].argmax(dim=1)  # [B]
    return flat[torch.arange(flat.shape[0], device=flat.device), best]
