"""Step 1: backbone features with local neighbourhood aggregation, shared by FAPM and PatchCore.

An input larger than one tile runs through the backbone tile by tile, the tiles' maps blended
where they overlap (:mod:`fapm_lib.method.geometry`); a one-channel input becomes the network's
three channels exactly (:func:`expand_gray`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbone import FeatureExtractor
from .geometry import TileLayout, blend_weights

#: Input pixels per backbone call on a CPU: one image of 512 x 512, or five of 224 x 224. A larger
#: call's activations pass glibc's largest mmap threshold (:mod:`fapm_lib.system.allocator`) and
#: page-fault on every call: lite0 on one thread took 152 ms per 512 x 512 image one per call and
#: 260 two per call; 24 ms per 224 x 224 image two to five per call and 45 eight per call. So large
#: batches, images and tiles run a few at a time (the tiles stream, never all held at once).
CPU_PIXELS_PER_CALL = 512 * 512
#: Input pixels per backbone call on other devices (a GPU): 16 images of 224 x 224.
PIXELS_PER_CALL = 16 * 224 * 224


def pixels_per_call(device: torch.device) -> int:
    """The input pixels one backbone call takes on ``device``."""
    return CPU_PIXELS_PER_CALL if device.type == "cpu" else PIXELS_PER_CALL


def embed(extractor: FeatureExtractor, images: Tensor, pool_size: int = 3,
          tiles: TileLayout | None = None) -> list[Tensor]:
    """``[B, 1 or 3, H, W] -> [[B, C8, H/8, W/8], [B, C16, H/16, W/16]]``, aggregated, float32;
    through ``tiles`` when given and more than one."""
    images = images.to(next(extractor.parameters()).device, non_blocking=True)
    if images.shape[1] == 1:
        images = expand_gray(images, extractor.info.mean, extractor.info.std)
    if tiles is None or tiles.single:
        calls = tile_calls(1, images.shape[0], pixels_per_call(images.device) // (images.shape[-2] * images.shape[-1]))
        if len(calls) == 1:
            return aggregate_maps(extractor(images), pool_size)
        parts = [extractor(images[rows]) for _, rows in calls]
        return aggregate_maps([torch.cat(layer) for layer in zip(*parts)], pool_size)
    return aggregate_maps(tiled_features(extractor, images, tiles), pool_size)


def expand_gray(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """One normalised gray channel (normalised with the first channel's ``mean`` and ``std``, as
    :class:`~fapm_lib.data.transform.Transform` does) -> the three channels of the gray image
    normalised channel by channel: ``x_c = (y s_0 + m_0 - m_c) / s_c``, ``[B, 1, H, W] -> [B, 3, H, W]``."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    if torch.equal(m, m[:, :1].expand_as(m)) and torch.equal(s, s[:, :1].expand_as(s)):
        return images.repeat(1, 3, 1, 1)  # equal statistics per channel: a plain copy
    return images * (s[:, :1] / s) + (m[:, :1] - m) / s


def tiled_features(extractor: FeatureExtractor, images: Tensor, tiles: TileLayout) -> list[Tensor]:
    """The backbone's raw maps of ``images [B, 3, Hp, Wp]`` computed tile by tile and blended:
    per layer ``[B, C, Hp / stride, Wp / stride]``."""
    (th, tw), (hp, wp) = tiles.size, tiles.padded
    strides = extractor.info.strides
    weights = [(blend_weights(tiles.ys, th, hp, s).to(images), blend_weights(tiles.xs, tw, wp, s).to(images))
               for s in strides]
    positions = [(iy, ix) for iy in range(len(tiles.ys)) for ix in range(len(tiles.xs))]
    out: list[Tensor] = []
    batch = images.shape[0]
    for chunk, rows in tile_calls(len(positions), batch, pixels_per_call(images.device) // (th * tw)):
        placed = [positions[p] for p in chunk]
        crops = torch.cat([images[rows, :, tiles.ys[iy] : tiles.ys[iy] + th, tiles.xs[ix] : tiles.xs[ix] + tw]
                           for iy, ix in placed])  # [len(chunk) * len(rows), 3, th, tw]
        n = rows.stop - rows.start
        for layer, (feature, stride, (wy, wx)) in enumerate(zip(extractor(crops), strides, weights)):
            feature = feature.float()
            if len(out) <= layer:
                out.append(feature.new_zeros(batch, feature.shape[1], hp // stride, wp // stride))
            for i, (iy, ix) in enumerate(placed):
                y, x = tiles.ys[iy] // stride, tiles.xs[ix] // stride
                weight = wy[iy][:, None] * wx[ix][None, :]  # [th / s, tw / s]
                out[layer][rows, :, y : y + th // stride, x : x + tw // stride] += feature[i * n : (i + 1) * n] * weight
    return out


def tile_calls(n_positions: int, batch: int, crops_per_call: int) -> list[tuple[range, slice]]:
    """The backbone calls over ``n_positions`` tile positions (1: whole images) of a batch of
    ``batch`` images, at most ``crops_per_call`` crops each (at least one): ``(positions, images)``
    per call. Several whole
    positions per call when the batch fits; else one position and a slice of the batch. A traced
    graph (export) keeps its batch whole, since its batch size is not fixed."""
    crops_per_call = max(1, crops_per_call)
    if batch <= crops_per_call or torch.jit.is_tracing():
        step = max(1, crops_per_call // batch)
        return [(range(p, min(p + step, n_positions)), slice(0, batch)) for p in range(0, n_positions, step)]
    return [(range(p, p + 1), slice(b, min(b + crops_per_call, batch)))
            for p in range(n_positions) for b in range(0, batch, crops_per_call)]


def aggregate_maps(features: list[Tensor], pool_size: int = 3) -> list[Tensor]:
    """Raw backbone maps -> aggregated float32 maps (what :func:`embed` returns)."""
    return [aggregate(f.float(), pool_size) for f in features]


def aggregate(feature: Tensor, pool_size: int = 3) -> Tensor:
    """3x3 (``pool_size``) average pooling, stride 1, same size: ``[B, C, H, W] -> [B, C, H, W]``.

    On a CPU the pooling runs in channels-last layout: the same values, 3 to 7x faster at batch 1."""
    if pool_size == 1:
        return feature
    if feature.device.type == "cpu":
        feature = feature.contiguous(memory_format=torch.channels_last)
    return F.avg_pool2d(feature, pool_size, stride=1, padding=pool_size // 2).contiguous()
