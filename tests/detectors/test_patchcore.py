"""The PatchCore detector: save and load give the same bank, settings and predictions (real offline
backbone on the 112 px texture); the bounded fit and the greedy within cells, FAPM's only, are refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from fapm_lib.config import FAPMConfig
from fapm_lib.detectors.patchcore import PatchCore
from fapm_lib.errors import ConfigError
from fapm_lib.method.backbone import FeatureExtractor
from tests.scale_support import Stub
from tests.texture_support import assert_same_prediction


def test_patchcore_save_load(texture_patchcore: PatchCore, lite0: FeatureExtractor, texture_test_image: Tensor,
                             tmp_path: Path) -> None:
    loaded = PatchCore.load(texture_patchcore.save(tmp_path / "pc.safetensors"), extractor=lite0)
    assert torch.equal(loaded.model.bank, texture_patchcore.model.bank) and loaded.config == texture_patchcore.config
    assert_same_prediction(texture_patchcore.predict(texture_test_image), loaded.predict(texture_test_image))
    assert loaded.memory_size() == texture_patchcore.memory_size()


def test_patchcore_refuses_max_memory_and_the_cells_coreset() -> None:
    maps = [torch.randn(2, 24, 28, 28), torch.randn(2, 40, 14, 14)]
    for settings in ({"max_memory": "4GB"}, {"coreset_method": "cells"}, {"coreset_cell_size": 4}):
        with pytest.raises(ConfigError, match="FAPM only"):
            PatchCore(FAPMConfig(**settings), extractor=Stub()).fit_maps(maps)
