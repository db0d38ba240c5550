"""The explorer widgets, driven programmatically (no browser: see test_browser.py for that)."""

from __future__ import annotations

import dataclasses

import ipywidgets as w
import numpy as np
import pytest
import torch
from conftest import assert_unchanged, snapshot

from surgery_lib.config import ATTENTION_KINDS, REDUNDANT_FEATURES, SurgeryConfig
from surgery_lib.data.shipped import example_images
from surgery_lib.maps.explain import explain
from surgery_lib.model.introspection import attention_maps
from surgery_lib.model.loading import load_clip
from surgery_lib.ui.widgets import (
    AttentionExplorer,
    Explorer,
    MapCache,
    config_controls,
    config_from_controls,
    display_size,
    max_depth,
)


@pytest.fixture(scope="module")
def loaded():
    return load_clip()  # the shipped toy-vit, offline


@pytest.fixture(scope="module")
def items():
    return example_images("composites", limit=3)[1]


def test_controls_are_generated_from_the_config_fields():
    config = SurgeryConfig(attention="kk", dual_path=False, skip_ffn=True, depth=3, feature_surgery=False)
    controls = config_controls(config, depth_max=8)
    assert list(controls) == [f.name for f in dataclasses.fields(SurgeryConfig)]
    for name in ("dual_path", "skip_ffn", "feature_surgery"):
        assert isinstance(controls[name], w.Checkbox) and controls[name].description == name
        assert f"surgery-flag-{name}" in controls[name]._dom_classes
    assert isinstance(controls["depth"], w.IntSlider) and controls["depth"].max == 8
    assert list(controls["attention"].options) == list(ATTENTION_KINDS)
    assert list(controls["redundant_features"].options) == list(REDUNDANT_FEATURES)
    assert config_from_controls(controls) == config
    controls["depth"].value = 8
    controls["redundant_features"].value = "empty_prompt"
    assert config_from_controls(controls) == config.replace(depth=8, redundant_features="empty_prompt")


def test_max_depth_per_tower(loaded):
    assert max_depth(loaded.model) == 8
    assert max_depth(load_clip("toy-rn").model) == 1


def test_cached_maps_equal_explain(loaded, items):
    cache = MapCache(loaded)
    item = items[2]
    for config in (SurgeryConfig.off(), SurgeryConfig.paper()):
        got = cache.maps(item.name, item.image, config, ["dog", "horse", "car"])
        batch = loaded.reference_preprocess(item.image).unsqueeze(0)
        want = explain(
            loaded.model, loaded.tokenizer, batch, ["dog", "horse", "car"], config, display_size(item.image)
        )
        torch.testing.assert_close(got, want.maps[0])
    assert (cache.misses, cache.hits, cache.forwards) == (2, 0, 2)
    cache.maps(item.name, item.image, SurgeryConfig.paper(), ["dog", "horse", "car"])
    assert cache.hits == 1


def test_toggling_a_flag_redraws_and_uses_the_cache(loaded, items, tmp_path):
    before = snapshot(loaded.model)
    explorer = Explorer(loaded, items, ["dog", "horse"], figure_dir=tmp_path)
    first = bytes(explorer.image.value)
    assert first.startswith(b"\x89PNG") and explorer.cache.forwards == 2  # two images shown
    explorer.controls["feature_surgery"].value = False
    assert bytes(explorer.image.value) != first
    assert explorer.config == SurgeryConfig.paper().replace(feature_surgery=False)
    assert explorer.cache.forwards == 2  # feature surgery acts on cached tokens: no forward pass
    explorer.controls["dual_path"].value = False
    assert explorer.cache.forwards == 4
    explorer.controls["dual_path"].value = True
    explorer.controls["feature_surgery"].value = True
    assert bytes(explorer.image.value) == first  # back to the start: drawn from the cache
    assert explorer.cache.forwards == 4 and "forward passes 4" in explorer.status.value
    assert_unchanged(loaded.model, before)


@pytest.mark.slow
def test_explorer_view_controls(loaded, items, tmp_path):
    explorer = Explorer(loaded, items, ["dog"], selected=[items[1].name], figure_dir=tmp_path)
    shown = bytes(explorer.image.value)
    explorer.alpha.value = 0.9
    assert bytes(explorer.image.value) != shown
    explorer.cmap.value = "viridis"
    explorer.picker.value = (items[0].name, items[2].name)
    explorer.labels_box.value = "dog, cat"
    assert explorer.labels == ["dog", "cat"]
    explorer.set_config(SurgeryConfig.off())
    assert explorer.controls["depth"].value == 0 and explorer.config == SurgeryConfig.off()
    paths = explorer.export("grid")
    assert [p.name for p in paths] == ["grid.png", "grid.pdf"] and all(p.is_file() for p in paths)
    explorer.export_button.click()
    assert "explorer.png" in explorer.status.value


def test_bad_labels_are_reported_and_keep_the_last_image(loaded, items):
    explorer = Explorer(loaded, items, ["dog"])
    shown = bytes(explorer.image.value)
    explorer.labels_box.value = " , "
    assert "empty" in explorer.status.value and bytes(explorer.image.value) == shown
    explorer.labels_box.value = "dog " * 40
    assert "too long" in explorer.status.value and bytes(explorer.image.value) == shown


def test_explorer_input_errors(loaded, items):
    with pytest.raises(ValueError, match="at least one image"):
        Explorer(loaded, [], ["dog"])
    with pytest.raises(ValueError, match="not among the images"):
        Explorer(loaded, items, ["dog"], selected=["nope"])
    with pytest.raises(ValueError, match="unique"):
        Explorer(loaded, [items[0], items[0]], ["dog"])
    with pytest.raises(ValueError, match="empty"):
        Explorer(loaded, items, [])
    explorer = Explorer(loaded, {"a": items[0].image}, ["dog"])  # a plain {name: image} mapping works
    assert explorer.picker.value == ("a",)


def test_attention_explorer_follows_the_sliders(loaded, items):
    explorer = AttentionExplorer(loaded, items[2].image, kinds=("qk", "vv"), block=-1)
    h, w_ = explorer.grid
    assert explorer.block.value == 7 and (explorer.row.max, explorer.col.max) == (h - 1, w_ - 1)
    shown = bytes(explorer.image.value)
    explorer.row.value = 0
    assert bytes(explorer.image.value) != shown
    weights, _ = explorer.attention(3, 1 + 2 * w_ + 5)
    batch = loaded.reference_preprocess(items[2].image).unsqueeze(0)
    full, _ = attention_maps(loaded.model, batch, 3, 1 + 2 * w_ + 5, ("qk", "vv"))
    for kind in ("qk", "vv"):
        torch.testing.assert_close(weights[kind], full[kind][0].mean(0)[1:])
        assert np.isclose(float(full[kind][0].mean(0).sum()), 1.0, atol=1e-5)
