"""``report.html``: one self-contained page to look at (``fapm predict --report``,
``fapm evaluate --report``). Every picture is inlined as a base64 data URI and the histogram is
inline SVG, so the file opens anywhere with no network and no folder beside it.

Sections: the counts and the threshold; the metrics (evaluate); the held-out normal scores as a
histogram with the threshold and every scored image as a tick; thumbnails sorted by score with
their decision (and the truth, when known); the explanation crops; the settings. Written
atomically; nothing in it depends on the time or the machine, so a re-run gives the same file.
"""
from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..decisions.calibration import Calibration
from ..system.atomic import write_text_atomic

THUMB_SIDE = 220
COLOURS = {"NG": "#c62828", "OK": "#2e7d32", "uncalibrated": "#616161", "good": "#2e7d32", "defect": "#c62828"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
.thumb{width:230px;font-size:.8em;border:1px solid #ddd;padding:4px;word-break:break-all}
.thumb img{width:220px;display:block}
.badge{display:inline-block;color:#fff;border-radius:3px;padding:0 5px;font-weight:600}
.explain img{max-width:100%;display:block;margin-bottom:4px}.explain{margin-bottom:16px}
.note{color:#555;font-size:.9em}
"""


@dataclass
class ReportImage:
    """One scored image: its ``name``, the picture shown (uint8 ``[H, W, 3]``, e.g. its
    calibrated overlay, or already a :func:`data_uri`), raw and normalised score, decision, the
    truth (``good`` or a defect type; None when unknown) and, if explained, the explanation's
    picture (array or data URI) and text."""

    name: str
    picture: np.ndarray | str
    raw_score: float
    score: float | None
    decision: str
    truth: str | None = None
    explanation: np.ndarray | str | None = None
    explanation_text: str = ""


def data_uri(picture: np.ndarray, fmt: str = "PNG", max_side: int | None = None) -> str:
    """uint8 ``[H, W, 3]`` -> ``data:image/...;base64,...`` (``max_side``: shrink to fit first)."""
    pil = Image.fromarray(picture)
    if max_side is not None and max(pil.size) > max_side:
        factor = max_side / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * factor)), max(1, round(pil.height * factor))),
                         Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _uri(picture: np.ndarray | str, fmt: str, max_side: int | None = None) -> str:
    return picture if isinstance(picture, str) else data_uri(picture, fmt, max_side)


def _colour(image: ReportImage) -> str:
    if image.truth is not None:
        return COLOURS["good"] if image.truth == "good" else COLOURS["defect"]
    return COLOURS.get(image.decision, COLOURS["uncalibrated"])


def histogram_svg(heldout: Sequence[float], threshold: float | None, images: Sequence[ReportImage],
                  width: int = 720, height: int = 240, bins: int = 24) -> str:
    """Inline SVG: bars of the held-out normal image scores, the threshold as a red line, each
    scored image as a tick below the axis (green good / OK, red defect / NG)."""
    values = [*heldout, *(i.raw_score for i in images), *([threshold] if threshold is not None else [])]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.04 * (high - low) if high > low else 1.0
    low, high = low - pad, high + pad
    left, right, top, axis = 50, width - 15, 25, height - 50

    def x_of(v: float) -> float:
        return left + (v - low) / (high - low) * (right - left)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="histogram of held-out normal scores">',
             f'<line x1="{left}" y1="{axis}" x2="{right}" y2="{axis}" stroke="#333"/>']
    if len(heldout):
        counts, edges = np.histogram(np.asarray(heldout, dtype=float), bins=bins)
        scale = (axis - top) / max(int(counts.max()), 1)
        for count, a, b in zip(counts, edges[:-1], edges[1:]):
            h = count * scale
            parts.append(f'<rect x="{x_of(a):.1f}" y="{axis - h:.1f}" width="{max(x_of(b) - x_of(a) - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="#5c8fd6"><title>{count} held-out images in {a:.2f} .. {b:.2f}'
                         '</title></rect>')
        parts.append(f'<text x="{left}" y="{top - 8}" font-size="12">held-out normal training images '
                     f'(n = {len(heldout)}, max {int(counts.max())} per bar)</text>')
    for image in images:
        x = x_of(image.raw_score)
        parts.append(f'<line x1="{x:.1f}" y1="{axis + 4}" x2="{x:.1f}" y2="{axis + 16}" stroke="{_colour(image)}" '
                     f'stroke-width="2"><title>{html.escape(image.name)}: {image.raw_score:.3f}</title></line>')
    if threshold is not None:
        x = x_of(threshold)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis + 18}" stroke="#c62828" '
                     f'stroke-dasharray="5,3" stroke-width="2"/><text x="{x + 4:.1f}" y="{top + 12}" font-size="12" '
                     f'fill="#c62828">threshold {threshold:.3f}</text>')
    for v in np.linspace(low + pad, high - pad, 5):
        parts.append(f'<text x="{x_of(v):.1f}" y="{axis + 32}" font-size="11" text-anchor="middle">{v:.2f}</text>')
    parts.append(f'<text x="{(left + right) / 2:.0f}" y="{axis + 46}" font-size="12" text-anchor="middle">'
                 'raw image score (ticks: the scored images)</text></svg>')
    return "".join(parts)


def _table(rows: dict[str, Any]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_plain(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _plain(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _thumb(image: ReportImage) -> str:
    badge = (f'<span class="badge" style="background:{COLOURS.get(image.decision, COLOURS["uncalibrated"])}">'
             f'{html.escape(image.decision)}</span>')
    truth = "" if image.truth is None else f' truth <b style="color:{_colour(image)}">{html.escape(image.truth)}</b>'
    score = "" if image.score is None else f" score {image.score:.3f}"
    return (f'<figure class="thumb"><img src="{_uri(image.picture, "JPEG", THUMB_SIDE)}" '
            f'alt="{html.escape(image.name)}"><figcaption>{badge}{truth} raw {image.raw_score:.3f}{score}<br>'
            f'{html.escape(image.name)}</figcaption></figure>')


def render_report(title: str, images: Sequence[ReportImage], calibration: Calibration | None,
                  settings: dict[str, Any], metrics: dict[str, Any] | None = None, notes: Sequence[str] = ()) -> str:
    """The page as one HTML string (see the module's sections)."""
    ordered = sorted(images, key=lambda i: -i.raw_score)
    flagged = sum(i.decision == "NG" for i in images)
    threshold = None if calibration is None else calibration.image_threshold
    heldout = [] if calibration is None else calibration.summary.get("image", {}).get("values", [])
    head = (f"{len(images)} images: {flagged} NG, {len(images) - flagged} OK; image threshold {threshold:.3f} "
            f"(raw units, method {calibration.method})" if calibration is not None else
            f"{len(images)} images, uncalibrated (raw scores only)")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(head)}</p>"]
    out += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    if metrics:
        out += ["<h2>Metrics</h2>", _table(metrics)]
    out += ["<h2>Scores</h2>", histogram_svg(heldout, threshold, ordered)]
    out += [f"<h2>Images, highest score first ({len(ordered)})</h2>", '<div class="thumbs">',
            *(_thumb(i) for i in ordered), "</div>"]
    explained = [i for i in ordered if i.explanation is not None]
    if explained:
        out += [f"<h2>Explanations ({len(explained)})</h2>",
                '<p class="note">At each image\'s most anomalous place, per layer: the test image (cell boxed), the '
                "test crop, the nearest normal crop in that region's memory, and the training image it came from "
                "(cell boxed).</p>"]
        out += [f'<div class="explain"><img src="{_uri(i.explanation, "JPEG")}" '
                f'alt="explanation of {html.escape(i.name)}">'
                f'<div class="note">{html.escape(i.explanation_text)}</div></div>' for i in explained]
    out += ["<h2>Settings</h2>", _table(settings), "</body></html>"]
    return "\n".join(out) + "\n"


def model_settings(model) -> dict[str, Any]:
    """The settings a report shows for a fitted (or exported) model: backbone, input, grid,
    ratios, scoring, calibration and thresholds, training images, updates."""
    config, cal = model.config, getattr(model, "calibration", None)
    out: dict[str, Any] = {
        "backbone": config.backbone, "input": config.input_description(), "coreset ratio r": config.coreset_ratio,
        "adaptive multiplier a": config.adaptive_multiplier, "sampling": config.sampling,
        "image score": config.image_score, "k": config.search_k}
    if cal is not None:
        out.update({"calibration": cal.method, "target false-alarm rate": cal.false_alarm_rate,
                    "image threshold (raw)": cal.image_threshold, "pixel threshold (raw)": cal.pixel_threshold,
                    "held-out normal images": cal.summary.get("n_images")})
    stats = getattr(model, "fit_stats", {}) or {}
    train = getattr(model, "train_images", None)
    out["training images"] = len(train) if train else stats.get("n_train")
    added = sum(int(u.get("n_added", 0)) for u in stats.get("updates", []))
    if added:
        out["normal images added since the fit (fapm update)"] = added
    return out


def write_report(path: str | os.PathLike, title: str, images: Sequence[ReportImage], calibration: Calibration | None,
                 settings: dict[str, Any], metrics: dict[str, Any] | None = None, notes: Sequence[str] = ()) -> Path:
    """Write :func:`render_report`'s page to ``path`` atomically."""
    return write_text_atomic(path, render_report(title, images, calibration, settings, metrics, notes))
