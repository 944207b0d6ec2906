"""PatchCore (Roth et al., CVPR 2022), the baseline FAPM speeds up, on the same backbone,
coreset and post-processing: one global memory of concatenated layer features."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from .backbone import FeatureExtractor
from .base import ImageBatches, PatchModel, iter_images
from .config import FAPMConfig
from .coreset import GreedyKCenter, coreset_size, random_projection
from .errors import ConfigError, DataError, ModelFileError
from .memory import smallest
from .persistence import load_tensors, save_tensors

#: PatchCore's random-projection dimension for the greedy coreset.
PATCHCORE_PROJECTION = 128


def concat_layers(maps: list[Tensor]) -> Tensor:
    """Layer-2 and bilinearly upsampled layer-3 maps, concatenated: ``-> [B, C8 + C16, H8, W8]``."""
    size = maps[0].shape[-2:]
    return torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]], 1)


class PatchCore(PatchModel):
    """One memory bank for all positions; greedy coreset on a random projection; k-NN search
    over the whole bank for every query."""

    kind = "patchcore"

    def __init__(self, config: FAPMConfig | None = None, device: str | torch.device = "cpu",
                 extractor: FeatureExtractor | None = None, query_chunk: int = 4096) -> None:
        super().__init__(config, device, extractor)
        self.bank: Tensor | None = None
        self.query_chunk = query_chunk

    @property
    def is_fitted(self) -> bool:
        return self.bank is not None

    @property
    def projection(self) -> int:
        return self.config.coreset_projection or PATCHCORE_PROJECTION

    def fit(self, data: ImageBatches | Tensor, progress: bool = True) -> "PatchCore":
        """Collect every training position's feature ``[N*H8*W8, C]``, keep a greedy coreset of ``r``."""
        torch.manual_seed(self.config.seed)
        start = time.perf_counter()
        batches, _ = iter_images(data, self.config.batch_size)
        rows = [rearrange(concat_layers(self.embed(images)), "b c h w -> (b h w) c")
                for images in tqdm(batches, desc="features", disable=not progress, leave=False)]
        if not rows:
            raise DataError("no training images to fit on")
        self.fit_stats["feature_seconds"] = time.perf_counter() - start
        return self.fit_rows(torch.cat(rows), progress)

    def fit_maps(self, maps: list[Tensor], progress: bool = False) -> "PatchCore":
        """Build the bank from cached aggregated maps (per layer ``[N, C, h, w]``)."""
        return self.fit_rows(rearrange(concat_layers([m.to(self.device) for m in maps]), "b c h w -> (b h w) c"), progress)

    def fit_rows(self, rows: Tensor, progress: bool = False) -> "PatchCore":
        """Greedy coreset of ``rows [N, C]`` (selected on a random projection) -> ``bank [M, C]``."""
        if self.config.max_memory is not None:
            raise ConfigError("max_memory: a bounded-memory fit is implemented for FAPM only, not PatchCore")
        start = time.perf_counter()
        projected = random_projection(rows, self.projection, self.config.seed)
        greedy = GreedyKCenter(projected.unsqueeze(0))
        greedy.extend(coreset_size(rows.shape[0], self.config.coreset_ratio), progress, desc="coreset patchcore")
        self.bank, self.calibration = rows[greedy.indices[0]].contiguous(), None  # no k-fold calibration here
        if self.config.k > self.bank.shape[0]:
            raise ConfigError(f"k={self.config.k} exceeds the memory bank ({self.bank.shape[0]} vectors)")
        self._bank_sq = self.bank.pow(2).sum(-1)
        self.fit_stats["coreset_seconds"] = time.perf_counter() - start
        return self

    def knn(self, maps: list[Tensor]) -> Tensor:
        """Nearest distances over the whole bank: aggregated maps -> ``[B, H8, W8, search_k]``."""
        self._require_fitted()
        feats = concat_layers(maps)
        b, _, h, w = feats.shape
        queries = rearrange(feats, "b c h w -> (b h w) c")
        out = torch.cat([self._nearest(q) for q in queries.split(self.query_chunk)])
        return rearrange(out, "(b h w) k -> b h w k", b=b, h=h, w=w)

    def _nearest(self, q: Tensor) -> Tensor:
        partial = torch.addmm(self._bank_sq.unsqueeze(0), q, self.bank.T, alpha=-2.0)  # d2 - |q|^2
        return (smallest(partial, self.search_k) + q.pow(2).sum(-1, keepdim=True)).clamp_min_(0).sqrt_()

    def memory_size(self) -> dict[str, float]:
        self._require_fitted()
        assert self.bank is not None
        return {"vectors": int(self.bank.shape[0]), "megabytes": self.bank.numel() * self.bank.element_size() / 2**20}

    def to(self, device: str | torch.device) -> "PatchCore":
        self.device = torch.device(device)
        if self.bank is not None:
            self.bank, self._bank_sq = self.bank.to(self.device), self._bank_sq.to(self.device)
        if self._extractor is not None:
            self._extractor.to(self.device)
        return self

    def save(self, path: str | Path) -> Path:
        self._require_fitted()
        assert self.bank is not None
        header = {"config": json.loads(self.config.to_json()), "backbone": self._backbone_header(),
                  "fit_stats": self.fit_stats,
                  "calibration": None if self.calibration is None else self.calibration.to_header()}
        return save_tensors(path, {"bank": self.bank}, self.kind, header)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             extractor: FeatureExtractor | None = None) -> "PatchCore":
        tensors, header = load_tensors(path, cls.kind)
        try:
            model = cls(FAPMConfig.from_dict(header["config"], source=f"{path} (config)"), device, extractor)
            bank = tensors["bank"]
            if bank.dtype != torch.float32 or bank.ndim != 2 or bank.shape[0] == 0:
                raise ModelFileError(f"{path}: malformed memory bank tensor")
            if bank.shape[-1] != sum(header["backbone"]["channels"]):
                raise ModelFileError(f"{path}: memory does not match backbone {header['backbone']['name']}")
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"{path}: incomplete model file (missing {exc})") from None
        except ConfigError as exc:
            raise ModelFileError(str(exc)) from None
        model._check_extractor(path, header["backbone"])
        model.bank, model._bank_sq = bank, bank.pow(2).sum(-1)
        model.fit_stats = dict(header.get("fit_stats", {}))
        from .calibration import Calibration

        model.calibration = Calibration.from_header(header.get("calibration"), f"{path}")
        return model.to(device)
