"""tools/measure_native.py's pair reading of image AUROC (the screw table's error breakdown)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fapm_lib.decisions.metrics import image_auroc

TOOL = Path(__file__).resolve().parents[2] / "tools" / "measure_native.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("measure_native", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(scores: list[float], labels: list[int]) -> dict:
    paths = [f"data/screw/test/{'good' if y == 0 else 'scratch'}/{i:03d}.png" for i, y in enumerate(labels)]
    return {"scores": scores, "labels": labels, "paths": paths}


def test_pair_errors_reads_the_library_auroc_with_ties(tool):
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(60, generator=gen) < 0.6).long()
    scores = torch.randint(0, 12, (60,), generator=gen).float()  # many ties
    out = tool.pair_errors(_result(scores.tolist(), labels.tolist()))
    assert out["image AUROC"] == pytest.approx(image_auroc(scores, labels), abs=1e-6)
    assert out["pairs"] == int((labels == 0).sum()) * int((labels == 1).sum())
    assert out["pairs ranked wrong"] == pytest.approx((1 - out["image AUROC"]) * out["pairs"])


def test_pair_errors_names_the_good_images_behind_the_errors(tool):
    # good 0 sits above all three defects, good 1 above one; goods 2 and 3 below every defect
    scores, labels = [9.0, 5.5, 1.0, 2.0, 5.0, 6.0, 7.0], [0, 0, 0, 0, 1, 1, 1]
    out = tool.pair_errors(_result(scores, labels), worst=1)
    assert out["pairs ranked wrong"] == 4
    assert out["behind most of them"] == "good/000.png (3)"
    without = [s for i, s in enumerate(scores) if i != 0]
    expected = image_auroc(torch.tensor(without), torch.tensor(labels[1:]))
    assert out["image AUROC without those 1"] == pytest.approx(expected)
    assert expected == pytest.approx(1 - 1 / 9)


def test_auroc_interval_holds_the_auroc_and_narrows_with_more_images(tool):
    rng = torch.Generator().manual_seed(1)
    def interval(n: int) -> tuple[float, float, float]:
        good, bad = torch.randn(n, generator=rng), torch.randn(3 * n, generator=rng) + 1.5
        low, high = tool.auroc_interval(good.numpy(), bad.numpy())
        labels = torch.cat([torch.zeros(n), torch.ones(3 * n)]).long()
        return low, image_auroc(torch.cat([good, bad]), labels), high
    small, large = interval(40), interval(400)
    assert small[0] < small[1] < small[2] and large[0] < large[1] < large[2]
    assert large[2] - large[0] < 0.6 * (small[2] - small[0])
    assert tool.auroc_interval(torch.zeros(5).numpy(), torch.ones(9).numpy()) == (1.0, 1.0)
