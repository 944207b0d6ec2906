"""Ablations: the official layer alignment as the module's own switch, and the ablation table
on a small generated category (features extracted once, every variant refitted from them)."""
from __future__ import annotations

import pytest
import torch

from fapm_lib.config import FAPMConfig
from fapm_lib.data.synthetic import generate_category
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.method.scoring import align_layer
from fapm_lib.tutorial.ablations import (
    Variant,
    default_variants,
    extract_category,
    run_ablation,
    score_variant,
    summary_table,
)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ablation")
    generate_category(root, "vial", size=128, n_train=8, n_test_good=3, n_per_defect=2)
    model = FAPM(FAPMConfig(resize=256, crop_size=224, coreset_ratio=0.5, k=2))  # the paper's protocol
    return model, extract_category(model, root, "vial")


def test_official_fusion_is_the_module_with_its_alignment_switched(features) -> None:
    model, feats = features
    model.fit_maps(feats.train_maps)
    maps = [m[:3] for m in feats.test_maps]
    amaps, scores, _ = score_variant(model, maps, "aligned", batch_size=2)
    library = model.predict_maps(maps)
    assert torch.equal(amaps, library.anomaly_map) and torch.equal(scores, library.pred_score)
    official_maps, _, _ = score_variant(model, maps, "official", batch_size=2)
    assert model.model.alignment == "aligned"  # switched back after the pass
    assert official_maps.shape == amaps.shape and not torch.equal(official_maps, amaps)
    with pytest.raises(ValueError, match="fusion"):
        score_variant(model, maps, "shifted")
    coarse = torch.arange(4.0).view(1, 2, 2, 1)
    assert not torch.equal(align_layer(coarse, 4, "official", grid=1), align_layer(coarse, 4, "aligned", grid=1))


def test_ablation_rows(features) -> None:
    model, feats = features
    base = FAPMConfig(resize=256, crop_size=224, coreset_ratio=0.5, k=2)
    rows = run_ablation(feats, model.extractor, base, default_variants(projection=8), repeats=1)
    names = [r["variant"] for r in rows]
    assert names == [v.name for v in default_variants(projection=8)]
    by = {r["variant"]: r for r in rows}
    for row in rows:
        assert 0.0 <= row["image AUROC"] <= 1.0 and 0.0 <= row["pixel AUROC"] <= 1.0
        assert row["search ms/image"] > 0 and row["memory MB"] > 0
    # scoring-time variants share the default memory; memory variants change it
    assert by["official fusion"]["memory MB"] == by["FAPM defaults"]["memory MB"]
    assert by["reweighted score"]["memory MB"] == by["FAPM defaults"]["memory MB"]
    assert by["fixed sampling"]["memory MB"] < by["FAPM defaults"]["memory MB"]
    assert by["official fusion"]["pixel AUROC"] != by["FAPM defaults"]["pixel AUROC"]
    summary = summary_table(rows + [{**rows[0], "category": "other", "image AUROC": 0.0}])
    assert summary[0]["categories"] == 2
    assert summary[0]["image AUROC"] == pytest.approx(rows[0]["image AUROC"] / 2)


def test_unknown_fusion_is_refused(features) -> None:
    model, feats = features
    with pytest.raises(ValueError, match="sideways"):
        run_ablation(feats, model.extractor, FAPMConfig(coreset_ratio=0.5, k=2),
                     [Variant("bad", fusion="sideways")], repeats=1)


def test_a_variant_that_cannot_be_fitted_is_reported_not_dropped(features) -> None:
    """grid 14 on 8 training images leaves 4 layer-3 vectors per region: k=5 (read by the
    re-weighted score) is refused there, while grid 7 (16 vectors per region, 8 kept) fits."""
    model, feats = features
    rows = run_ablation(feats, model.extractor, FAPMConfig(resize=256, crop_size=224, coreset_ratio=0.5, k=5,
                                                           image_score="reweighted"),
                        [Variant("defaults"), Variant("grid 14", {"grid": 14})], repeats=1)
    assert rows[0]["refused"] == "" and rows[0]["image AUROC"] is not None
    assert "k=5 exceeds the smallest memory bank" in rows[1]["refused"]
    assert rows[1]["image AUROC"] is None and rows[1]["memory MB"] is None
    assert [r["categories"] for r in summary_table(rows)] == [1, 0]
