"""PatchCore (Roth et al., CVPR 2022), the baseline FAPM speeds up, as a ``torch.nn.Module`` on the
same backbone, coreset and post-processing: one global memory of concatenated layer features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..config import FAPMConfig
from ..errors import ConfigError
from .anomaly_model import AnomalyModel
from .backbone import FeatureExtractor
from .coreset import GreedyKCenter, coreset_size, random_projection
from .memory import BankGroup

#: PatchCore's random-projection dimension for the greedy coreset.
PATCHCORE_PROJECTION = 128


class PatchCoreModel(AnomalyModel):
    """PatchCore inference: ``images [B, C, H, W]`` -> :class:`~fapm_lib.method.scoring.Prediction`;
    every query searches the whole ``bank [M, C8 + C16]`` (a buffer)."""

    def __init__(self, backbone: FeatureExtractor | None, bank: Tensor, *, pool_size: int = 3,
                 canvas: int | tuple[int, int] = 224, padded: tuple[int, int] | None = None, tile: int = 512,
                 tile_overlap: int = 64, blur_sigma: float = 4.0, image_score: str = "max", k: int = 1,
                 query_chunk: int = 4096, tile_rule: str = "even") -> None:
        super().__init__(backbone, pool_size=pool_size, canvas=canvas, padded=padded, tile=tile,
                         tile_overlap=tile_overlap, blur_sigma=blur_sigma, image_score=image_score, k=k,
                         tile_rule=tile_rule)
        if k > bank.shape[0]:
            raise ConfigError(f"k={k} exceeds the memory bank ({bank.shape[0]} vectors)")
        # one bank for every position: a single "region", searched by the same kernel as FAPM's banks
        self.memory = BankGroup(torch.zeros(1, dtype=torch.long, device=bank.device), bank.unsqueeze(0))
        self.query_chunk = query_chunk

    @classmethod
    def from_config(cls, config: FAPMConfig, backbone: FeatureExtractor | None, bank: Tensor,
                    canvas: tuple[int, int], padded: tuple[int, int], tile_rule: str = "even") -> "PatchCoreModel":
        """The module for a :class:`~fapm_lib.config.FAPMConfig`'s settings and a fit's canvas."""
        return cls(backbone, bank, pool_size=config.pool_size, canvas=canvas, padded=padded, tile=config.tile,
                   tile_overlap=config.tile_overlap, blur_sigma=config.blur_sigma, image_score=config.image_score,
                   k=config.search_k, tile_rule=tile_rule)

    @property
    def bank(self) -> Tensor:
        """``[M, C8 + C16]``."""
        return self.memory.bank[0]

    def search(self, maps: list[Tensor], k: int | None = None) -> Tensor:
        """Nearest distances over the whole bank: aggregated maps -> ``[B, H8, W8, k]``."""
        k = self.k if k is None else k
        b, _, h, w = maps[0].shape
        queries = patch_rows(maps)
        out = torch.cat([self.memory.nearest(q.unsqueeze(0), k)[0] for q in queries.split(self.query_chunk)])
        return rearrange(out, "(b h w) k -> b h w k", b=b, h=h, w=w)

    def memory_size(self) -> dict[str, float]:
        bank = self.memory.bank_t
        return {"vectors": int(bank.shape[2]), "megabytes": bank.numel() * bank.element_size() / 2**20}


def build_bank(rows: Tensor, ratio: float, projection: int, seed: int = 0, progress: bool = False) -> Tensor:
    """PatchCore's memory: a greedy coreset of ``rows [N, C]`` selected on a random projection,
    ``-> bank [M, C]`` (``M = ceil(ratio N)``)."""
    greedy = GreedyKCenter(random_projection(rows, projection, seed).unsqueeze(0))
    greedy.extend(coreset_size(rows.shape[0], ratio), progress, desc="coreset patchcore")
    return rows[greedy.indices[0]].contiguous()


def patch_rows(maps: list[Tensor]) -> Tensor:
    """Aggregated maps (per layer ``[B, C, h, w]``) -> one row per layer-2 position ``[B*H8*W8, C8 + C16]``."""
    return rearrange(concat_layers(maps), "b c h w -> (b h w) c")


def concat_layers(maps: list[Tensor]) -> Tensor:
    """Layer-2 and bilinearly upsampled layer-3 maps, concatenated: ``-> [B, C8 + C16, H8, W8]``."""
    size = maps[0].shape[-2:]
    upsampled = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
    return torch.cat([maps[0], *upsampled], 1)
