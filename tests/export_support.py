"""What the export tests share: the built-in category they fit on, the parity tolerance, and how a
``scores.csv`` is read back."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from fapm_lib.data.synthetic import CATEGORIES

#: The first built-in object category (the export fixtures generate a small copy of it).
CATEGORY = next(name for name, spec in CATEGORIES.items() if spec.kind == "object")
#: Exported maps and scores agree with the torch model to this relative difference.
RTOL = 1e-4


def rel_diff(a, b) -> float:
    """Largest absolute difference relative to the largest magnitude of ``b``."""
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def read_scores(path: Path) -> dict[str, dict[str, str]]:
    """A ``scores.csv`` by image path."""
    with open(path, newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}
