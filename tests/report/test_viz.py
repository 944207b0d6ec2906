"""Visualisation helpers: shapes, colours, overlays, atomic PNG/GIF files, notebook gallery."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from fapm_lib.errors import FAPMError
from fapm_lib.report.viz import (
    OUTLINE_RGB,
    denormalize,
    heatmap_rgb,
    overlay,
    plot_gallery,
    result_panel,
    save_gif,
    save_png,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


@pytest.fixture()
def anomaly_map() -> np.ndarray:
    return np.linspace(0.0, 3.0, 20 * 30, dtype=np.float32).reshape(20, 30)


@pytest.fixture()
def mask() -> np.ndarray:
    region = np.zeros((20, 30), dtype=bool)
    region[5:12, 8:20] = True
    return region


def test_denormalize_inverts_normalisation(image: np.ndarray) -> None:
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    normalised = (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    restored = denormalize(normalised, MEAN, STD)
    assert restored.shape == (20, 30, 3) and restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, image)


def test_denormalize_clips_and_checks_shape() -> None:
    assert denormalize(torch.full((3, 2, 2), 100.0), MEAN, STD).max() == 255
    with pytest.raises(FAPMError, match=r"\[3,H,W\] or \[1,H,W\]"):
        denormalize(torch.zeros(2, 4, 4), MEAN, STD)


def test_denormalize_shows_a_gray_image_as_its_gray(image: np.ndarray) -> None:
    """A one-channel image (normalised with the first channel's statistics) comes back as its
    gray values in all three channels."""
    gray = image[..., 0]
    normalised = (torch.from_numpy(gray).float()[None] / 255 - MEAN[0]) / STD[0]
    restored = denormalize(normalised, MEAN, STD)
    assert restored.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(restored[..., channel], gray)


def test_heatmap_shape_dtype_and_colours(anomaly_map: np.ndarray) -> None:
    heat = heatmap_rgb(anomaly_map)
    assert heat.shape == (20, 30, 3) and heat.dtype == np.uint8
    assert not np.array_equal(heat[0, 0], heat[-1, -1])  # min vs max
    np.testing.assert_array_equal(heatmap_rgb(torch.from_numpy(anomaly_map)), heat)


def test_heatmap_vmin_vmax_clip(anomaly_map: np.ndarray) -> None:
    heat = heatmap_rgb(anomaly_map, vmin=1.0, vmax=2.0)
    low, high = heatmap_rgb(np.array([[1.0, 2.0]]), vmin=1.0, vmax=2.0)[0]
    assert (heat[anomaly_map <= 1.0] == low).all()
    assert (heat[anomaly_map >= 2.0] == high).all()
    inside = (anomaly_map > 1.05) & (anomaly_map < 1.95)
    assert not (heat[inside] == low).all(axis=1).any()


def test_heatmap_of_constant_map_is_uniform() -> None:
    heat = heatmap_rgb(np.full((4, 4), 7.0))
    assert (heat == heat[0, 0]).all()


def test_overlay_alpha_zero_is_image_outside_outline(
    image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray
) -> None:
    blended = overlay(image, anomaly_map, alpha=0.0, mask=mask)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    outline = (blended == OUTLINE_RGB).all(axis=2) & mask
    assert outline[5, 8:20].all() and not outline[7:10, 10:18].any()  # border, not interior
    np.testing.assert_array_equal(blended[~outline], image[~outline])
    np.testing.assert_array_equal(overlay(image, anomaly_map, alpha=0.0), image)


def test_overlay_alpha_one_is_heatmap(image: np.ndarray, anomaly_map: np.ndarray) -> None:
    np.testing.assert_array_equal(overlay(image, anomaly_map, alpha=1.0), heatmap_rgb(anomaly_map))


def test_overlay_rejects_mismatched_sizes(image: np.ndarray) -> None:
    with pytest.raises(FAPMError, match="anomaly map"):
        overlay(image, np.zeros((10, 30)))
    with pytest.raises(FAPMError, match="mask"):
        overlay(image, np.zeros((20, 30)), mask=np.zeros((20, 31), dtype=bool))
    with pytest.raises(FAPMError, match="uint8"):
        overlay(image.astype(np.float32), np.zeros((20, 30)))


def test_save_png_roundtrip_and_atomic(tmp_path: Path, image: np.ndarray) -> None:
    target = tmp_path / "out" / "picture.png"
    assert save_png(target, image) == target
    with Image.open(target) as saved:
        assert saved.format == "PNG"
        np.testing.assert_array_equal(np.asarray(saved), image)
    assert [p.name for p in target.parent.iterdir()] == ["picture.png"]


def test_result_panel_layout(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
    panel = result_panel(image, anomaly_map, mask, score=0.73, title="bottle/broken 003")
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    assert panel.shape[0] > 20 and panel.shape[1] > 3 * 30
    caption_height = panel.shape[0] - 20
    np.testing.assert_array_equal(panel[caption_height:, :30], image)
    # frames for one GIF keep one size whatever the caption or mask
    assert result_panel(image, anomaly_map).shape == panel.shape


def _frames(image: np.ndarray, anomaly_map: np.ndarray, count: int) -> list[np.ndarray]:
    return [
        result_panel(image, anomaly_map * (k + 1), title=f"frame {k}", vmin=0, vmax=6)
        for k in range(count)
    ]


def test_save_gif_frames_loop_and_atomic(
    tmp_path: Path, image: np.ndarray, anomaly_map: np.ndarray
) -> None:
    target = tmp_path / "results.gif"
    frames = _frames(image, anomaly_map, 3)
    assert save_gif(target, frames, duration_ms=250) == target
    with Image.open(target) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
        assert gif.info["loop"] == 0 and gif.info["duration"] == 250
        assert gif.size == (frames[0].shape[1], frames[0].shape[0])
    assert [p.name for p in tmp_path.iterdir()] == ["results.gif"]


def test_save_gif_downscales(tmp_path: Path, image: np.ndarray, anomaly_map: np.ndarray) -> None:
    frames = _frames(image, anomaly_map, 2)
    with Image.open(save_gif(tmp_path / "small.gif", frames, max_side=40)) as gif:
        assert max(gif.size) == 40 and gif.n_frames == 2


def test_save_gif_rejects_bad_frames(tmp_path: Path, image: np.ndarray) -> None:
    with pytest.raises(FAPMError, match="at least one"):
        save_gif(tmp_path / "a.gif", [])
    with pytest.raises(FAPMError, match="differ"):
        save_gif(tmp_path / "a.gif", [image, image[:10]])
    assert not list(tmp_path.iterdir())


def test_plot_gallery(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
    items = [
        {"image": image, "map": anomaly_map, "mask": mask if k % 2 else None, "title": f"#{k}"}
        for k in range(5)
    ]
    figure = plot_gallery(items, ncols=3, vmin=0.0, vmax=3.0)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 6 and [a.get_title() for a in figure.axes[:5]] == [
        f"#{k}" for k in range(5)
    ]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    with pytest.raises(FAPMError, match="at least one"):
        plot_gallery([])


def test_plot_gallery_displays_in_ipython(image: np.ndarray, anomaly_map: np.ndarray) -> None:
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    shell = interactiveshell.InteractiveShell.instance()
    try:
        figure = plot_gallery([{"image": image, "map": anomaly_map, "mask": None, "title": "t"}])
        data, _ = shell.display_formatter.format(figure)
        assert data["image/png"].startswith(b"\x89PNG")
    finally:
        interactiveshell.InteractiveShell.clear_instance()
