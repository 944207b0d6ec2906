"""FAPM: fit per-region, per-layer memories; predict anomaly maps and image scores; save, load."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .backbone import FeatureExtractor
from .base import ImageBatches, PatchModel, iter_images
from .config import FAPMConfig
from .errors import ConfigError, DataError, ModelFileError
from .memory import BankGroup, LayerMemory, build_layer_memory, check_k
from .persistence import load_tensors, save_tensors
from .regions import RegionFeatureBuffer, check_grid, merge_regions, split_regions, valid_grids
from .scoring import fuse_layers


class FAPM(PatchModel):
    """Fast Adaptive Patch Memory (Kim et al., ICASSP 2023).

    >>> model = FAPM(FAPMConfig()).fit(MVTecDataset(root, "bottle", "train", model.transform))
    >>> pred = model.predict(images)          # images [B, 3, 224, 224]
    """

    kind = "fapm"

    def __init__(self, config: FAPMConfig | None = None, device: str | torch.device = "cpu",
                 extractor: FeatureExtractor | None = None) -> None:
        super().__init__(config, device, extractor)
        self.memories: list[LayerMemory] = []

    @property
    def is_fitted(self) -> bool:
        return bool(self.memories)

    # ---- fit -------------------------------------------------------------------------------
    def fit(self, data: ImageBatches | Tensor, progress: bool = True) -> "FAPM":
        """Extract features of all training images region by region, then build the memories."""
        torch.manual_seed(self.config.seed)
        start = time.perf_counter()
        batches, n = iter_images(data, self.config.batch_size)
        buffers: list[RegionFeatureBuffer] = []
        for images in tqdm(batches, desc="features", total=None if n is None else -(-n // self.config.batch_size),
                           disable=not progress, leave=False):
            maps = self.embed(images)
            if not buffers:
                self._set_feature_sizes(maps)
                buffers = [RegionFeatureBuffer(self.config.grid, n) for _ in maps]
            for buf, f in zip(buffers, maps):
                buf.add(f)
        if not buffers:
            raise DataError("no training images to fit on")
        self.fit_stats["feature_seconds"] = time.perf_counter() - start
        return self.fit_regions([b.result() for b in buffers], progress)

    def fit_maps(self, maps: list[Tensor], progress: bool = False) -> "FAPM":
        """Build the memories from cached aggregated maps (per layer ``[N, C, h, w]``): used to
        refit with other ratios, grids or k without running the backbone again."""
        self._set_feature_sizes(maps)
        return self.fit_regions([split_regions(m.to(self.device), self.config.grid) for m in maps], progress)

    def fit_regions(self, regions: list[Tensor], progress: bool = False) -> "FAPM":
        """Coreset-subsample region features (per layer ``[R, N, C]``) into the memories."""
        cfg = self.config
        start = time.perf_counter()
        memories = [
            build_layer_memory(r.to(self.device), cfg.coreset_ratio, cfg.adaptive_multiplier, cfg.sampling,
                               cfg.coreset_projection, cfg.seed, progress, name=f"layer {i}")
            for i, r in enumerate(regions)
        ]
        check_k(memories, cfg.k)  # before assigning: a refused fit leaves the old memories
        self.memories = memories
        self.fit_stats["coreset_seconds"] = time.perf_counter() - start
        return self

    def _set_feature_sizes(self, maps: list[Tensor]) -> None:
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        options = valid_grids(*(side for size in sizes for side in size))  # grids that fit every layer
        for i, (h, w) in enumerate(sizes):
            check_grid(h, w, self.config.grid, f"layer-{i} feature map (stride {self.backbone_info.strides[i]})", options)
        self.feature_sizes = sizes

    # ---- predict ---------------------------------------------------------------------------
    def knn(self, maps: list[Tensor]) -> Tensor:
        """Nearest distances within each query's own region, fused over layers:
        aggregated maps -> ``[B, H8, W8, search_k]``."""
        self._require_fitted()
        per_layer = []
        for mem, f, (h, w) in zip(self.memories, maps, self.feature_sizes):
            if f.shape[-2:] != (h, w):
                raise ConfigError(f"input gives {tuple(f.shape[-2:])} feature maps, the model was fitted on {(h, w)}")
            dist = mem.search(split_regions(f, self.config.grid), self.search_k)  # [R, B*s*s, search_k]
            per_layer.append(merge_regions(dist, self.config.grid, h, w))
        return fuse_layers(per_layer)

    # ---- info ------------------------------------------------------------------------------
    def memory_size(self) -> dict[str, float]:
        """Memory vectors and megabytes, all layers."""
        n = sum(m.n_vectors() for m in self.memories)
        mb = sum(g.bank.numel() * g.bank.element_size() for m in self.memories for g in m.groups) / 2**20
        return {"vectors": n, "megabytes": mb}

    def to(self, device: str | torch.device) -> "FAPM":
        self.device = torch.device(device)
        self.memories = [m.to(self.device) for m in self.memories]
        if self._extractor is not None:
            self._extractor.to(self.device)
        return self

    # ---- save / load -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file: memories + the config and backbone that made them."""
        self._require_fitted()
        tensors: dict[str, Tensor] = {}
        for l, mem in enumerate(self.memories):
            tensors[f"layers.{l}.radii"] = mem.radii
            tensors[f"layers.{l}.far"] = mem.far.to(torch.uint8)
            for g, group in enumerate(mem.groups):
                tensors[f"layers.{l}.groups.{g}.regions"] = group.regions
                tensors[f"layers.{l}.groups.{g}.bank"] = group.bank
        header = {
            "config": json.loads(self.config.to_json()),
            "backbone": self._backbone_header(),
            "feature_sizes": [list(s) for s in self.feature_sizes],
            "n_layers": len(self.memories),
            "n_groups": [len(m.groups) for m in self.memories],
            "fit_stats": self.fit_stats,
        }
        return save_tensors(path, tensors, self.kind, header)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             extractor: FeatureExtractor | None = None) -> "FAPM":
        """Load a model saved by :meth:`save`; refuses damaged or mismatched files."""
        tensors, header = load_tensors(path, cls.kind)
        try:
            config = FAPMConfig.from_dict(header["config"], source=f"{path} (config)")
            model = cls(config, device, extractor)
            model.feature_sizes = [tuple(s) for s in header["feature_sizes"]]
            model.fit_stats = dict(header.get("fit_stats", {}))
            channels = header["backbone"]["channels"]
            for l in range(header["n_layers"]):
                n_groups = header["n_groups"][l]
                parts = [(tensors[f"layers.{l}.groups.{g}.regions"], tensors[f"layers.{l}.groups.{g}.bank"])
                         for g in range(n_groups)]
                radii, far = tensors[f"layers.{l}.radii"], tensors[f"layers.{l}.far"]
                _check_layer(path, l, parts, radii, far, channels[l], config.grid, header["backbone"]["name"])
                groups = [BankGroup(regions, bank) for regions, bank in parts]
                model.memories.append(LayerMemory(groups, radii, far.bool()))
            for i, (h, w) in enumerate(model.feature_sizes):
                check_grid(h, w, config.grid, f"layer-{i} feature map")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: incomplete model file (missing {exc})") from None
        except ConfigError as exc:
            raise ModelFileError(str(exc)) from None
        model._check_extractor(path, header["backbone"])
        return model.to(device)


