"""FAPM: fit per-region, per-layer memories; predict anomaly maps and image scores; save, load."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .backbone import FeatureExtractor
from .base import ImageBatches, PatchModel, Prediction, iter_images
from .config import FAPMConfig
from .errors import ConfigError, DataError, ModelFileError
from .budget import current_rss, parse_size, regions_per_chunk
from .coreset import coreset_size
from .memory import (BankGroup, LayerMemory, RegionSource, TensorRegions, build_layer_memory,
                     build_layer_memory_chunked, check_k, chunk_work_bytes, layer_fixed_bytes)
from .persistence import load_tensors, save_tensors
from .regions import (RegionFeatureBuffer, check_grid, merge_regions, region_lookup, region_rows, split_regions,
                      valid_grids)
from .scoring import fuse_layers, upsample_nearest
from .store import FeatureStore, LayerStoreWriter


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
        batches, n = iter_images(data, self.config.batch_size)
        total = None if n is None else -(-n // self.config.batch_size)
        # the bar is closed (its line cleared) however the fit ends, Ctrl-C included
        with tqdm(batches, desc="features", total=total, disable=not progress, leave=False) as bar:
            return self.fit_map_batches((self.embed(images) for images in bar), n, progress)

    def fit_map_batches(self, batches: Iterable[list[Tensor]], n_images: int | None = None,
                        progress: bool = False) -> "FAPM":
        """Fit from aggregated maps arriving batch by batch (per layer ``[B, C, h, w]``), e.g.
        :meth:`embed` of each image batch. ``n_images``: the total, when known (preallocates).
        With ``config.max_memory`` the features go to a disk store (:meth:`fit_store`)."""
        if self.config.max_memory is not None:
            return self._fit_bounded(batches, n_images, progress)
        start = time.perf_counter()
        buffers: list[RegionFeatureBuffer] = []
        for maps in batches:
            if not buffers:
                self._set_feature_sizes(maps)
                buffers = [RegionFeatureBuffer(self.config.grid, n_images) for _ in maps]
            for buf, f in zip(buffers, maps):
                buf.add(f)
        if not buffers:
            raise DataError("no training images to fit on")
        self.fit_stats["feature_seconds"] = time.perf_counter() - start
        regions = [b.result() for b in buffers]
        self.fit_regions(regions, progress)
        return self.calibrate_regions(regions, progress)

    def calibrate_regions(self, regions: list[Tensor], progress: bool = False) -> "FAPM":
        """k-fold thresholds from the training region features (per layer ``[R, N*s*s, C]``),
        see :mod:`fapm_lib.calibration`; ``calibration`` stays None with ``calibration_folds 0``."""
        from .calibration import calibrate_regions

        start = time.perf_counter()
        self.calibration = calibrate_regions(regions, self.feature_sizes, self.config, progress)
        self.fit_stats["calibration_seconds"] = time.perf_counter() - start
        return self

    def fit_maps(self, maps: list[Tensor], progress: bool = False) -> "FAPM":
        """Build the memories from cached aggregated maps (per layer ``[N, C, h, w]``): used to
        refit with other ratios, grids or k without running the backbone again."""
        self._set_feature_sizes(maps)
        return self.fit_regions([split_regions(m.to(self.device), self.config.grid) for m in maps], progress)

    def fit_regions(self, regions: list[Tensor], progress: bool = False) -> "FAPM":
        """Coreset-subsample region features (per layer ``[R, N, C]``) into the memories."""
        cfg = self.config
        if cfg.max_memory is not None:  # already in RAM: the coreset still runs chunk by chunk
            rows = [(h // cfg.grid) * (w // cfg.grid) for h, w in self.feature_sizes]
            return self.fit_store([TensorRegions(r, n) for r, n in zip(regions, rows)], progress)
        start = time.perf_counter()
        memories = [
            build_layer_memory(r.to(self.device), cfg.coreset_ratio, cfg.adaptive_multiplier, cfg.sampling,
                               cfg.coreset_projection, cfg.seed, progress, name=f"layer {i}")
            for i, r in enumerate(regions)
        ]
        check_k(memories, self.search_k)  # before assigning: a refused fit leaves the old memories
        self.memories, self.calibration = memories, None  # new memories: the old thresholds no longer hold
        self.fit_stats["coreset_seconds"] = time.perf_counter() - start
        return self

    # ---- fit in bounded memory (config.max_memory) ---------------------------------------------
    def _fit_bounded(self, batches: Iterable[list[Tensor]], n_images: int | None, progress: bool) -> "FAPM":
        """Features -> a disk store (one file per layer, by region) -> :meth:`fit_store`; the
        store's folder is removed afterwards, also on errors."""
        cfg = self.config
        start = time.perf_counter()
        with FeatureStore(cfg.store_dir) as store:
            writers: list[LayerStoreWriter] = []
            try:
                for maps in batches:
                    if not writers:
                        self._set_feature_sizes(maps)
                        writers = [store.writer(i, cfg.grid, n_images) for i in range(len(maps))]
                        if n_images is not None:  # refuse a budget too small before extracting everything
                            shapes = [(int(f.shape[1]), n_images) for f in maps]
                            self._chunk_plan(shapes, layer=None)
                    for writer, f in zip(writers, maps):
                        writer.add(f)
                if not writers:
                    raise DataError("no training images to fit on")
                layers = [writer.finish() for writer in writers]
            finally:
                for writer in writers:
                    writer.close()
            self.fit_stats["feature_seconds"] = time.perf_counter() - start
            return self.fit_store(layers, progress)

    def fit_store(self, layers: list[RegionSource], progress: bool = False) -> "FAPM":
        """Build the memories from region features read chunk by chunk (per layer a
        :class:`~fapm_lib.memory.RegionSource` of ``[R, M, C]``), as many regions at a time as
        ``config.max_memory`` allows: the same memories as :meth:`fit_regions`."""
        cfg = self.config
        start = time.perf_counter()
        rows = [(h // cfg.grid) * (w // cfg.grid) for h, w in self.feature_sizes]
        shapes = [(src.dim, src.rows() // per_image) for src, per_image in zip(layers, rows)]
        memories, plan = [], []
        for i, source in enumerate(layers):
            plan.append(self._chunk_plan(shapes, layer=i))  # the layers built so far are in the RSS
            memories.append(build_layer_memory_chunked(
                source, plan[-1], cfg.coreset_ratio, cfg.adaptive_multiplier, cfg.sampling, cfg.coreset_projection,
                cfg.seed, device=self.device, progress=progress, name=f"layer {i}"))
        check_k(memories, self.search_k)
        self.memories = memories
        self.fit_stats["coreset_seconds"] = time.perf_counter() - start
        self.fit_stats["regions_per_chunk"] = plan
        return self

    def _chunk_plan(self, shapes: list[tuple[int, int]], layer: int | None) -> int:
        """Regions per coreset chunk for ``layer`` under ``config.max_memory`` (ConfigError with
        the minimum budget when one region does not fit). ``shapes``: per layer (channels,
        images). ``layer=None``: check every layer (before extraction)."""
        cfg = self.config
        budget = parse_size(cfg.max_memory)
        n_regions = cfg.grid**2
        sizes = []
        for (dim, n_images), (h, w) in zip(shapes, self.feature_sizes):
            n_rows = n_images * (h // cfg.grid) * (w // cfg.grid)
            n_keep = coreset_size(n_rows, cfg.coreset_ratio * (cfg.adaptive_multiplier if cfg.sampling == "adaptive" else 1))
            sizes.append((layer_fixed_bytes(n_regions, n_rows, dim, n_keep),
                          chunk_work_bytes(n_rows, dim, n_keep, cfg.coreset_projection)))
        rss = current_rss()
        todo = range(len(sizes)) if layer is None else [layer]
        per_chunk = n_regions
        for i in todo:
            # this layer's greedy state, this and later layers' banks (before extraction: every layer's)
            reserved = sizes if layer is None else sizes[i:]
            held = {"process now": rss, "greedy state and memory banks": sum(fixed for fixed, _ in reserved)}
            per_chunk = regions_per_chunk(budget, held, sizes[i][1], n_regions, str(cfg.max_memory),
                                          f"this fit (layer {i})")
        return per_chunk

    def _set_feature_sizes(self, maps: list[Tensor]) -> None:
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        options = valid_grids(*(side for size in sizes for side in size))  # grids that fit every layer
        for i, (h, w) in enumerate(sizes):
            check_grid(h, w, self.config.grid, f"layer-{i} feature map (stride {self.backbone_info.strides[i]})", options)
        self.feature_sizes = sizes

    # ---- predict ---------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: Tensor, fast: bool = True) -> Prediction:
        """FAPM's inference, step by step: ``images [B, 3, S, S]`` (normalised) -> :class:`Prediction`.

        ``fast`` (default True) runs steps 2 to 6 as :meth:`knn`, the same arithmetic on index
        tables: bit-identical maps and scores (``tests/test_model.py``), less search time at
        batch 1 on a CPU, the same at batch 16 (docs/benchmark.md, round 3). ``fast=False``
        runs the steps as written here.
        """
        self._require_fitted()
        # 1. Features: the frozen backbone's stride-8 ("layer 2") and stride-16 ("layer 3") maps,
        #    3x3 average-pooled: [[B, C8, H8, W8], [B, C16, H16, W16]].
        maps = self.embed(images)
        if fast:
            knn = self.knn(maps)  # steps 2-6 below, on index tables
        else:
            self._check_feature_sizes(maps)
            grid, k = self.config.grid, self.search_k
            per_layer = []
            for memory, f in zip(self.memories, maps):
                # 2. Split the layer's map into grid x grid regions: [R, B*s*s, C] (R = grid**2, s = h / grid).
                queries = split_regions(f, grid)
                # 3. Search each region's own bank only: k smallest L2 distances, [R, B*s*s, k].
                distances = memory.search(queries, k)
                # 4. Merge the regions back into a map: [B, h, w, k].
                per_layer.append(merge_regions(distances, grid, f.shape[-2], f.shape[-1]))
            # 5. Bring layer 3 onto the layer-2 grid, aligned with the 2x2 tiling convention:
            #    coarse cell (i, j) onto fine cells (2i..2i+1, 2j..2j+1). [B, H8, W8, k] each.
            fine = per_layer[0].shape[1]
            aligned = [upsample_nearest(d, fine // d.shape[1]) for d in per_layer]
            # 6. Fuse: the sum of the layers' distances, [B, H8, W8, k].
            knn = fuse_layers(aligned)
        # 7. Anomaly map [B, S, S]: fused 1-NN distances, bilinear to S x S, Gaussian blur
        #    (scoring.anomaly_map); 8. image score [B] (scoring.image_score): PatchModel.postprocess.
        return self.postprocess(knn)

    def knn(self, maps: list[Tensor]) -> Tensor:
        """Steps 2 to 6 of :meth:`predict` on index tables (the fast path): aggregated maps ->
        fused k-NN distances ``[B, H8, W8, search_k]``, bit-identical to split, search, merge,
        upsample and fuse. Per layer, one gather (:func:`region_rows`) puts the queries in the
        memory's group order, one matrix product per bank size runs the search
        (:meth:`LayerMemory.search_ordered`) and one gather (:func:`region_lookup`) puts the
        distances straight onto the layer-2 grid, with :func:`upsample_nearest`'s alignment."""
        self._require_fitted()
        self._check_feature_sizes(maps)
        fused = self._layer_knn_fast(0, maps[0])
        for layer in range(1, len(self.memories)):
            fused = fused.add_(self._layer_knn_fast(layer, maps[layer]))
        return fused.view(maps[0].shape[0], *self.feature_sizes[0], self.search_k)

    def _layer_knn_fast(self, layer: int, f: Tensor) -> Tensor:
        """One layer's k-NN distances on the layer-2 grid: ``[B, C, h, w] -> [B*H8*W8, search_k]``."""
        mem, (h, w), grid, k = self.memories[layer], self.feature_sizes[layer], self.config.grid, self.search_k
        batch = f.shape[0]
        rows = region_rows(grid, h, w, batch, mem.order, f.device)
        flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])  # [B*h*w, C], a view when channels-last
        queries = flat.index_select(0, rows).view(grid * grid, -1, f.shape[1])  # [R, B*s*s, C], group order
        dist = mem.search_ordered(queries, k).view(-1, k)  # [R*B*s*s, k]
        lookup = region_lookup(grid, h, w, batch, mem.order, self.feature_sizes[0][0] // h, f.device)
        return dist.index_select(0, lookup)

    def _check_feature_sizes(self, maps: list[Tensor]) -> None:
        """ConfigError unless ``maps`` have the feature sizes the model was fitted on."""
        for f, size in zip(maps, self.feature_sizes):
            if tuple(f.shape[-2:]) != tuple(size):
                raise ConfigError(f"input gives {tuple(f.shape[-2:])} feature maps, the model was fitted on {tuple(size)}")

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
            "calibration": None if self.calibration is None else self.calibration.to_header(),
        }
        return save_tensors(path, tensors, self.kind, header)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             extractor: FeatureExtractor | None = None) -> "FAPM":
        """Load a model saved by :meth:`save`; refuses damaged or mismatched files."""
        from .calibration import Calibration

        tensors, header = load_tensors(path, cls.kind)
        try:
            config = FAPMConfig.from_dict(header["config"], source=f"{path} (config)")
            model = cls(config, device, extractor)
            model.feature_sizes = [tuple(s) for s in header["feature_sizes"]]
            model.fit_stats = dict(header.get("fit_stats", {}))
            model.calibration = Calibration.from_header(header.get("calibration"), f"{path}")
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
