#!/usr/bin/env python3
"""Run an exported FAPM model with onnxruntime or OpenVINO; needs only numpy and Pillow besides.

This file is copied next to the exported model by ``fapm export``; it does not import the
``fapm_lib`` package or torch, so it runs wherever the runtime does::

    pip install onnxruntime numpy pillow         # or: pip install openvino numpy pillow
    python run_fapm.py IMAGE_OR_DIR... --output OUT [--model DIR] [--runtime onnxruntime|openvino]

It reads the sidecar ``fapm_export.json`` beside the model, decodes each image with Pillow
exactly as ``fapm_lib.data.transform.Transform`` does (EXIF orientation applied, alpha dropped,
16-bit scaled by 1/257, gray kept as one channel for a gray model) and brings it to the graph's
input: at native resolution the whole image, resized to the model's canvas when its size differs
(the same aspect ratio only); with the paper's protocol the shorter side resized to ``resize``
(bilinear), then the centre crop. It runs the graph, and writes ``OUT/scores.csv`` (path, raw_score, and for a
calibrated model
score and decision), plus ``OUT/masks/*.png`` with ``--masks`` and ``OUT/maps/*.npy`` with
``--maps``. Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

SIDECAR = "fapm_export.json"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
RUNTIMES = ("onnxruntime", "openvino")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: As fapm_lib.data.transform.ASPECT_TOLERANCE: an image of another aspect than the canvas is refused.
ASPECT_TOLERANCE = 0.01
Image.MAX_IMAGE_PIXELS = 16384 * 16384


class ExportError(ValueError):
    """A problem the user can fix (bad model folder, bad image, wrong input), in one line."""


_OPENVINO_CORE = None


def openvino_core():
    """The process's one ``openvino.Core``, made on first use and never released.

    Every Core has its own CPU plugin, and on Linux the plugin's constructor installs an
    alternate signal stack (``sigaltstack``) on the calling thread, remembering the previous
    one; its destructor puts the previous one back only if its own is still current, and
    unmaps its own either way. Two plugins released in the order they were made (not
    last-in-first-out), or one released on another thread, leave the thread's alternate stack
    pointing at unmapped memory, and the next signal handled there (SIGCHLD when a child
    process ends, SIGINT, ...; CPython installs its handlers with SA_ONSTACK) kills the process
    with SIGSEGV and no traceback. One Core for the process means one CPU plugin that lives
    until exit, whatever order the compiled models are released in."""
    global _OPENVINO_CORE
    if _OPENVINO_CORE is None:
        import openvino as ov

        _OPENVINO_CORE = ov.Core()
    return _OPENVINO_CORE


# ---- pre-processing: the same as fapm_lib.data (images.load_image + transform.Transform) ------------
def _to_rgb(pil: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha dropped, 16-bit scaled by 1/257, gray replicated."""
    if pil.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(pil).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8)).convert("RGB")
    if pil.mode == "P":
        return pil.convert("RGBA").convert("RGB")
    return pil.convert("RGB")


