"""fapm_lib: FAPM (Fast Adaptive Patch Memory, Kim et al., ICASSP 2023) and a PatchCore
baseline, thin and tested.

>>> from fapm_lib import FAPM, FAPMConfig, MVTecDataset
>>> model = FAPM(FAPMConfig(backbone="tf_efficientnet_lite0"))
>>> model.fit(MVTecDataset("data/builtin", "vial", "train", model.transform))
>>> prediction = model.predict(images)        # anomaly_map [B, 224, 224], pred_score [B]
"""
from .config import FAPMConfig
from .data import MVTecDataset, Transform
from .errors import BackboneError, ConfigError, DataError, FAPMError, ModelFileError
from .model import FAPM
from .base import Prediction
from .patchcore import PatchCore

__version__ = "0.1.0"
__all__ = ["FAPM", "FAPMConfig", "PatchCore", "Prediction", "MVTecDataset", "Transform",
           "FAPMError", "DataError", "ConfigError", "ModelFileError", "BackboneError"]
