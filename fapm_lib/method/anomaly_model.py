"""What FAPM's and PatchCore's inference modules share, so that the two differ only in
``search``: ``forward = postprocess(search(embed(images)))`` (steps 1, 2 to 6, 7 and 8 of
:class:`~fapm_lib.method.fapm_model.FAPMModel`), and the input geometry (the canvas, its
padding, the backbone's tiles: :mod:`fapm_lib.method.geometry`)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .backbone import FeatureExtractor
from .features import embed
from .geometry import TileLayout, pad_images, tile_layout
from .scoring import Prediction, postprocess


class AnomalyModel(nn.Module):
    """Base of the inference modules: ``images [B, C, H, W]`` (normalised, ``C`` 1 or 3, ``(H, W)``
    the ``canvas``) -> :class:`~fapm_lib.method.scoring.Prediction` with maps ``[B, H, W]``.
    Subclasses hold the memory as buffers and implement :meth:`search` and :meth:`memory_size`.

    ``padded``: the canvas padded to whole regions (the canvas itself with the paper's protocol);
    ``tile`` / ``tile_overlap`` / ``tile_rule``: the backbone's tiles over it. ``backbone`` may be None for a model
    that only scores cached feature maps (:meth:`search`, :meth:`postprocess`)."""

    def __init__(self, backbone: FeatureExtractor | None, *, pool_size: int = 3,
                 canvas: int | tuple[int, int] = 224, padded: tuple[int, int] | None = None, tile: int = 512,
                 tile_overlap: int = 64, blur_sigma: float = 4.0, image_score: str = "max", k: int = 1,
                 tile_rule: str = "even") -> None:
        super().__init__()
        self.backbone = backbone
        self.canvas = (canvas, canvas) if isinstance(canvas, int) else (int(canvas[0]), int(canvas[1]))
        self.padded = self.canvas if padded is None else (int(padded[0]), int(padded[1]))
        self.tiles: TileLayout = tile_layout(self.padded, tile, tile_overlap, tile_rule)
        self.pool_size, self.blur_sigma = pool_size, blur_sigma
        self.image_score, self.k = image_score, k

    def forward(self, images: Tensor) -> Prediction:
        """``images [B, C, H, W]`` -> :class:`Prediction`: features, the memory search, the map and the score."""
        return self.postprocess(self.search(self.embed(images)))

    def embed(self, images: Tensor) -> list[Tensor]:
        """Step 1: ``[B, C, H, W] ->`` aggregated maps ``[[B, C8, Hp/8, Wp/8], [B, C16, Hp/16, Wp/16]]``
        (the canvas padded, through the backbone's tiles)."""
        if self.backbone is None:
            raise ConfigError("this model has no backbone: it scores cached feature maps only (search, postprocess)")
        if not torch.jit.is_tracing() and tuple(images.shape[-2:]) != self.canvas:
            raise ConfigError(f"images of {images.shape[-2]}x{images.shape[-1]} pixels (height x width): this model "
                              f"scores {self.canvas[0]}x{self.canvas[1]} (its transform brings images to that size)")
        return embed(self.backbone, pad_images(images, self.padded), self.pool_size, self.tiles)

    def search(self, maps: list[Tensor], k: int | None = None) -> Tensor:
        """Aggregated maps (per layer ``[B, C, h, w]``) -> ascending nearest distances ``[B, H8, W8, k]``."""
        raise NotImplementedError

    def postprocess(self, knn: Tensor) -> Prediction:
        """Steps 7 and 8: fused 1-NN distances, bilinear to the padded size, Gaussian blur, cut to
        the canvas -> anomaly map ``[B, H, W]``; the image score ``[B]`` (max, or the official
        re-weighted score) over the cells that hold image pixels."""
        return postprocess(knn, self.canvas, self.blur_sigma, self.image_score, self.padded)

    def memory_size(self) -> dict[str, float]:
        """Memory vectors and megabytes."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the memory lives."""
        return next(self.buffers()).device
