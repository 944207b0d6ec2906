"""The tutorial's figure and table helpers (fapm_lib.tutorial.plots, .notebook, .ablations and the
explorer's strip and sweep): figures no wider than the book's column, in rows of at most four
panels, every heatmap with a labelled colour bar; the tables the notebooks print."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fapm_lib.config import FAPMConfig
from fapm_lib.data.mvtec import MVTecDataset
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.tutorial import plots
from fapm_lib.tutorial.ablations import Variant, ablation_figure, shown_rows
from fapm_lib.tutorial.explorer import Explorer, scale_bar, sweep_figure
from fapm_lib.tutorial.notebook import (
    alignment_table,
    example_groups,
    graph_io_rows,
    sidecar_rows,
    threshold_table,
)
from tests.helpers import build_mvtec_tree


def _colour_bars(figure) -> list[str]:
    """The labels of a figure's colour bars (the axes matplotlib adds for them)."""
    return [ax.get_ylabel() for ax in figure.axes if ax.get_label() == "<colorbar>"]


def _check_width(figure) -> None:
    assert figure.get_figwidth() <= plots.FIGURE_WIDTH + 1e-9, figure.get_figwidth()


def _rows_of_panels(figure) -> int:
    """The most panels (image axes, colour bars aside) side by side in one row."""
    tops = [round(ax.get_position().y1, 2) for ax in figure.axes if ax.get_label() != "<colorbar>" and ax.axison]
    return max(tops.count(top) for top in set(tops)) if tops else 0


def test_panels_hold_at_most_four_a_row_and_hide_the_rest() -> None:
    figure, axes = plots.panels(7, ncols=6)
    _check_width(figure)
    assert len(axes) == 7 and len(figure.axes) == 8  # two rows of four, the eighth cell hidden
    assert not figure.axes[-1].axison


def test_heatmaps_and_overlays_carry_a_labelled_colour_bar() -> None:
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    figure, axes = plots.panels(2, ncols=2)
    plots.heatmap(axes[0], torch.rand(4, 4), "distances", "L2 distance")
    shown = plots.overlay_axes(axes[1], image, torch.rand(16, 16), 0.0, 1.0, mask=torch.ones(16, 16))
    plots.colorbar(figure, shown, axes[1], "anomaly score")
    assert _colour_bars(figure) == ["L2 distance", "anomaly score"]
    assert figure.axes[-1].collections[0].get_alpha() in (None, 1.0)  # opaque, though the map is not


def test_grouped_gallery_labels_its_rows_and_shares_one_colour_bar() -> None:
    item = {"image": np.zeros((16, 16, 3), dtype=np.uint8), "map": torch.rand(16, 16), "mask": None,
            "title": "good, score 1.0"}
    figure = plots.grouped_gallery({"best detections": [item] * 3, "likeliest false alarms": [item],
                                    "worst misses": []}, 0.0, 1.0)
    _check_width(figure)
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert texts == ["best detections", "likeliest false alarms"]  # an empty group is left out
    assert _colour_bars(figure) == ["anomaly score"]


def test_the_step_figures_have_colour_bars_and_rows_of_at_most_four() -> None:
    maps = [torch.rand(1, 8, 8, 1), torch.rand(1, 4, 4, 1)]
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    figures = [
        plots.pooling_figure([torch.rand(1, 3, 8, 8)] * 2, [torch.rand(1, 3, 8, 8)] * 2, (8, 16)),
        plots.search_steps_figure(image, maps, (8, 16), torch.rand(1, 8, 8, 1), torch.rand(1, 32, 32),
                                  torch.zeros(32, 32)),
        plots.planted_figure(image, {"a": torch.rand(1, 8, 8, 1), "b": torch.rand(1, 8, 8, 1)}, (2, 2, 2)),
        plots.region_grid_figure(image, (8, 4), (8, 16), 2, 1),
        plots.greedy_steps_figure(np.random.rand(20, 2), np.arange(20), np.linspace(2, 1, 20), [1, 2, 3, 5, 10]),
        plots.stage_bars({"FAPM": {"backbone": 1.0, "search": 0.1, "post-processing": 0.1}}),
        plots.threshold_figure(np.random.rand(20), np.random.rand(10), np.array([0, 1] * 5), 0.5),
    ]
    for figure in figures:
        _check_width(figure)
        assert _rows_of_panels(figure) <= 4
    assert _colour_bars(figures[0]) == ["vector length |f|"] * 2
    assert _colour_bars(figures[1]) == ["L2 distance", "L2 distance", "sum of distances", "anomaly score"]
    assert _colour_bars(figures[2]) == ["sum of distances", "sum of distances", "difference"]


