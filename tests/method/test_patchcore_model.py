"""PatchCore's inference module (``PatchCoreModel``): one bank of training vectors searched by brute force,
a planted anomaly found. Real offline backbone on the 112 px texture."""
from __future__ import annotations

import torch
from torch import Tensor

from fapm_lib.detectors.fapm import FAPM
from fapm_lib.detectors.patchcore import PatchCore
from fapm_lib.method.patchcore_model import concat_layers
from tests.texture_support import paste


def test_patchcore_bank_and_search(texture_patchcore: PatchCore, texture_fapm: FAPM, texture_train_images: Tensor,
                                   texture_test_image: Tensor) -> None:
    train_maps = texture_fapm.extract(texture_train_images, progress=False)
    train_rows = concat_layers(train_maps).permute(0, 2, 3, 1).reshape(-1, 152)
    bank = texture_patchcore.model.bank
    assert bank.shape == (-(-train_rows.shape[0] // 10), 152)
    assert bool((bank[:, None] == train_rows[None]).all(-1).any(-1).all())  # rows are training vectors
    maps = texture_fapm.extract(paste(texture_test_image, 48, 80), progress=False)
    knn = texture_patchcore.model.search(maps)
    queries = concat_layers(maps).permute(0, 2, 3, 1).reshape(-1, 152)
    k = texture_patchcore.search_k  # 1: the default max image score needs only the nearest distance
    expected = torch.cdist(queries, bank).topk(k, largest=False).values.reshape(1, 14, 14, k)
    torch.testing.assert_close(knn, expected, atol=1e-3, rtol=1e-4)


def test_patchcore_finds_planted_anomaly(texture_patchcore: PatchCore, texture_test_image: Tensor) -> None:
    pred = texture_patchcore.predict(paste(texture_test_image, 48, 80))
    fy, fx = divmod(int(pred.patch_scores[0].argmax()), 14)
    assert fy in (6, 7) and fx in (10, 11)
    assert pred.pred_score[0] > 1.5 * texture_patchcore.predict(texture_test_image).pred_score[0]
