"""The widget explorer: refits from cached maps only, matches the library's memories, reports
invalid settings in the view (and the UI) instead of raising."""
from __future__ import annotations

import io
import re

import pytest
import torch
from PIL import Image

from fapm_lib.config import FAPMConfig
from fapm_lib.data.mvtec import MVTecDataset
from fapm_lib.detectors.fapm import FAPM
from fapm_lib.errors import ConfigError
from fapm_lib.method.backbone import FeatureExtractor
from fapm_lib.method.coreset import GreedyKCenter
from fapm_lib.method.memory_builders import build_layer_memory
from fapm_lib.tutorial.explorer import Explorer, build_widgets, choose_examples, prefix_memory, status_text
from tests.helpers import build_mvtec_tree

UPDATED = re.compile(r"updated in \d+\.\d\d s$")


@pytest.fixture(scope="module")
def explorer(tmp_path_factory: pytest.TempPathFactory) -> Explorer:
    """Tiny noise data: 8 train images, 64 px input -> maps 8x8 and 4x4, grid 4 (valid 1, 2, 4)."""
    root = build_mvtec_tree(tmp_path_factory.mktemp("explorer"), n_train=8,
                            test_counts={"good": 2, "crack": 2, "dent": 1})
    model = FAPM(FAPMConfig(resize=64, crop_size=64, grid=4, k=1, batch_size=8))
    train = MVTecDataset(root, "widget", "train", model.transform)
    test = MVTecDataset(root, "widget", "test", model.transform)
    return Explorer.from_datasets(model, train, test, n_examples=3, pixel_stride=2)


@pytest.fixture
def no_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, images):
        raise AssertionError("the backbone ran")

    monkeypatch.setattr(FeatureExtractor, "forward", refuse)


@pytest.mark.parametrize("sampling", ["adaptive", "fixed"])
@pytest.mark.parametrize(("ratio", "multiplier"), [(0.1, 2.0), (0.25, 3.0), (0.05, 1.0)])
def test_prefix_memory_equals_library_memory(sampling: str, ratio: float, multiplier: float) -> None:
    gen = torch.Generator().manual_seed(1)
    spread = torch.tensor([0.2, 3.0, 0.5, 2.0, 0.3, 4.0])[:, None, None]
    features = torch.randn(6, 60, 5, generator=gen) * spread
    greedy = GreedyKCenter(features)
    greedy.extend(50)  # a run already longer than needed is only sliced
    for run in (GreedyKCenter(features), greedy):
        ours = prefix_memory(features, run, ratio, multiplier, sampling)
        ref = build_layer_memory(features, ratio, multiplier, sampling)
        assert torch.equal(ours.far, ref.far) and torch.allclose(ours.radii, ref.radii)
        assert torch.equal(ours.bank_sizes(), ref.bank_sizes())
        for a, b in zip(ours.groups, ref.groups, strict=True):
            assert torch.equal(a.regions, b.regions) and torch.equal(a.bank, b.bank)


def test_update_changes_maps_with_ratio(explorer: Explorer) -> None:
    small = explorer.update(0.05, 1.0, 4, 1)
    large = explorer.update(0.5, 1.0, 4, 1)
    assert small.error is None and large.error is None
    assert large.memory_vectors > small.memory_vectors
    assert small.maps.shape == (3, 64, 64) and small.scores.shape == (3,)
    assert not torch.equal(small.maps, large.maps)
    # a bigger memory only adds candidates: no nearest distance can grow
    assert torch.all(large.scores <= small.scores + 1e-5)
    assert 0.0 <= small.image_auroc <= 1.0 and 0.0 <= small.pixel_auroc <= 1.0
    assert set(small.timings) == {"coreset", "search", "metrics", "total"}


def test_update_matches_a_fresh_fit(explorer: Explorer) -> None:
    view = explorer.update(0.2, 2.0, 2, 1)
    config = explorer.config.replace(coreset_ratio=0.2, adaptive_multiplier=2.0, grid=2, k=1)
    ref = FAPM(config, extractor=explorer.model.extractor).fit_maps(explorer.train_maps)
    expected = ref.predict_maps(explorer.test_maps)
    assert torch.allclose(view.maps, expected.anomaly_map[explorer.examples])
    assert view.memory_vectors == ref.memory_size()["vectors"]


def test_update_never_runs_the_backbone(explorer: Explorer, no_backbone: None) -> None:
    for setting in [(0.1, 2.0, 4, 1), (0.3, 1.5, 2, 2), (0.2, 4.0, 1, 1), (0.1, 2.0, 4, 1)]:
        view = explorer.update(*setting)
        assert view.error is None, view.error
        assert explorer.render_png(view)


