"""Images in plain folders (any depth), as ``fapm predict`` and ``predict_folder`` read them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import DataError
from .images import IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Visible image files under ``folder`` (recursive), sorted; DataError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise DataError(f"{folder}: no images found")
    return paths


def output_names(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """``(image path, relative output name)`` for files and folders given on a command line.
    Names keep the source folder (``good/000``, ``crack/000``: a folder argument keeps its own
    name, a file its parent's), without the suffix; a repeated name gets ``_2``, ``_3``, ..."""
    pairs: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            base = Path(item.resolve().name)
            pairs += [(p, base / p.relative_to(item).with_suffix("")) for p in list_images(item)]
        elif item.is_file():
            pairs.append((item, Path(item.resolve().parent.name) / item.stem))
        else:
            raise DataError(f"{item}: no such file or folder")
    seen: dict[Path, int] = {}
    named = []
    for path, name in pairs:
        seen[name] = seen.get(name, 0) + 1
        named.append((path, name if seen[name] == 1 else name.with_name(f"{name.name}_{seen[name]}")))
    return named
