"""The GIF of test predictions: one colour scale over its frames, captions, frames spread over the split,
smaller tiles when the file would be too large."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm_lib.data.mvtec import MVTecDataset
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.errors import ConfigError
from fapm_lib.report import animation as gif


def test_too_large_gif_falls_back_to_smaller_tiles(gif_fit: tuple[Path, Path], tmp_path: Path) -> None:
    root, model_file = gif_fit
    model = FAPM.load(model_file)
    dataset = MVTecDataset(root, "widget", "test", model.transform)
    path = gif.make_gif(model, dataset, tmp_path / "small.gif", max_frames=2, max_bytes=1)
    with Image.open(path) as picture:
        smallest = gif.TILE_SIDES[-1]
        assert picture.size[0] == 3 * smallest + 2 * 4  # three tiles and two gaps


def test_frames_share_one_colour_scale_and_carry_captions(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_panel = gif.result_panel
    monkeypatch.setattr(gif, "result_panel", lambda *a, **k: calls.append(a) or real_panel(*a, **k))
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    frames = [{"rgb": rgb, "map": torch.full((32, 32), value), "mask": None, "score": value,
               "defect_type": kind, "name": f"{kind}.png"} for value, kind in ((0.0, "good"), (1.0, "crack"))]
    low, high = gif.render_frames(frames, side=16)
    # The third tile is the bare heatmap: on one scale the 0-map is the lowest colour, the 1-map the highest.
    assert not np.array_equal(low[-1, -1], high[-1, -1])
    assert [(c[4], c[5], c[6]) for c in calls] == [("1/2 good good.png", 0.0, 1.0), ("2/2 crack crack.png", 0.0, 1.0)]
    assert [c[3] for c in calls] == [0.0, 1.0]  # the scores


def test_pick_frames_spreads_over_the_split() -> None:
    assert gif.pick_frames(4, 10) == [0, 1, 2, 3]
    assert gif.pick_frames(10, 4) == [0, 2, 5, 7]
    with pytest.raises(ConfigError, match="max-frames"):
        gif.pick_frames(4, 0)
