"""Model files: safetensors (no pickle) with a JSON header, a format version and a checksum."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import ModelFileError
from ..system.atomic import atomic_path

#: The file name fit, evaluate and fit-all write a model to.
MODEL_FILE = "model.safetensors"
FORMAT_NAME = "fapm_lib"
#: Version 2 adds, for every memory vector, the training row it came from (``...groups.G.sources``);
#: version 3 the training image paths (header ``train_images``, null when unknown) and the
#: updates that added normal images (``fit_stats["updates"]``, ``fapm update``).
FORMAT_VERSION = 3
#: Versions this library reads (version 1: no sources; 1 and 2: no training image paths;
#: explanations are then refused).
READABLE_VERSIONS = (1, 2, 3)


def tensors_digest(tensors: dict[str, Tensor], preamble: str = "") -> str:
    """sha256 over ``preamble`` (kind and header) and the names, dtypes, shapes and bytes of all
    tensors, in name order."""
    h = hashlib.sha256(preamble.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, Tensor], kind: str, header: dict[str, Any]) -> Path:
    """Write ``tensors`` and a JSON ``header`` to ``path`` atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header_json = json.dumps(header, sort_keys=True)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "header": header_json,
        "sha256": tensors_digest(tensors, _preamble(kind, header_json)),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_tensors(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a model file; ModelFileError for a truncated, tampered or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        # clone: safetensors returns views at unaligned offsets, and unaligned inputs make the
        # batched products round differently from the in-memory model
        tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: not a readable model file ({str(exc).splitlines()[0][:120]})") from None
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a {FORMAT_NAME} model file")
    version = metadata.get("format_version")
    if version not in {str(v) for v in READABLE_VERSIONS}:
        raise ModelFileError(f"{path}: model format version {version} is not supported (this library reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
    if metadata.get("kind") != kind:
        raise ModelFileError(f"{path}: holds a {metadata.get('kind')} model, not a {kind} model")
    if tensors_digest(tensors, _preamble(kind, metadata.get("header", ""), int(version))) != metadata.get("sha256"):
        raise ModelFileError(f"{path}: checksum mismatch (the file was modified or damaged)")
    try:
        header = json.loads(metadata["header"])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: damaged header") from None
    header["format_version"] = int(version)  # what was read, not part of the stored header
    return tensors, header


def _preamble(kind: str, header_json: str, version: int = FORMAT_VERSION) -> str:
    """What the checksum covers besides the tensors: the format version, the model kind and the
    whole JSON header."""
    return f"{FORMAT_NAME}|{version}|{kind}|{header_json}|"
