"""What FAPM and PatchCore share: the frozen backbone, pre-processing, feature batches,
post-processing into anomaly maps and image scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .backbone import BackboneInfo, FeatureExtractor, create_feature_extractor
from .calibration import Calibration
from .config import FAPMConfig
from .errors import ConfigError, DataError
from .features import embed
from .scoring import anomaly_map, image_score

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


class PatchModel:
    """Base of FAPM and PatchCore: a frozen backbone and the shared pre/post-processing.

    Subclasses implement ``fit``, ``knn`` (aggregated maps -> ``[B, H8, W8, search_k]``), ``save``, ``load``.
    """

    kind = "base"

    def __init__(self, config: FAPMConfig | None = None, device: str | torch.device = "cpu",
                 extractor: FeatureExtractor | None = None) -> None:
        self.config = config or FAPMConfig()
        self.device = torch.device(device)
        self._extractor = extractor
        self.feature_sizes: list[tuple[int, int]] = []
        self.fit_stats: dict[str, float] = {}
        self._backbone_info: BackboneInfo | None = extractor.info if extractor else None
        #: thresholds from normal images (see :mod:`fapm_lib.calibration`); None: uncalibrated
        self.calibration: Calibration | None = None

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            with torch.random.fork_rng(devices=[]):  # random weights: drawn from the config's seed, so a
                torch.manual_seed(self.config.seed)  # reloaded model gets the weights it was fitted with
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

    def extract(self, data: ImageBatches | Tensor, progress: bool = True, desc: str = "features") -> list[Tensor]:
        """Aggregated feature maps of a whole set: per layer ``[N, C, h, w]`` on the CPU."""
        batches, _ = iter_images(data, self.config.batch_size)
        chunks = [[f.cpu() for f in self.embed(images)]
                  for images in tqdm(batches, desc=desc, disable=not progress, leave=False)]
        if not chunks:
            raise DataError("no images to extract features from")
        return [torch.cat(layer) for layer in zip(*chunks)]

    @property
    def search_k(self) -> int:
        """Neighbours per query that scoring reads: ``k`` for the reweighted image score; 1 for
        ``max``, since the maps and the max score use only the nearest distance."""
        return self.config.k if self.config.image_score == "reweighted" else 1

    def knn(self, maps: list[Tensor]) -> Tensor:
        """Aggregated maps -> ascending nearest distances ``[B, H8, W8, search_k]``."""
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ConfigError("the model is not fitted: call fit() or load a model file first")

    @property
    def is_fitted(self) -> bool:
        raise NotImplementedError

    def postprocess(self, knn: Tensor) -> Prediction:
        """Nearest distances ``[B, H8, W8, search_k]`` -> anomaly map and image score."""
        patch = knn[..., 0]
        amap = anomaly_map(patch, self.config.input_size, self.config.blur_sigma)
        return Prediction(amap, image_score(knn, self.config.image_score), patch)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        """``images [B, 3, S, S]`` (normalised) -> :class:`Prediction`."""
        return self.postprocess(self.knn(self.embed(images)))

    @torch.inference_mode()
    def predict_maps(self, maps: list[Tensor]) -> Prediction:
        """Prediction from cached aggregated maps (no backbone)."""
        return self.postprocess(self.knn([m.to(self.device) for m in maps]))

    def predict_image(self, image, threshold: float | None = None):
        """One image (path, PIL image or numpy array; any size, gray or RGB) ->
        :class:`fapm_lib.inference.Result` (raw and normalised score, OK/NG, map and mask at
        the image's own size). See :func:`fapm_lib.inference.predict_images`."""
        from .inference import predict_images

        return predict_images(self, [image], threshold)[0]

    def predict_folder(self, folder, threshold: float | None = None):
        """Every image under ``folder`` (recursive, sorted) -> list of :class:`fapm_lib.inference.Result`."""
        from .inference import predict_folder

        return predict_folder(self, folder, threshold)

    def _backbone_header(self) -> dict:
        info = self.backbone_info
        return {"name": info.name, "channels": list(info.channels), "pretrained": info.pretrained}

    def _check_extractor(self, path, backbone: dict) -> None:
        """Refuse an extractor other than the one the model was fitted with (name, weights, channels)."""
        from .errors import ModelFileError

        info = self._extractor.info if self._extractor is not None else None
        if info is not None and (info.name, info.pretrained, list(info.channels)) != (
                backbone["name"], backbone.get("pretrained", True), list(backbone["channels"])):
            weights = {True: "pretrained", False: "random weights"}
            raise ModelFileError(
                f"{path}: fitted with backbone {backbone['name']} ({weights[backbone.get('pretrained', True)]}, "
                f"channels {backbone['channels']}), not {info.name} ({weights[info.pretrained]}, "
                f"channels {list(info.channels)})"
            )