def test_alignment_table_letters_the_coarse_cells_and_marks_where_the_mappings_differ() -> None:
    table = alignment_table(28, 14, 7, region=24).splitlines()
    assert table[0] == "| fine row | column 0 | column 1 | column 2 | column 3 |"
    assert table[2] == "| 0 | A / A | A / A | B / **A** | B / **A** |"
    assert table[3] == "| 1 | A / **B** | A / **B** | B / B | B / B |"
    assert sum(line.count("**") // 2 for line in table) == 8  # half of a region's 16 fine cells


def test_example_groups_best_false_alarms_and_misses() -> None:
    scores = torch.tensor([9.0, 1.0, 5.0, 7.0, 2.0, 3.0])
    labels = torch.tensor([1, 1, 0, 0, 1, 0])
    groups = example_groups(scores, labels, per_group=2)
    assert groups == {"best detections": [0, 4], "likeliest false alarms": [3, 2], "worst misses": [1]}


def test_threshold_table_follows_the_calibration_rule() -> None:
    heldout = np.arange(100, dtype=float)
    rows = threshold_table(heldout, np.array([50.0, 99.5, 10.0]), np.array([0, 1, 1]), (0.2, 0.01))
    assert rows[0]["threshold"] == pytest.approx(np.quantile(heldout, 0.8))
    assert rows[0]["held-out false alarms"] == 0.2 and rows[0]["test false alarms"] == 0.0
    assert rows[0]["test misses"] == 0.5
    assert threshold_table(heldout, np.array([1.0]), np.array([0]), (0.1,))[0]["test misses"] is None


def test_sidecar_and_graph_tables_show_shapes_not_traced_names() -> None:
    sidecar = {"input": {"name": "image", "dtype": "uint8", "shape": ["batch", 224, 224, 3]},
               "preprocessing": {"resize": 256, "rule": "a long sentence", "mean": [0.5, 0.5, 0.5]},
               "outputs": {"patch_scores": {"shape": ["batch", 28, 28], "dtype": "float32"}},
               "calibration": {"image_threshold": 36.198396}, "versions": {"fapm": "0.2.0", "torch": "2"},
               "model": {"config": {"ignored": True}}}
    rows = sidecar_rows(sidecar)
    values = {(r["section"], r["entry"]): r["value"] for r in rows}
    assert values[("outputs", "patch_scores")] == "float32 [batch, 28, 28]"
    assert values[("calibration", "image_threshold")] == "36.2" and ("preprocessing", "rule") not in values
    assert values[("versions", "")] == "fapm 0.2.0, torch 2" and not any(r["section"] == "model" for r in rows)

    class Node:
        def __init__(self, name, type_, shape):
            self.name, self.type, self.shape = name, type_, shape

    class Session:
        def get_inputs(self):
            return [Node("image", "tensor(uint8)", ["batch", 224, 224, 3])]

        def get_outputs(self):
            return [Node("patch_scores", "tensor(float)", ["batch", "Gatherpatch_scores_dim_1",
                                                           "Gatherpatch_scores_dim_2"])]

    io = graph_io_rows(Session(), sidecar)
    assert io[1] == {"": "output", "name": "patch_scores", "type": "tensor(float)", "shape": "[batch, 28, 28]"}


def test_ablation_rows_and_figure() -> None:
    variants = [Variant("FAPM defaults"), Variant("fixed sampling", {"sampling": "fixed"})]
    rows = [{"data": "built-in", "category": c, "variant": v.name, "image AUROC": 0.9, "pixel AUROC": 0.99,
             "search ms/image": 2.0, "memory MB": 1.0, "coreset s": 0.5, "refused": ""}
            for c in ("vial", "tablet") for v in variants]
    assert list(shown_rows(rows)[0]) == ["category", "variant", "image AUROC", "pixel AUROC", "search ms/image",
                                         "memory MB", "coreset s"]
    figure = ablation_figure(rows, variants)
    _check_width(figure)
    assert _rows_of_panels(figure) == 2


@pytest.fixture(scope="module")
def explorer(tmp_path_factory: pytest.TempPathFactory) -> Explorer:
    root = build_mvtec_tree(tmp_path_factory.mktemp("strip"), n_train=8,
                            test_counts={"good": 2, "crack": 2, "dent": 1})
    model = FAPM(FAPMConfig(resize=64, crop_size=64, grid=4, k=1, batch_size=8))
    train = MVTecDataset(root, "widget", "train", model.transform)
    test = MVTecDataset(root, "widget", "test", model.transform)
    return Explorer.from_datasets(model, train, test, n_examples=3, pixel_stride=2)


def test_the_explorer_strip_shows_settings_side_by_side_on_one_scale(explorer: Explorer) -> None:
    figure, views = explorer.strip([(0.1, 2.0), (0.5, 2.0)])
    _check_width(figure)
    assert [v.ratio for v in views] == [0.1, 0.5] and views[1].memory_vectors > views[0].memory_vectors
    assert _colour_bars(figure) == ["anomaly score (fused nearest distance)"]
    titles = [ax.get_title() for ax in figure.axes[:2]]
    assert titles[0].startswith("r = 0.1, a = 2\n") and "vectors" in titles[0]


def test_the_sweep_measures_every_setting_and_plots_both_aurocs(explorer: Explorer) -> None:
    rows = explorer.sweep((0.1, 0.5), (1.0, 2.0))
    assert [(r["a"], r["r"]) for r in rows] == [(1.0, 0.1), (1.0, 0.5), (2.0, 0.1), (2.0, 0.5)]
    assert all(0.0 <= r["image AUROC"] <= 1.0 for r in rows)
    figure = sweep_figure(rows)
    _check_width(figure)
    assert [ax.get_ylabel() for ax in figure.axes] == ["pixel AUROC, %", "image AUROC, %"]


def test_scale_bar_spans_the_overlays_range() -> None:
    bar = scale_bar(100, 10.0, 30.0)
    assert bar.shape == (100, 16 + 56, 3) and bar.dtype == np.uint8
    assert tuple(bar[5, 0]) != tuple(bar[-6, 0])  # the top colour (vmax) is not the bottom one


def test_roc_and_heldout_figures() -> None:
    from types import SimpleNamespace

    result = SimpleNamespace(scores=torch.tensor([0.1, 0.9, 0.4, 0.8]), labels=torch.tensor([0, 1, 0, 1]),
                             maps=torch.rand(4, 8, 8), masks=torch.rand(4, 8, 8) > 0.5,
                             metrics={"image_auroc": 1.0, "pixel_auroc": None})
    figure = plots.roc_figure({"FAPM": result, "PatchCore": result})
    _check_width(figure)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in figure.axes]
    assert legends[0] == ["FAPM (AUROC 1.000)", "PatchCore (AUROC 1.000)"] and "n/a" in legends[1][0]
    histogram = plots.heldout_histogram(np.random.rand(30), 0.9, 0.01)
    _check_width(histogram)
    assert histogram.axes[0].get_xlabel() == "raw image score"
