"""What FAPM's and PatchCore's inference modules share, so that the two differ only in
``search``: ``forward = postprocess(search(embed(images)))`` (steps 1, 2 to 6, 7 and 8 of
:class:`~fapm_lib.method.fapm_model.FAPMModel`)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .backbone import FeatureExtractor
from .features import embed
from .scoring import Prediction, postprocess


class AnomalyModel(nn.Module):
    """Base of the inference modules: ``images [B, 3, S, S]`` (normalised) ->
    :class:`~fapm_lib.method.scoring.Prediction`. Subclasses hold the memory as buffers and
    implement :meth:`search` and :meth:`memory_size`.

    ``backbone`` may be None for a model that only scores cached feature maps (:meth:`search`,
    :meth:`postprocess`)."""

    def __init__(self, backbone: FeatureExtractor | None, *, pool_size: int = 3, input_size: int = 224,
                 blur_sigma: float = 4.0, image_score: str = "max", k: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool_size, self.input_size, self.blur_sigma = pool_size, input_size, blur_sigma
        self.image_score, self.k = image_score, k

    def forward(self, images: Tensor) -> Prediction:
        """``images [B, 3, S, S]`` -> :class:`Prediction`: features, the memory search, the map and the score."""
        return self.postprocess(self.search(self.embed(images)))

    def embed(self, images: Tensor) -> list[Tensor]:
        """Step 1: ``[B, 3, S, S] ->`` aggregated maps ``[[B, C8, S/8, S/8], [B, C16, S/16, S/16]]``."""
        if self.backbone is None:
            raise ConfigError("this model has no backbone: it scores cached feature maps only (search, postprocess)")
        return embed(self.backbone, images, self.pool_size)

    def search(self, maps: list[Tensor], k: int | None = None) -> Tensor:
        """Aggregated maps (per layer ``[B, C, h, w]``) -> ascending nearest distances ``[B, H8, W8, k]``."""
        raise NotImplementedError

    def postprocess(self, knn: Tensor) -> Prediction:
        """Steps 7 and 8: fused 1-NN distances, bilinear to S x S, Gaussian blur -> anomaly map
        ``[B, S, S]``; the image score ``[B]`` (max, or the official re-weighted score)."""
        return postprocess(knn, self.input_size, self.blur_sigma, self.image_score)

    def memory_size(self) -> dict[str, float]:
        """Memory vectors and megabytes."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the memory lives."""
        return next(self.buffers()).device
