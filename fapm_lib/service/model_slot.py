"""The live model of a service and its atomic swap.

A :class:`LoadedModel` is one fitted FAPM model file as loaded (``FAPM.load``: safetensors, its
checksum verified), with the sha256 of the file's bytes: ``id`` is its first 12 hex digits, so
every answer names the exact file that produced it. :class:`ModelSlot` holds the live one. A
swap loads and checks the new file *beside* the live model (which goes on scoring), then
replaces one reference: a batch takes ``slot.current`` once at its start and is scored wholly
by that model, so no request fails or mixes two models during a swap.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..detectors.fapm import FAPM
from ..errors import ModelFileError

ID_DIGITS = 12


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of ``path`` (header only), or {} when it cannot be read."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # noqa: BLE001 - FAPM.load gives the one-line reason
        return {}


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model file: the detector, its path, the sha256 of its bytes, its format version."""

    detector: FAPM
    path: Path
    sha256: str
    format_version: int | None
    loaded_at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        """The model's id: the first 12 hex digits of the file's sha256."""
        return self.sha256[:ID_DIGITS]

    @property
    def name(self) -> str:
        return self.path.name

    def normal_scores(self) -> list[float]:
        """The held-out normal image scores the thresholds came from (raw units; empty if none)."""
        cal = self.detector.calibration
        values = (cal.summary.get("image") or {}).get("values") if cal is not None else None
        return [float(v) for v in values or []]

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` answers: id, file, settings, thresholds, normal scores."""
        model, cal = self.detector, self.detector.calibration
        info = model.backbone_info
        return {"id": self.id, "name": self.name, "path": str(self.path), "sha256": self.sha256,
                "format_version": self.format_version, "kind": model.kind,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
                "backbone": {"name": info.name, "pretrained": info.pretrained},
                "settings": model.config.to_dict(),
                "calibrated": cal is not None,
                "thresholds": None if cal is None else cal.brief(),
                "normal_scores": self.normal_scores(),
                "n_train": model.fit_stats.get("n_train"), "updates": model.fit_stats.get("updates", [])}


def load_model(path: str | Path, device: str = "cpu", share_with: LoadedModel | None = None) -> LoadedModel:
    """Load and check a FAPM model file (ModelFileError, one line, for a bad one) and build its
    backbone, so that its first batch is not slower than the others. ``share_with``: reuse that
    model's backbone when the file names the same one (a swap then costs no second backbone)."""
    path = Path(path)
    for _ in range(3):  # the file may be replaced while it is read: the id must match what was loaded
        before = file_sha256(path) if path.is_file() else None
        metadata = _file_metadata(path)
        extractor = _shared_extractor(metadata, share_with)
        detector = FAPM.load(path, device=device, extractor=extractor)
        detector.runnable()
        if before is not None and file_sha256(path) == before:
            version = metadata.get("format_version")
            return LoadedModel(detector, path.resolve(), before, int(version) if version and version.isdigit()
                               else None)
    raise ModelFileError(f"{path}: the file kept changing while it was loaded; try again once it is written")


def _shared_extractor(metadata: dict[str, str], other: LoadedModel | None):
    """``other``'s feature extractor when the file's header names the same backbone, else None."""
    if other is None:
        return None
    try:
        backbone = json.loads(metadata["header"])["backbone"]
    except (KeyError, TypeError, ValueError):
        return None
    info = other.detector.backbone_info
    same = (backbone.get("name"), backbone.get("pretrained", True), list(backbone.get("channels", []))) == (
        info.name, info.pretrained, list(info.channels))
    return other.detector.extractor if same else None


class ModelSlot:
    """Holds the live :class:`LoadedModel`; :meth:`swap` replaces it atomically (one at a time)."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu") -> None:
        self._current = loaded
        self._device = device
        self._swap_lock = threading.Lock()
        self.swaps = 0

    @property
    def current(self) -> LoadedModel:
        """The live model (read once per batch)."""
        return self._current

    def swap(self, path: str | Path) -> LoadedModel:
        """Load ``path`` beside the live model, then make it the live one; the live model is
        unchanged when the new file is refused (ModelFileError, one line)."""
        with self._swap_lock:
            loaded = load_model(path, self._device, share_with=self._current)
            self._current = loaded
            self.swaps += 1
            return loaded
