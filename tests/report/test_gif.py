"""``fapm gif``: a looping GIF of test predictions, few frames, small file, one colour scale."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm_lib.cli.main import main
from fapm_lib.config import FAPMConfig
from fapm_lib.data.mvtec import MVTecDataset
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.errors import ConfigError
from fapm_lib.report import animation as gif
from tests.helpers import build_mvtec_tree

TINY = FAPMConfig(pretrained=False, resize=64, crop_size=64, grid=2, coreset_ratio=0.5, k=2, batch_size=4)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root of category 'widget' with 5 test images, a fitted FAPM model file)."""
    base = tmp_path_factory.mktemp("gif")
    root = build_mvtec_tree(base / "data", n_train=3, test_counts={"good": 2, "crack": 3}, size=(64, 64))
    model = FAPM(TINY)
    model.fit(MVTecDataset(root, "widget", "train", model.transform), progress=False)
    return root, model.save(base / "model.safetensors")


def _gif_cli(fitted: tuple[Path, Path], output: Path, max_frames: int) -> int:
    root, model = fitted
    return main(["gif", "--model", str(model), "--data-root", str(root), "--category", "widget",
                 "--output", str(output), "--max-frames", str(max_frames), "--no-progress"])


@pytest.mark.parametrize("max_frames, expected", [(3, 3), (24, 5)])
def test_gif_frames_loop_and_size(fitted: tuple[Path, Path], tmp_path: Path, max_frames: int, expected: int) -> None:
    output = tmp_path / "widget.gif"
    assert _gif_cli(fitted, output, max_frames) == 0
    with Image.open(output) as picture:
        assert picture.format == "GIF"
        assert picture.n_frames == expected <= max_frames
        assert picture.info.get("loop") == 0  # loops forever
    assert output.stat().st_size < 2 * 2**20


def test_too_large_gif_falls_back_to_smaller_tiles(fitted: tuple[Path, Path], tmp_path: Path) -> None:
    root, model_file = fitted
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


def test_output_must_be_a_gif(fitted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _gif_cli(fitted, tmp_path / "movie.png", 3) == 2
    assert "ending in .gif" in capsys.readouterr().err
    assert not (tmp_path / "movie.png").exists()
