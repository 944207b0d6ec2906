"""``fapm gif``: a looping GIF of test predictions, few frames, small file; an output that is not a GIF is
refused."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fapm_lib.cli.main import main


def _gif_cli(gif_fit: tuple[Path, Path], output: Path, max_frames: int) -> int:
    root, model = gif_fit
    return main(["gif", "--model", str(model), "--data-root", str(root), "--category", "widget",
                 "--output", str(output), "--max-frames", str(max_frames), "--no-progress"])


@pytest.mark.parametrize("max_frames, expected", [(3, 3), (24, 5)])
def test_gif_frames_loop_and_size(gif_fit: tuple[Path, Path], tmp_path: Path, max_frames: int, expected: int) -> None:
    output = tmp_path / "widget.gif"
    assert _gif_cli(gif_fit, output, max_frames) == 0
    with Image.open(output) as picture:
        assert picture.format == "GIF"
        assert picture.n_frames == expected <= max_frames
        assert picture.info.get("loop") == 0  # loops forever
    assert output.stat().st_size < 2 * 2**20


def test_output_must_be_a_gif(gif_fit: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _gif_cli(gif_fit, tmp_path / "movie.png", 3) == 2
    assert "ending in .gif" in capsys.readouterr().err
    assert not (tmp_path / "movie.png").exists()
