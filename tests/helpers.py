"""Helpers for the tests: the repository root, tiny image datasets in the MVTec AD layout written on the fly
(no binaries in git), damaged and oddly stored image files, and the ``fapm`` command called in-process."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fapm_lib.errors import DataError

#: The repository root (tests/ is one level below it).
REPO = Path(__file__).resolve().parents[1]

JUNK_FILES = ("notes.txt", ".DS_Store", "Thumbs.db")


def noise_image(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Random-content image of ``size`` (width, height) in ``mode`` (RGB, L, RGBA, LA, P, 1, I;16, CMYK)."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgb.convert(mode)


def save_image(path: Path, size: tuple[int, int] = (48, 40), mode: str = "RGB", seed: int = 0) -> Path:
    """Write a noise image to ``path`` (format from the extension), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(size, mode, seed).save(path)
    return path


def save_mask(
    path: Path,
    size: tuple[int, int],
    box: tuple[int, int, int, int] | None = None,
    mode: str = "L",
) -> Path:
    """Write a mask: 255 inside ``box`` (left, top, right, bottom; default the middle half), 0 outside."""
    width, height = size
    left, top, right, bottom = box or (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[top:bottom, left:right] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def add_junk(folder: Path) -> None:
    """Drop files the reader must ignore into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in JUNK_FILES:
        (folder / name).write_bytes(b"not an image\n")


def build_mvtec_tree(
    root: Path,
    category: str = "widget",
    n_train: int = 3,
    test_counts: dict[str, int] | None = None,
    masks: bool = True,
    size: tuple[int, int] = (48, 40),
) -> Path:
    """Write ``root/category`` with train/good, test/<type> and (if ``masks``) ground_truth; return root."""
    test_counts = {"good": 2, "crack": 2} if test_counts is None else test_counts
    category_dir = root / category
    for i in range(n_train):
        save_image(category_dir / "train" / "good" / f"{i:03d}.png", size, seed=i)
    add_junk(category_dir / "train" / "good")
    for defect_type, count in test_counts.items():
        for i in range(count):
            save_image(category_dir / "test" / defect_type / f"{i:03d}.png", size, seed=100 + i)
            if masks and defect_type != "good":
                save_mask(category_dir / "ground_truth" / defect_type / f"{i:03d}_mask.png", size)
        add_junk(category_dir / "test" / defect_type)
    return root


# ---- image files that need care ----------------------------------------------------------------
def truncated_copy(source: Path, target: Path) -> Path:
    """``target``: the first half of ``source``'s bytes (a file cut off mid-write)."""
    payload = source.read_bytes()
    target.write_bytes(payload[: len(payload) // 2])
    return target


def box_jpeg(path: Path, size: tuple[int, int], box: tuple[int, int, int, int]) -> Path:
    """Black JPEG with a white box (left, top, right, bottom)."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def data_error(call, *args, **kwargs) -> str:
    """Run ``call`` expecting DataError; return its message, checked to be one line."""
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


# ---- the command, in-process -------------------------------------------------------------------
def run_main(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """``fapm ARGV`` in this process -> (exit code, stdout, stderr)."""
    from fapm_lib.cli import main as cli

    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(stderr: str) -> str:
    """The single non-empty stderr line; fails on a traceback or on several lines."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def evaluate_metrics(capsys: pytest.CaptureFixture, out: Path, *argv: str) -> dict:
    """``fapm evaluate ARGV --output OUT``, which must succeed -> its metrics.json."""
    code, _, err = run_main(capsys, "evaluate", *argv, "--output", str(out), "--no-progress")
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())
