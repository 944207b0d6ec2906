"""What the FAPM and PatchCore detectors share: settings, the frozen backbone, the transform,
feature extraction, prediction through the fitted torch module, decisions for image files."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import FAPMConfig
from ..data.mvtec import make_loader
from ..data.transform import Transform
from ..decisions.calibration import Calibration
from ..errors import ConfigError, DataError, ModelFileError
from ..method.backbone import BackboneInfo, FeatureExtractor, create_feature_extractor
from ..method.features import embed
from ..method.geometry import TILE_RULES, pad_images, padded_size, tile_layout
from ..method.scoring import Prediction
from .model_file import load_tensors

ImageBatches = Iterable[Tensor | dict]


def iter_images(data: ImageBatches | Tensor, batch_size: int) -> tuple[Iterator[Tensor], int | None]:
    """Image batches ``[B, 3, S, S]`` from a tensor, a dataset of dicts, or a loader; and their count."""
    if isinstance(data, Tensor):
        return iter(data.split(batch_size)), data.shape[0]
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = make_loader(data, batch_size=batch_size)
    n = len(data.dataset) if isinstance(data, torch.utils.data.DataLoader) else None
    return (b["image"] if isinstance(b, dict) else b for b in data), n


class Detector:
    """Base of :class:`~fapm_lib.FAPM` and :class:`~fapm_lib.PatchCore`.

    ``model``: the fitted ``torch.nn.Module`` (None until ``fit`` or ``load``), which maps
    normalised images ``[B, 3, S, S]`` to a :class:`~fapm_lib.method.scoring.Prediction` and
    is what runs, is timed and is exported. ``calibration``: the thresholds (None: uncalibrated).
    Subclasses implement ``fit``, ``fit_maps``, ``save`` and ``load``.
    """

    kind = "base"

    def __init__(self, config: FAPMConfig | None = None, device: str | torch.device = "cpu",
                 extractor: FeatureExtractor | None = None) -> None:
        self._config = config or FAPMConfig()
        self.device = torch.device(device)
        self._extractor = extractor
        self._backbone_info: BackboneInfo | None = extractor.info if extractor else None
        self.model: nn.Module | None = None
        #: the (height, width) the model scores: the protocol's square, or at native resolution the
        #: training images' size times ``scale`` (set by the first images a fit sees)
        self.canvas: tuple[int, int] | None = None if self._config.native else (self._config.input_size,) * 2
        #: the input's channels, 1 (gray) or 3, set with the canvas; None: not known yet
        self.channels: int | None = None
        self.feature_sizes: list[tuple[int, int]] = []
        self.fit_stats: dict[str, float] = {}
        #: thresholds from normal images (see :mod:`fapm_lib.decisions.calibration`); None: uncalibrated
        self.calibration: Calibration | None = None
        #: the training images, in fit order (image ``i`` of the memories' sources); None: unknown
        #: (fitted from tensors or maps, or a model file of format version 1 or 2)
        self.train_images: list[str] | None = None
        #: how the backbone's tiles are cut (:data:`~fapm_lib.method.geometry.TILE_RULES`): "even"
        #: for every fit; "full" for model files written before that rule
        self.tile_rule: str = "even"

    # ---- settings ------------------------------------------------------------------------------
    @property
    def config(self) -> FAPMConfig:
        return self._config

    @config.setter
    def config(self, config: FAPMConfig) -> None:
        """New settings; the fitted module follows the scoring-time ones (``k``, ``image_score``)."""
        self._config = config
        if self.model is not None:
            self.model.k, self.model.image_score = config.search_k, config.image_score

    @property
    def search_k(self) -> int:
        """Neighbours per query that scoring reads (:func:`fapm_lib.config.neighbours_read`)."""
        return self.config.search_k

    # ---- backbone and features -------------------------------------------------------------------
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
    def transform(self) -> Transform:
        """The pre-processing this model expects: the protocol's resize and crop, or the native
        canvas and scale; the channels; the backbone's mean/std."""
        info, config = self.backbone_info, self.config
        return Transform(resize=config.resize, crop_size=config.crop_size, scale=config.scale,
                         canvas=self.canvas if config.native else None, channels=self.channels,
                         mean=info.mean, std=info.std)

    @property
    def padded(self) -> tuple[int, int]:
        """The canvas padded to whole regions (:mod:`fapm_lib.method.geometry`); the canvas itself
        with the paper's protocol."""
        if self.canvas is None:
            raise ConfigError("the model's input size is not known yet: fit it first")
        return padded_size(self.canvas, self.config.region_pixels) if self.config.native else self.canvas

    @torch.inference_mode()
    def embed(self, images: Tensor) -> list[Tensor]:
        """``[B, C, H, W] ->`` aggregated maps ``[[B, C8, Hp/8, Wp/8], [B, C16, Hp/16, Wp/16]]``:
        the canvas padded, through the backbone's tiles. The first images a native model sees set
        its canvas and channels; later ones must match them."""
        self.set_input(images)
        tiles = tile_layout(self.padded, self.config.tile, self.config.tile_overlap, self.tile_rule)
        return embed(self.extractor, pad_images(images, self.padded), self.config.pool_size, tiles)

    def set_input(self, images: Tensor) -> None:
        """Record the canvas and channels of ``images [B, C, H, W]`` when not known yet; else
        ConfigError (one line) when they differ."""
        size, channels = (int(images.shape[-2]), int(images.shape[-1])), int(images.shape[1])
        if self.canvas is None:
            self.canvas = size
        if self.channels is None:
            self.channels = channels
        if size != self.canvas or channels != self.channels:
            raise ConfigError(f"images of {channels} x {size[0]}x{size[1]} (channels x height x width): this model "
                              f"scores {self.channels} x {self.canvas[0]}x{self.canvas[1]} (read images with its "
                              "transform, or fit a model for this size)")

    def reset_input(self) -> None:
        """Forget the canvas and channels before a new fit (the protocol's square stays); a new fit
        cuts its tiles by the current rule."""
        self.canvas = None if self.config.native else (self.config.input_size,) * 2
        self.channels = None
        self.tile_rule = "even"

    def extract(self, data: ImageBatches | Tensor, progress: bool = True, desc: str = "features") -> list[Tensor]:
        """Aggregated feature maps of a whole set: per layer ``[N, C, h, w]`` on the CPU."""
        batches, _ = iter_images(data, self.config.batch_size)
        chunks = [[f.cpu() for f in self.embed(images)]
                  for images in tqdm(batches, desc=desc, disable=not progress, leave=False)]
        if not chunks:
            raise DataError("no images to extract features from")
        return [torch.cat(layer) for layer in zip(*chunks)]

    # ---- prediction ----------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.model is not None

    def _require_fitted(self) -> nn.Module:
        """The fitted module; ConfigError before ``fit`` or ``load``."""
        if self.model is None:
            raise ConfigError("the model is not fitted: call fit() or load a model file first")
        return self.model

    def runnable(self) -> nn.Module:
        """The fitted module with its backbone (built on first use after ``load``)."""
        model = self._require_fitted()
        if model.backbone is None:
            model.backbone = self.extractor
        return model

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        """``images [B, C, H, W]`` at the model's canvas (normalised, see :attr:`transform`) -> :class:`Prediction`."""
        return self.runnable()(images)

    @torch.inference_mode()
    def predict_maps(self, maps: list[Tensor]) -> Prediction:
        """Prediction from cached aggregated maps (no backbone)."""
        model = self._require_fitted()
        return model.postprocess(model.search([m.to(self.device) for m in maps]))

    def predict_image(self, image, threshold: float | None = None):
        """One image (path, PIL image or numpy array; any size, gray or RGB) ->
        :class:`fapm_lib.decisions.results.Result` (raw and normalised score, OK/NG, map and mask
        at the image's own size)."""
        from ..decisions.results import predict_images

        return predict_images(self, [image], threshold)[0]

    def predict_folder(self, folder, threshold: float | None = None):
        """Every image under ``folder`` (recursive, sorted) -> list of :class:`~fapm_lib.decisions.results.Result`."""
        from ..decisions.results import predict_folder

        return predict_folder(self, folder, threshold)

    def memory_size(self) -> dict[str, float]:
        """Memory vectors and megabytes."""
        return self._require_fitted().memory_size()

    def to(self, device: str | torch.device) -> "Detector":
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        if self._extractor is not None:
            self._extractor.to(self.device)
        return self

    # ---- model files ---------------------------------------------------------------------------
    def _header(self) -> dict:
        """What every model file's JSON header holds: settings, backbone, sizes, fit statistics, calibration."""
        info = self.backbone_info
        return {"config": self.config.to_dict(),
                "backbone": {"name": info.name, "channels": list(info.channels), "pretrained": info.pretrained},
                "canvas": None if self.canvas is None else list(self.canvas), "input_channels": self.channels,
                "feature_sizes": [list(s) for s in self.feature_sizes], "fit_stats": self.fit_stats,
                "calibration": None if self.calibration is None else self.calibration.to_header(),
                "train_images": self.train_images, "tile_rule": self.tile_rule}

    @classmethod
    def _open(cls, path, device: str | torch.device = "cpu",
              extractor: FeatureExtractor | None = None) -> tuple["Detector", dict[str, Tensor], dict]:
        """A detector with the settings, sizes, fit statistics and calibration of a model file,
        and the file's tensors and header (reading the memory is the subclass's part).
        ModelFileError (one line) for a damaged, foreign or mismatched file."""
        tensors, header = load_tensors(path, cls.kind)
        try:
            model = cls(FAPMConfig.from_dict(header["config"], source=f"{path} (config)"), device, extractor)
            model.feature_sizes = [tuple(s) for s in header.get("feature_sizes", [])]
            model._read_input(path, header)
            model.fit_stats = dict(header.get("fit_stats", {}))
            model.calibration = Calibration.from_header(header.get("calibration"), f"{path}")
            model.train_images = header.get("train_images")
            if model.train_images is not None and not (isinstance(model.train_images, list) and all(
                    isinstance(p, str) for p in model.train_images)):
                raise ModelFileError(f"{path}: malformed train_images (expected a list of paths)")
            model._check_extractor(path, header["backbone"])
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"{path}: incomplete model file (missing {exc})") from None
        except ConfigError as exc:
            raise ModelFileError(str(exc)) from None
        return model, tensors, header

    def _read_input(self, path, header: dict) -> None:
        """The canvas and channels a model file records; files written before native resolution
        (no ``canvas``) were fitted on the protocol's square in RGB."""
        canvas, channels = header.get("canvas"), header.get("input_channels", 3)
        if canvas is not None:
            sizes_ok = isinstance(canvas, list) and len(canvas) == 2
            if not (sizes_ok and all(isinstance(v, int) and v > 0 for v in canvas)):
                raise ModelFileError(f"{path}: malformed canvas {canvas!r}")
            self.canvas = (canvas[0], canvas[1])
        elif self.config.native:
            raise ModelFileError(f"{path}: a native-resolution model without its canvas size")
        if channels not in (1, 3, None):  # None: fitted on features alone, no image seen yet
            raise ModelFileError(f"{path}: malformed input_channels {channels!r}")
        self.channels = channels
        self.tile_rule = header.get("tile_rule", "full")  # files before the "even" rule cut full tiles
        if self.tile_rule not in TILE_RULES:
            raise ModelFileError(f"{path}: malformed tile_rule {self.tile_rule!r} (expected one of "
                                 f"{', '.join(TILE_RULES)})")

    def _check_extractor(self, path, backbone: dict) -> None:
        """Refuse an extractor other than the one the model was fitted with (name, weights, channels)."""
        info = self._extractor.info if self._extractor is not None else None
        if info is not None and (info.name, info.pretrained, list(info.channels)) != (
                backbone["name"], backbone.get("pretrained", True), list(backbone["channels"])):
            weights = {True: "pretrained", False: "random weights"}
            raise ModelFileError(
                f"{path}: fitted with backbone {backbone['name']} ({weights[backbone.get('pretrained', True)]}, "
                f"channels {backbone['channels']}), not {info.name} ({weights[info.pretrained]}, "
                f"channels {list(info.channels)})"
            )
