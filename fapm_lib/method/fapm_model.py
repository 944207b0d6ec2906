"""FAPM's inference as one ``torch.nn.Module``: the memories are its buffers, ``forward`` reads as
the method. Prediction, the k-fold calibration, the ablations, the notebooks and the export all
run this module; fitting (building the memories) lives in :mod:`fapm_lib.method.memory_builders`.

The steps, numbered as in notebook 02 and ``docs/ARCHITECTURE.md``:
1 embed (backbone, 3x3 aggregation), 2 split into regions, 3 search each region's own bank,
4 merge the regions, 5 align layer 3 onto the layer-2 grid, 6 fuse the layers, 7 anomaly map,
8 image score.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..config import FAPMConfig
from ..errors import ConfigError
from .anomaly_model import AnomalyModel
from .backbone import FeatureExtractor
from .geometry import ModelGeometry
from .memory import LayerMemory
from .regions import grid_shape, merge_regions, split_regions
from .scoring import ALIGNMENTS, Prediction, align_layer, fuse_layers


class FAPMModel(AnomalyModel):
    """Fast Adaptive Patch Memory (Kim et al., ICASSP 2023), inference.

    ``images [B, 3, S, S]`` (normalised) -> :class:`~fapm_lib.method.scoring.Prediction`.
    ``memories``: one :class:`LayerMemory` per backbone layer (stride 8, then 16), fitted on
    feature maps of ``feature_sizes`` (per layer ``(h, w)``). ``backbone`` may be None for a
    model that only scores cached feature maps (:meth:`search`, :meth:`postprocess`).
    ``alignment``: how layer 3 is brought onto the layer-2 grid (``aligned``: the 2x2 tiling;
    ``official``: the official code's misaligned mapping, for comparison).
    """

    def __init__(self, backbone: FeatureExtractor | None, memories: Sequence[LayerMemory],
                 feature_sizes: Sequence[tuple[int, int]], *, grid: int | tuple[int, int] = 7, pool_size: int = 3,
                 canvas: int | tuple[int, int] = 224, padded: tuple[int, int] | None = None, tile: int = 512,
                 tile_overlap: int = 64, blur_sigma: float = 4.0, image_score: str = "max", k: int = 1,
                 neighbour_regions: int = 0, alignment: str = "aligned", tile_rule: str = "even") -> None:
        super().__init__(backbone, pool_size=pool_size, canvas=canvas, padded=padded, tile=tile,
                         tile_overlap=tile_overlap, blur_sigma=blur_sigma, image_score=image_score, k=k,
                         tile_rule=tile_rule)
        if alignment not in ALIGNMENTS:
            raise ConfigError(f"alignment={alignment!r}: expected one of {', '.join(ALIGNMENTS)}")
        self.memories = nn.ModuleList(memories)
        self.feature_sizes = [tuple(int(v) for v in size) for size in feature_sizes]
        self.grid, self.alignment = grid_shape(grid), alignment
        self.neighbour_regions = neighbour_regions

    @classmethod
    def from_config(cls, config: FAPMConfig, backbone: FeatureExtractor | None, memories: Sequence[LayerMemory],
                    geometry: ModelGeometry, alignment: str = "aligned", tile_rule: str = "even") -> "FAPMModel":
        """The module for a :class:`~fapm_lib.config.FAPMConfig`'s settings and a fit's geometry."""
        return cls(backbone, memories, geometry.feature_sizes, grid=geometry.grid, pool_size=config.pool_size,
                   canvas=geometry.canvas, padded=geometry.padded, tile=config.tile, tile_overlap=config.tile_overlap,
                   blur_sigma=config.blur_sigma, image_score=config.image_score, k=config.search_k,
                   neighbour_regions=config.neighbour_regions, alignment=alignment, tile_rule=tile_rule)

    @property
    def geometry(self) -> ModelGeometry:
        """This module's :class:`ModelGeometry`."""
        return ModelGeometry(self.canvas, self.padded, self.grid, tuple(self.feature_sizes))

    def forward(self, images: Tensor) -> Prediction:
        """FAPM's inference, step by step: ``images [B, C, H, W]`` -> :class:`Prediction`."""
        # 1. Features: the frozen backbone's stride-8 ("layer 2") and stride-16 ("layer 3") maps,
        #    3x3 average-pooled: [[B, C8, H8, W8], [B, C16, H16, W16]].
        maps = self.embed(images)
        # 2.-6. Each region's own bank, merged, aligned and fused: [B, H8, W8, k].
        knn = self.search(maps)
        # 7. Anomaly map [B, H, W] and 8. image score [B].
        return self.postprocess(knn)

    def search(self, maps: list[Tensor], k: int | None = None) -> Tensor:
        """Steps 2 to 6: aggregated maps (per layer ``[B, C, h, w]``) -> fused ascending nearest
        distances ``[B, H8, W8, k]`` (``k`` default: the neighbours scoring reads)."""
        k = self.k if k is None else k
        self.check_feature_sizes(maps)
        per_layer = []
        for memory, f in zip(self.memories, maps):
            # 2. Split the layer's map into rows x cols regions: [R, B*s*s, C] (R = rows * cols, s = h / rows).
            queries = split_regions(f, self.grid)
            # 3. Search each region's own bank only (and, with neighbour_regions, the banks around
            #    it): k smallest L2 distances, [R, B*s*s, k].
            distances = memory.search_around(queries, self.grid, self.neighbour_regions, k)
            # 4. Merge the regions back into a map: [B, h, w, k].
            per_layer.append(merge_regions(distances, self.grid, f.shape[-2], f.shape[-1]))
        # 5.-6. Layer 3 onto the layer-2 grid, then the sum of the layers: [B, H8, W8, k].
        return fuse_region_distances(per_layer, self.grid, self.alignment)

    def nearest_sources(self, maps: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per layer, each position's nearest memory vector in the banks it searches (its own
        region's, and the neighbours' with ``neighbour_regions``): aggregated maps (per layer
        ``[B, C, h, w]``) -> ``[(1-NN distance, source row, source region)]``, each ``[B, h, w]``.
        The source row is the vector's row among its region's training vectors (``image * s*s +
        cell``, see :class:`~fapm_lib.method.memory.BankGroup`); the distances are those
        :meth:`search` fuses. ConfigError for a memory without sources."""
        self.check_feature_sizes(maps)
        located = []
        for memory, f in zip(self.memories, maps):
            found = memory.search_sources_around(split_regions(f, self.grid), self.grid, self.neighbour_regions)
            h, w = f.shape[-2:]
            located.append(tuple(merge_regions(t, self.grid, h, w) for t in found))  # [B, h, w] each
        return located

    def check_feature_sizes(self, maps: list[Tensor]) -> None:
        """ConfigError unless ``maps`` have the feature sizes the model was fitted on."""
        for f, size in zip(maps, self.feature_sizes):
            if tuple(f.shape[-2:]) != tuple(size):
                raise ConfigError(f"input gives {tuple(f.shape[-2:])} feature maps, "
                                  f"the model was fitted on {tuple(size)}")

    def memory_size(self) -> dict[str, float]:
        """Memory vectors and megabytes, all layers."""
        return {"vectors": sum(m.n_vectors() for m in self.memories),
                "megabytes": sum(m.megabytes() for m in self.memories)}


def fuse_region_distances(per_layer: list[Tensor], grid: int | tuple[int, int], alignment: str = "aligned") -> Tensor:
    """Steps 5 and 6 of :meth:`FAPMModel.search`: merged per-layer distances ``[B, h, w, k]``
    -> fused ``[B, H8, W8, k]`` (also used on distances computed region by region elsewhere)."""
    # 5. Bring layer 3 onto the layer-2 grid; with "aligned", coarse cell (i, j) onto the fine
    #    cells (2i..2i+1, 2j..2j+1) that tile it: [B, H8, W8, k] each.
    fine = per_layer[0].shape[1]
    aligned = [align_layer(d, fine, alignment, grid) for d in per_layer]
    # 6. Fuse: the sum of the layers' distances, [B, H8, W8, k].
    return fuse_layers(aligned)