def test_grid_options_divide_both_maps(explorer: Explorer) -> None:
    sides = [s for m in explorer.train_maps for s in m.shape[-2:]]
    assert sides == [8, 8, 4, 4]
    assert explorer.grid_options == [1, 2, 4]
    view = explorer.update(0.1, 2.0, 3, 1)
    assert view.maps is None and "grid=3" in view.error


def test_k_above_bank_is_an_error_in_the_view(explorer: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explorer, "config", explorer.config.replace(image_score="reweighted", k=2))  # k acts
    view = explorer.update(0.05, 1.0, 4, 8)  # layer-1 banks: ceil(0.05 * 8) = 1 vector
    assert view.maps is None and view.image_auroc is None
    assert "k=8" in view.error and "smallest memory bank" in view.error
    assert UPDATED.search(status_text(view, 0.123))
    assert status_text(view, 0.123).startswith("error: k=8")
    with pytest.raises(ConfigError):
        explorer.render_png(view)


def test_strip_keeps_a_refused_setting_as_a_column_with_its_refusal(explorer: Explorer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """k=2 with the re-weighted score: ratio 0.05 keeps 1 vector in the smallest bank (refused), 0.5 keeps 4."""
    monkeypatch.setattr(explorer, "config", explorer.config.replace(image_score="reweighted", k=2))
    fig, views = explorer.strip([(0.05, 1.0), (0.5, 1.0)], grid=4, k=2)
    assert "k=2 exceeds" in views[0].error and views[1].error is None
    axes = fig.axes[:-1]  # the last one is the colour bar
    assert len(axes) == 3 * 2
    refused = [ax for ax in axes if "refused" in ax.get_title()]
    assert len(refused) == 1 and any("k=2 exceeds" in t.get_text().replace("\n", " ") for t in refused[0].texts)
    assert sum(bool(ax.images) for ax in axes) == 3  # only the accepted column draws maps
    with pytest.raises(ConfigError, match="every setting is refused.*k=2 exceeds"):
        explorer.strip([(0.05, 1.0)], grid=4, k=2)


def test_render_png_is_one_tile_per_example(explorer: Explorer) -> None:
    png = explorer.render_png(explorer.update(0.1, 2.0, 4, 1))
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG"
    assert picture.width == 3 * 64 + 3 * 4 + (16 + 56) and picture.height > 64  # tiles, gaps, colour bar


def test_choose_examples_good_first_then_round_robin() -> None:
    labels = [0, 0, 1, 1, 1, 1]
    types = ["good", "good", "crack", "crack", "dent", "hole"]
    assert choose_examples(labels, types, 4) == [0, 2, 4, 5]
    assert choose_examples(labels, types, 5) == [0, 2, 4, 5, 3]
    assert choose_examples(labels, types, 10) == [0, 2, 4, 5, 3]


def _by_class(widget, name: str):
    if name in getattr(widget, "_dom_classes", ()):
        return widget
    for child in getattr(widget, "children", ()):
        found = _by_class(child, name)
        if found is not None:
            return found
    return None


def test_widgets_contract_and_error_display(explorer: Explorer, no_backbone: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(explorer, "config", explorer.config.replace(image_score="reweighted", k=2))  # k acts
    panel = build_widgets(explorer, ratio=0.25, multiplier=2.0, k=2)
    parts = {name: _by_class(panel, f"fapm-{name}")
             for name in ("explorer", "heatmap", "ratio", "multiplier", "grid", "k", "status")}
    assert all(part is not None for part in parts.values()), parts
    assert list(parts["grid"].options) == explorer.grid_options
    first_png, status = parts["heatmap"].value, parts["status"].value
    assert first_png and UPDATED.search(status) and "image AUROC" in status

    parts["ratio"].value = 0.5
    assert parts["heatmap"].value != first_png and UPDATED.search(parts["status"].value)
    shown = parts["heatmap"].value

    parts["ratio"].value = 0.25
    parts["multiplier"].value = 1.0
    valid = parts["heatmap"].value
    assert valid != shown
    parts["k"].value = 8  # more neighbours than the smallest bank holds
    assert parts["status"].value.startswith("error: k=8") and UPDATED.search(parts["status"].value)
    assert not parts["k"].disabled  # the re-weighted score reads k neighbours
    assert parts["heatmap"].value == valid  # the last valid picture stays
    parts["k"].value = 2
    assert "image AUROC" in parts["status"].value
