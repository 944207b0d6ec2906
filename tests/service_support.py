"""What the service tests share: a tiny fitted model (64 px parts, grid 2, the offline backbone),
a second one (the first with two normal images added, as ``fapm update`` writes it), image bytes
in several formats, and a running service."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from fapm_lib import FAPM, FolderDataset, MVTecDataset
from fapm_lib.detectors.model_file import MODEL_FILE
from tests.parts_support import CATEGORY, TINY, part_image, write_tree


def fit_model(folder: Path) -> tuple[Path, FAPM, Path]:
    """The data root and a fitted model, and its file, under ``folder``."""
    root = write_tree(folder / "data", n_train=10, n_good=3, n_bad=3)
    model = FAPM(TINY)
    model.fit(MVTecDataset(root, CATEGORY, "train", model.transform), progress=False)
    return root, model, model.save(folder / "v1" / MODEL_FILE)


def fit_models(folder: Path) -> tuple[Path, Path, Path]:
    """The data root, a fitted model file and an updated copy (another sha256) under ``folder``."""
    root, model, first = fit_model(folder)
    extra = folder / "extra"
    extra.mkdir()
    for i in range(2):
        Image.fromarray(part_image(300 + i)).save(extra / f"{i}.png")
    model.add_good(FolderDataset(good=extra, transform=model.transform))
    second = model.save(folder / "v2" / MODEL_FILE)
    return root, first, second


def sample_images(root: Path) -> list[Path]:
    """The tiny set's test images (3 good, 3 with a defect), sorted."""
    return sorted((root / CATEGORY / "test").rglob("*.png"))


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """``array`` as the bytes of a ``fmt`` file (``mode``: convert first, e.g. ``L``)."""
    pil = Image.fromarray(array)
    if mode is not None:
        pil = pil.convert(mode)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt)
    return buffer.getvalue()


def sixteen_bit_png(array: np.ndarray) -> bytes:
    """The gray of ``array`` [H, W, 3] uint8 as a 16-bit PNG (value * 257: decodes to the same 8 bit)."""
    gray = np.asarray(Image.fromarray(array).convert("L"), dtype=np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()
