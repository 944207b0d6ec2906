"""FAPM: fit per-region, per-layer memories; predict anomaly maps and image scores; save, load."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .backbone import BackboneInfo, FeatureExtractor, create_feature_extractor
from .config import FAPMConfig
from .errors import ConfigError, DataError, ModelFileError
from .features import embed
from .memory import BankGroup, LayerMemory, build_layer_memory, check_k
from .persistence import load_tensors, save_tensors
from .regions import check_grid, merge_regions, split_regions
from .scoring import anomaly_map, fuse_layers, image_score

ImageBatches = Iterable[Tensor | dict]


@dataclass
class Prediction:
    """``anomaly_map [B, S, S]``, ``pred_score [B]``, ``patch_scores [B, H8, W8]`` (fused 1-NN)."""

    anomaly_map: Tensor
    pred_score: Tensor
    patch_scores: Tensor


def iter_images(data: ImageBatches | Tensor, batch_size: int) -> tuple[Iterator[Tensor], int | None]:
    """Image batches ``[B, 3, S, S]`` from a tensor, a dataset of dicts, or a loader; and their count."""
    if isinstance(data, Tensor):
        return iter(data.split(batch_size)), data.shape[0]
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        from .data import make_loader

        data = make_loader(data, batch_size=batch_size)
    n = len(data.dataset) if isinstance(data, torch.utils.data.DataLoader) else None
    return (b["image"] if isinstance(b, dict) else b for b in data), n


class RegionFeatureBuffer:
    """Accumulates one layer's region-split features ``[R, N*s*s, C]`` batch by batch, without
    keeping images or a second copy (preallocated when the image count is known)."""

    def __init__(self, grid: int, n_images: int | None) -> None:
        self.grid, self.n_images = grid, n_images
        self.buffer: Tensor | None = None
        self.chunks: list[Tensor] = []
        self.filled = 0

    def add(self, feature: Tensor) -> None:
        """Append ``[B, C, h, w]``."""
        regions = split_regions(feature, self.grid)  # [R, B*s*s, C]
        if self.n_images is None:
            self.chunks.append(regions)
            return
        if self.buffer is None:
            per_image = regions.shape[1] // feature.shape[0]
            self.buffer = regions.new_empty(regions.shape[0], self.n_images * per_image, regions.shape[2])
        self.buffer[:, self.filled : self.filled + regions.shape[1]] = regions
        self.filled += regions.shape[1]

    def result(self) -> Tensor:
        if self.n_images is None:
            return torch.cat(self.chunks, dim=1)
        assert self.buffer is not None
        return self.buffer[:, : self.filled]


class FAPM:
    """Fast Adaptive Patch Memory (Kim et al., ICASSP 2023).

    >>> model = FAPM(FAPMConfig()).fit(MVTecDataset(root, "bottle", "train", model.transform))
    >>> pred = model.predict(images)          # images [B, 3, 224, 224]
    """

    kind = "fapm"

    def __init__(self, config: FAPMConfig | None = None, device: str | torch.device = "cpu",
                 extractor: FeatureExtractor | None = None) -> None:
        self.config = config or FAPMConfig()
        self.device = torch.device(device)
        self._extractor = extractor
        self.memories: list[LayerMemory] = []
        self.feature_sizes: list[tuple[int, int]] = []
        self.fit_stats: dict[str, float] = {}
        self._backbone_info: BackboneInfo | None = extractor.info if extractor else None

    # ---- backbone --------------------------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = create_feature_extractor(self.config.backbone, self.config.pretrained, self.device)
            self._backbone_info = self._extractor.info
        return self._extractor

    @property
    def backbone_info(self) -> BackboneInfo:
        return self._backbone_info or self.extractor.info

    @property
    def transform(self):
        """The pre-processing this model expects (resize, crop, the backbone's mean/std)."""
        from .data import Transform

        info = self.backbone_info
        return Transform(resize=self.config.resize, crop_size=self.config.crop_size, mean=info.mean, std=info.std)

    def embed(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, S, S] ->`` aggregated maps ``[[B, C8, S/8, S/8], [B, C16, S/16, S/16]]``."""
        return embed(self.extractor, images, self.config.pool_size)

    # ---- fit -------------------------------------------------------------------------------
    def extract(self, data: ImageBatches | Tensor, progress: bool = True, desc: str = "features") -> list[Tensor]:
        """Aggregated feature maps of a whole set: per layer ``[N, C, h, w]`` (kept for refits)."""
        batches, n = iter_images(data, self.config.batch_size)
        chunks: list[list[Tensor]] = []
        for images in tqdm(batches, desc=desc, disable=not progress, leave=False):
            chunks.append([f.cpu() for f in self.embed(images)])
        if not chunks:
            raise DataError("no training images to fit on")
        return [torch.cat(layer) for layer in zip(*chunks)]

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
        self.memories = [
            build_layer_memory(r.to(self.device), cfg.coreset_ratio, cfg.adaptive_multiplier, cfg.sampling,
                               cfg.coreset_projection, cfg.seed, progress, name=f"layer {i}")
            for i, r in enumerate(regions)
        ]
        check_k(self.memories, cfg.k)
        self.fit_stats["coreset_seconds"] = time.perf_counter() - start
        return self

    def _set_feature_sizes(self, maps: list[Tensor]) -> None:
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        for i, (h, w) in enumerate(sizes):
            check_grid(h, w, self.config.grid, f"layer-{i} feature map (stride {self.backbone_info.strides[i]})")
        self.feature_sizes = sizes

    # ---- predict ---------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not self.memories:
            raise ConfigError("the model is not fitted: call fit() or load a model file first")

    def knn(self, maps: list[Tensor]) -> Tensor:
        """k-NN distances within each query's own region, fused over layers:
        aggregated maps -> ``[B, H8, W8, k]``."""
        self._require_fitted()
        per_layer = []
        for mem, f, (h, w) in zip(self.memories, maps, self.feature_sizes):
            if f.shape[-2:] != (h, w):
                raise ConfigError(f"input gives {tuple(f.shape[-2:])} feature maps, the model was fitted on {(h, w)}")
            dist = mem.search(split_regions(f, self.config.grid), self.config.k)  # [R, B*s*s, k]
            per_layer.append(merge_regions(dist, self.config.grid, h, w))
        return fuse_layers(per_layer)

    def postprocess(self, knn: Tensor) -> Prediction:
        """Fused k-NN distances ``[B, H8, W8, k]`` -> anomaly map and image score."""
        patch = knn[..., 0]
        amap = anomaly_map(patch, self.config.input_size, self.config.blur_sigma)
        return Prediction(amap, image_score(knn, self.config.image_score), patch)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        """``images [B, 3, S, S]`` (normalised) -> :class:`Prediction`."""
        return self.postprocess(self.knn(self.embed(images)))

    def predict_maps(self, maps: list[Tensor]) -> Prediction:
        """Prediction from cached aggregated maps (no backbone)."""
        return self.postprocess(self.knn([m.to(self.device) for m in maps]))

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
            "backbone": {"name": self.backbone_info.name, "channels": list(self.backbone_info.channels),
                         "pretrained": self.backbone_info.pretrained},
            "feature_sizes": [list(s) for s in self.feature_sizes],
            "n_layers": len(self.memories),
            "n_groups": [len(m.groups) for m in self.memories],
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
            channels = header["backbone"]["channels"]
            for l in range(header["n_layers"]):
                groups = [BankGroup(tensors[f"layers.{l}.groups.{g}.regions"], tensors[f"layers.{l}.groups.{g}.bank"])
                          for g in range(header["n_groups"][l])]
                if any(g.bank.shape[-1] != channels[l] for g in groups):
                    raise ModelFileError(f"{path}: layer {l} memory does not match backbone {header['backbone']['name']}")
                model.memories.append(LayerMemory(groups, tensors[f"layers.{l}.radii"], tensors[f"layers.{l}.far"].bool()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: incomplete model file (missing {exc})") from None
        except ConfigError as exc:
            raise ModelFileError(str(exc)) from None
        if extractor is not None and tuple(extractor.info.channels) != tuple(channels):
            raise ModelFileError(
                f"{path}: fitted with backbone {header['backbone']['name']} (channels {channels}), "
                f"not {extractor.info.name} (channels {list(extractor.info.channels)})"
            )
        return model.to(device)