def _to_gray(pil: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit L: 16-bit scaled by 1/257, colour to luminance."""
    if pil.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(pil).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8))
    if pil.mode in ("L", "1", "LA"):
        return pil.convert("L")
    return _to_rgb(pil).convert("L")


def load_rgb(path: str | os.PathLike, min_side: int | None = None, channels: int = 3) -> Image.Image:
    """Decode ``path`` as an upright RGB image (``channels`` 1: L); a large JPEG may decode at
    reduced scale while its shorter side stays >= ``2 * min_side`` (as
    ``fapm_lib.data.images.load_image``)."""
    try:
        with Image.open(path) as pil:
            ratio = 2 * min_side / min(pil.size) if min_side else 1.0
            if isinstance(pil, JpegImagePlugin.JpegImageFile) and ratio < 1:
                pil.draft(None, (math.ceil(pil.width * ratio), math.ceil(pil.height * ratio)))
            pil.load()
            upright = ImageOps.exif_transpose(pil)
            return _to_gray(upright) if channels == 1 else _to_rgb(upright)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ExportError(f"{path}: cannot read image ({' '.join(str(exc).split()) or type(exc).__name__})") from None


def prepare(pil: Image.Image, pre: dict[str, Any], name: str = "image") -> np.ndarray:
    """A decoded image -> the graph's input pixels, uint8 ``[H, W, C]``, by the sidecar's
    ``preprocessing``: the protocol's resize and crop, or the native canvas (same aspect only)."""
    if pre.get("mode", "protocol") == "protocol":
        out = resize_crop(pil, pre["resize"], pre["crop_size"])
    else:
        height, width = pre["canvas"]
        w, h = pil.size
        if abs((w / h) / (width / height) - 1.0) > ASPECT_TOLERANCE:
            raise ExportError(f"{name}: {w}x{h} does not have the model's aspect ratio ({width}x{height} canvas)")
        out = np.array(pil if pil.size == (width, height) else pil.resize((width, height), Image.Resampling.BILINEAR),
                       dtype=np.uint8)
    return out.reshape(out.shape[0], out.shape[1], -1)


def resize_crop(rgb: Image.Image, resize: int, crop_size: int | None) -> np.ndarray:
    """Bilinear resize of the shorter side to ``resize`` then centre crop -> uint8 ``[S, S, C]``."""
    width, height = rgb.size
    if crop_size is None:
        size = (resize, resize)
    elif width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    out = rgb.resize(size, Image.Resampling.BILINEAR)
    if crop_size is not None:
        left, top = round((size[0] - crop_size) / 2.0), round((size[1] - crop_size) / 2.0)
        out = out.crop((left, top, left + crop_size, top + crop_size))
    return np.array(out, dtype=np.uint8)  # a writable copy


# ---- the exported model ---------------------------------------------------------------------
def find_sidecar(model: str | os.PathLike) -> Path:
    """The sidecar of an export given its folder, its ``.onnx``/``.xml`` file or the sidecar."""
    path = Path(model)
    candidate = path / SIDECAR if path.is_dir() else path.with_name(SIDECAR)
    if path.name == SIDECAR:
        candidate = path
    if not candidate.is_file():
        raise ExportError(f"{model}: not an exported FAPM model (no {SIDECAR} beside it)")
    return candidate


class ExportedRunner:
    """An exported FAPM graph in onnxruntime or OpenVINO.

    ``run(images)``: uint8 ``[B, H, W, C]`` -> ``{output name: array}``; a fixed-batch export is
    fed in chunks of its batch size (the last one padded with copies of its last image)."""

    def __init__(self, model: str | os.PathLike, runtime: str | None = None, threads: int | None = None) -> None:
        self.sidecar_path = find_sidecar(model)
        try:
            self.meta: dict[str, Any] = json.loads(self.sidecar_path.read_text(encoding="utf-8"))
            self.input_name = self.meta["input"]["name"]
            self.shape = tuple(int(v) for v in self.meta["input"]["shape"][1:])  # (H, W, C)
            self.output_names = list(self.meta["outputs"])
            self.preprocessing = self.meta["preprocessing"]
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ExportError(f"{self.sidecar_path}: unreadable export description "
                              f"({type(exc).__name__}: {exc})") from None
        if self.meta.get("format") != "fapm_export":
            raise ExportError(f"{self.sidecar_path}: not a fapm export description")
        batch = self.meta.get("batch_size")
        self.batch_size: int | None = batch if isinstance(batch, int) else None
        path = Path(model)
        default = self.meta.get("model_file", "model.onnx")
        self.model_file = path if path.suffix in (".onnx", ".xml") else self.sidecar_path.parent / default
        if not self.model_file.is_file():
            raise ExportError(f"{self.model_file}: model file missing")
        self.runtime = runtime or ("openvino" if self.model_file.suffix == ".xml" else "onnxruntime")
        if self.runtime not in RUNTIMES:
            raise ExportError(f"runtime {self.runtime!r}: must be one of {', '.join(RUNTIMES)}")
        if self.runtime == "onnxruntime" and self.model_file.suffix == ".xml":
            onnx = self.model_file.with_suffix(".onnx")
            if not onnx.is_file():
                raise ExportError(f"{self.model_file}: onnxruntime needs the .onnx file, which is missing")
            self.model_file = onnx
        if threads is not None and threads < 1:
            raise ExportError(f"threads={threads}: must be >= 1")
        self.threads = threads
        self._run = self._open_onnxruntime() if self.runtime == "onnxruntime" else self._open_openvino()

    def _open_onnxruntime(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("onnxruntime is not installed: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])
        names = self.output_names
        return lambda x: dict(zip(names, session.run(names, {self.input_name: x})))

    def _open_openvino(self):
        try:
            core = openvino_core()
        except ImportError:
            raise ExportError("openvino is not installed: pip install openvino") from None
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        compiled = core.compile_model(str(self.model_file), "CPU", config)  # one Core: see openvino_core
        request = compiled.create_infer_request()
        ports = {port.get_any_name(): port for port in compiled.outputs}
        names = self.output_names

        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            result = request.infer({self.input_name: x})
            return {n: np.array(result[ports[n]]) for n in names}

        return run

    @property
    def calibrated(self) -> bool:
        return self.meta.get("calibration") is not None

    def check_input(self, images: np.ndarray) -> None:
        """ExportError unless ``images`` is uint8 ``[B, H, W, C]`` at the export's size."""
        h, w, c = self.shape
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[1:] != self.shape or images.shape[0] < 1:
            got = f"{getattr(images, 'dtype', type(images).__name__)} {list(getattr(images, 'shape', []))}"
            raise ExportError(f"input {got}: the exported model takes uint8 [B, {h}, {w}, {c}] "
                              f"({'gray' if c == 1 else 'RGB'}, {h}x{w} pixels; see {SIDECAR})")

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 ``[B, S, S, 3]`` -> ``{name: array}`` with B along the first axis."""
        self.check_input(images)
        images = np.ascontiguousarray(images)
        n = self.batch_size
        if n is None:
            return self._run(images)
        chunks = []
        for start in range(0, len(images), n):
            chunk = images[start : start + n]
            pad = n - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out = self._run(chunk)
            chunks.append({k: v[: n - pad] for k, v in out.items()})
        return {k: np.concatenate([c[k] for c in chunks]) for k in self.output_names}

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """One image file -> uint8 ``[H, W, C]`` as the graph expects."""
        pre = self.preprocessing
        return prepare(load_rgb(path, pre.get("resize"), self.shape[2]), pre, str(path))


# ---- command line ---------------------------------------------------------------------------
def image_paths(inputs: list[str]) -> list[Path]:
    """Image files given directly or found (recursively, sorted) in folders."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith(".") and p.is_file())
        elif item.is_file():
            paths.append(item)
        else:
            raise ExportError(f"{item}: no such file or folder")
    if not paths:
        raise ExportError("no images found in " + ", ".join(inputs))
    return paths


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score images with an exported FAPM model.")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--output", required=True, help="folder for scores.csv (and masks/, maps/)")
    parser.add_argument("--model", default=str(Path(__file__).resolve().parent),
                        help="export folder, model.onnx or model.xml (default: this script's folder)")
    parser.add_argument("--runtime", choices=RUNTIMES, help="default: openvino for .xml, else onnxruntime")
    parser.add_argument("--threads", type=int, help="CPU threads of the runtime")
    parser.add_argument("--batch-size", type=int, default=8, help="images per run (dynamic-batch exports)")
    parser.add_argument("--masks", action="store_true", help="write masks/*.png (calibrated models only)")
    parser.add_argument("--maps", action="store_true", help="write maps/*.npy (float32 anomaly maps)")
    args = parser.parse_args(argv)
    try:
        runner = ExportedRunner(args.model, args.runtime, args.threads)
        if args.masks and not runner.calibrated:
            raise ExportError("--masks: this export has no calibration (no thresholds), so no masks")
        if args.batch_size < 1:
            raise ExportError(f"--batch-size {args.batch_size}: must be >= 1")
        paths = image_paths(args.inputs)
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        step = runner.batch_size or args.batch_size
        header = ["path", "raw_score"] + (["score", "decision"] if runner.calibrated else [])
        rows = []
        for start in range(0, len(paths), step):
            chunk = paths[start : start + step]
            result = runner.run(np.stack([runner.load(p) for p in chunk]))
            for j, path in enumerate(chunk):
                row = [str(path), f"{float(result['raw_score'][j]):.6f}"]
                if runner.calibrated:
                    row += [f"{float(result['score'][j]):.6f}", "NG" if bool(result["decision"][j]) else "OK"]
                rows.append(row)
                name = f"{start + j:05d}_{path.stem}"
                if args.masks:
                    (out / "masks").mkdir(exist_ok=True)
                    mask = Image.fromarray(result["mask"][j].astype(np.uint8) * 255)
                    _write_atomic(out / "masks" / f"{name}.png", lambda t, mask=mask: mask.save(t, format="PNG"))
                if args.maps:
                    (out / "maps").mkdir(exist_ok=True)
                    amap = result["anomaly_map"][j].astype(np.float32)
                    _write_atomic(out / "maps" / f"{name}.npy", lambda t, amap=amap: _save_npy(t, amap))

        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows([header, *rows])

        _write_atomic(out / "scores.csv", write_csv)
    except ExportError as exc:
        print(f"run_fapm: error: {exc}", file=sys.stderr)
        return 2
    print(f"scored {len(rows)} images with {runner.runtime}; wrote {out / 'scores.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