def _check_layer(path: str | Path, layer: int, parts: list[tuple[Tensor, Tensor]], radii: Tensor, far: Tensor,
                 channels: int, grid: int, backbone: str) -> None:
    """Refuse a layer whose tensors cannot be a memory of this shape (even with a valid checksum):
    float32 banks ``[G, M, C]`` with C = the backbone's channels, int64 region ids covering
    0..grid**2-1 exactly once, ``radii`` and ``far`` of one value per region."""
    n_regions = grid * grid
    problem = None
    if any(bank.dtype != torch.float32 or bank.ndim != 3 or regions.dtype != torch.int64 or regions.ndim != 1
           or bank.shape[0] != regions.shape[0] or bank.shape[1] == 0 for regions, bank in parts):
        problem = "malformed memory bank tensors"
    elif any(bank.shape[-1] != channels for _, bank in parts):
        problem = f"memory does not match backbone {backbone} ({channels} channels)"
    elif not parts or not torch.equal(torch.cat([r for r, _ in parts]).sort().values, torch.arange(n_regions)):
        problem = f"region ids do not cover the {grid}x{grid} grid exactly once"
    elif radii.shape != (n_regions,) or far.shape != (n_regions,) or radii.dtype != torch.float32:
        problem = "malformed radii or near/far tensors"
    if problem:
        raise ModelFileError(f"{path}: layer {layer}: {problem}")
