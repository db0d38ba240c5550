"""The explorer widgets, driven programmatically (no browser: see test_browser.py for that)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import ipywidgets as w
import numpy as np
import pytest
import torch
from conftest import assert_unchanged, snapshot
from PIL import Image

from surgery_lib import config as config_module
from surgery_lib.config import ARCHITECTURE_FIELDS, ATTENTION_KINDS, REDUNDANT_FEATURES, SurgeryConfig
from surgery_lib.eval.metrics import map_scores
from surgery_lib.maps.explain import explain
from surgery_lib.methods import GRADIENT_METHODS, METHODS, method_names
from surgery_lib.model.introspection import attention_maps
from surgery_lib.ui import viz, widgets
from surgery_lib.ui.widgets import (
    CUSTOM,
    AttentionExplorer,
    CaptionExplorer,
    Explorer,
    MapCache,
    SamExplorer,
    config_controls,
    config_from_controls,
    display_size,
    max_depth,
)


@pytest.fixture(scope="module")
def loaded(toy_vit):
    return toy_vit  # the shipped toy-vit (fast), offline; shared by the session


@pytest.fixture(scope="module")
def source(composites3):
    return composites3  # (31 classes, [nut; bird; pepper, tank, bird])


@pytest.fixture(scope="module")
def items(source):
    return source[1]


def _png(widget) -> bytes:
    return bytes(widget.value)


def _explained(loaded, item, labels, method, vocabulary=None):
    batch = loaded.reference_preprocess(item.image).unsqueeze(0)
    return explain(
        loaded.model,
        loaded.tokenizer,
        batch,
        labels,
        method=method,
        size=display_size(item.image),
        vocabulary=vocabulary,
    )


def test_controls_are_generated_from_the_config_fields():
    config = SurgeryConfig(attention="kk", dual_path=False, skip_ffn=True, depth=3, feature_surgery=False)
    controls = config_controls(config, depth_max=8)
    assert list(controls) == [f.name for f in dataclasses.fields(SurgeryConfig) if f.name != "forward"]
    for name in ("dual_path", "skip_ffn", "feature_surgery"):
        assert isinstance(controls[name], w.Checkbox) and controls[name].description == name
        assert f"surgery-flag-{name}" in controls[name]._dom_classes
    assert isinstance(controls["depth"], w.IntSlider) and controls["depth"].max == 8
    bounds = {
        name: (controls[name].min, controls[name].max) for name in ("self_attn_iters", "spatial_prior_sigma")
    }
    assert bounds == {"self_attn_iters": (0, 5), "spatial_prior_sigma": (0, 10)}  # not capped at depth_max
    assert f"surgery-control-{'attention'}" in controls["attention"]._dom_classes
    assert list(controls["attention"].options) == list(ATTENTION_KINDS)
    assert list(controls["redundant_features"].options) == list(REDUNDANT_FEATURES)
    assert config_from_controls(controls) == config
    controls["depth"].value = 8
    controls["redundant_features"].value = "empty_prompt"
    assert config_from_controls(controls) == config.replace(depth=8, redundant_features="empty_prompt")


def test_max_depth_per_tower(loaded, toy_rn):
    assert max_depth(loaded.model) == 8
    assert max_depth(toy_rn.model) == 1


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


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
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
    assert [p.name for p in paths] == ["grid.png", "grid.pdf", "grid.json"] and all(
        p.is_file() for p in paths
    )
    assert [p.name for p in explorer.export("grid")] == ["grid-2.png", "grid-2.pdf", "grid-2.json"]
    explorer.export_button.click()
    stem = "seen_instances_00000-seen_instances_00002_dog-cat_raw"  # images, labels, method
    assert f"{stem}.png" in explorer.status.value and (tmp_path / f"{stem}.json").is_file()


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


# ---- the method dropdown, the config controls, the cache ------------------------------------------------


def test_the_cache_keys_on_every_architecture_field(loaded, items):
    assert widgets.ARCHITECTURE_FIELDS is config_module.ARCHITECTURE_FIELDS
    cache, item = MapCache(loaded), items[2]
    base = METHODS["clearclip"]
    first = cache.maps(item.name, item.image, base, ["pepper", "tank"])
    for n, change in enumerate(
        [
            {"keep_residual": True},
            {"pos_embed_interp": "bilinear"},
            {"attention": "kk", "spatial_prior_sigma": 2},
        ]
    ):
        other = cache.maps(item.name, item.image, base.replace(**change), ["pepper", "tank"])
        assert cache.forwards == n + 2  # a new forward pass for each field changed
        want = _explained(loaded, item, ["pepper", "tank"], base.replace(**change)).maps[0]
        torch.testing.assert_close(other, want)
    assert not torch.allclose(
        first, cache.maps(item.name, item.image, base.replace(keep_residual=True), ["pepper", "tank"])
    )
    assert set(ARCHITECTURE_FIELDS) >= {
        "keep_residual",
        "attn_temperature",
        "self_attn_iters",
        "spatial_prior_sigma",
    }


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_the_method_dropdown_sets_the_controls_which_stay_editable(loaded, items, tmp_path):
    explorer = Explorer(
        loaded, items, ["pepper", "tank"], selected=[items[2].name], vocabulary=["bird", "nut"]
    )
    assert list(explorer.method.options) == [CUSTOM, *method_names()] and explorer.method.value == "surgery"
    seen = {bytes(explorer.image.value)}
    for name in METHODS:
        explorer.method.value = name
        assert explorer.config == METHODS[name] and explorer.method.value == name, name
        assert "error" not in explorer.status.value and "color:#b00" not in explorer.status.value
        seen.add(bytes(explorer.image.value))
    assert len(seen) == len(METHODS)  # every preset draws something else
    explorer.method.value = "clearclip"
    explorer.controls["skip_ffn"].value = False  # an edit: no preset matches any more
    assert explorer.method.value == CUSTOM and explorer.config == METHODS["clearclip"].replace(skip_ffn=False)
    assert not explorer.controls["skip_ffn"].disabled
    explorer.controls["skip_ffn"].value = True  # back to the preset: its name again
    assert explorer.method.value == "clearclip"
    explorer.set_config(SurgeryConfig.paper().replace(feature_surgery=False))
    assert explorer.method.value == "surgery-no-fs"


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_gradient_methods_disable_the_config_controls(loaded, items):
    item = items[2]
    explorer = Explorer(loaded, [item], ["pepper", "tank"], vocabulary=["bird", "nut"])
    shown = _png(explorer.image)
    explorer.method.value = "gradcam"
    assert all(control.disabled for control in explorer.controls.values())
    assert _png(explorer.image) != shown and "gradient method" in explorer.status.value
    (row,) = explorer.results()
    want = _explained(loaded, item, ["pepper", "tank"], "gradcam", ["pepper", "tank", "bird", "nut"])
    torch.testing.assert_close(row.maps, want.maps[0])
    torch.testing.assert_close(row.probabilities, want.image_scores[0])
    assert explorer.method_config == GRADIENT_METHODS["gradcam"]
    explorer.method.value = CUSTOM  # the controls' config again, editable
    assert not explorer.controls["feature_surgery"].disabled and explorer.method_config == explorer.config
    gradient = Explorer(loaded, [item], ["pepper"], method="chefer")  # a gradient method at start
    assert gradient.method.value == "chefer" and gradient.controls["depth"].disabled


@pytest.mark.slow  # > 1 s: make test runs it, make test-fast does not
def test_a_refused_config_is_reported_and_keeps_the_last_image(loaded, items):
    explorer = Explorer(loaded, [items[2]], ["pepper", "tank"], method="gem", vocabulary=["bird"])
    shown = _png(explorer.image)
    explorer.controls["attention"].value = "vv"  # GEM's iterations need attention='gem'
    assert "self_attn_iters=1 needs attention=&#x27;gem&#x27;" in explorer.status.value
    assert _png(explorer.image) == shown and explorer.method.value == CUSTOM
    assert not explorer.controls["self_attn_iters"].disabled  # set, so that it can be undone
    explorer.controls["self_attn_iters"].value = 0
    assert _png(explorer.image) != shown and "color:#b00" not in explorer.status.value
    assert explorer.controls["self_attn_iters"].disabled  # 0 and not GEM: it does nothing


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_controls_that_do_nothing_are_disabled(loaded, items, toy_rn):
    explorer = Explorer(loaded, [items[2]], ["pepper"], vocabulary=["bird"])
    assert not explorer.controls["attention"].disabled and explorer.controls["pos_embed_interp"].disabled
    explorer.controls["depth"].value = 0
    for name in ARCHITECTURE_FIELDS:
        if name != "forward":  # a method's own forward has no control (it comes with the method)
            assert explorer.controls[name].disabled == (name != "depth"), name
    assert "depth 0: no architecture surgery" in explorer.status.value
    explorer.controls["feature_surgery"].value = False
    assert explorer.controls["redundant_features"].disabled
    explorer.method.value = "surgery"
    assert (
        not explorer.controls["dual_path"].disabled and not explorer.controls["redundant_features"].disabled
    )

    resnet = Explorer(toy_rn, [items[2]], ["pepper"], vocabulary=["bird"])
    assert resnet.controls["depth"].max == 1 and resnet.method.value == "surgery"  # depth 6 shown as 1
    for name in ("dual_path", "skip_ffn", "keep_residual", "attn_temperature", "spatial_prior_sigma"):
        assert resnet.controls[name].disabled, name
    assert not resnet.controls["attention"].disabled
    shown = _png(resnet.image)
    resnet.method.value = "sclip"  # no ResNet variant: the error, the last image
    assert "ViT towers only" in resnet.status.value and _png(resnet.image) == shown


# ---- the vocabulary, the class-token probabilities, the ground truth --------------------------------


@pytest.mark.slow  # > 1 s: make test runs it, make test-fast does not
def test_a_vocabulary_ends_the_two_label_complement(loaded, items, source):
    classes, item = source[0], items[2]
    explorer = Explorer(loaded, [item], ["pepper", "tank"])
    assert explorer.vocabulary == classes  # the image source's class list by default
    assert explorer.class_list[:2] == ["pepper", "tank"] and len(explorer.class_list) == len(classes)
    (row,) = explorer.results()
    ones = torch.ones(row.maps.shape[:2])
    assert not torch.allclose(row.maps[..., 0] + row.maps[..., 1], ones, atol=1e-3)
    torch.testing.assert_close(
        row.maps, _explained(loaded, item, ["pepper", "tank"], "surgery", classes).maps[0]
    )
    assert "two classes" not in explorer.status.value
    assert explorer.figure().axes[2].get_title() == "pepper"  # only the labels are drawn

    shown = _png(explorer.image)
    explorer.vocabulary_box.value = "pepper, tank"  # exactly the two labels: complements, and a warning
    (row,) = explorer.results()
    torch.testing.assert_close(row.maps[..., 0] + row.maps[..., 1], ones, atol=1e-4, rtol=0)
    assert _png(explorer.image) != shown and "the vocabulary has two classes" in explorer.status.value
    explorer.vocabulary_box.value = ""  # empty: the labels alone (the same two classes)
    assert explorer.class_list == ["pepper", "tank"] and "two classes" in explorer.status.value
    explorer.vocabulary_box.value = "pepper, tank, bird"
    (row,) = explorer.results()
    assert not torch.allclose(row.maps[..., 0] + row.maps[..., 1], ones, atol=1e-3)
    assert "two classes" not in explorer.status.value


@pytest.mark.slow  # > 1 s: make test runs it, make test-fast does not
def test_probabilities_and_scores_are_drawn_beside_the_maps(loaded, items, source):
    classes, item = source[0], items[2]
    labels = ["pepper", "tank", "car"]  # car: no mask in this image, no scores
    explorer = Explorer(loaded, [item], labels)
    (row,) = explorer.results()
    want = _explained(loaded, item, labels, "surgery", classes)
    torch.testing.assert_close(row.probabilities, want.image_scores[0])
    assert set(row.scores) == {"pepper", "tank"}
    h, w_ = display_size(item.image)
    mask = np.asarray(Image.fromarray(item.masks["tank"]).resize((w_, h), Image.NEAREST))
    assert row.scores["tank"] == map_scores(row.maps[..., 1], torch.from_numpy(mask.copy()))
    fig = explorer.figure()
    titles = [ax.get_title() for ax in fig.axes]
    assert "image" in titles and any(t.startswith("class token p") for t in titles)
    assert any("IoU" in ax.get_xlabel() for ax in fig.axes)  # the live metrics under the maps
    assert sum(len(ax.collections) for ax in fig.axes) >= 2  # the ground-truth outlines
    viz.close(fig)
    explorer.controls["dual_path"].value = False  # the class token leaves vanilla CLIP: p moves
    (single,) = explorer.results()
    assert not torch.allclose(single.probabilities, row.probabilities)


# ---- A/B and exports ------------------------------------------------------------------------------------


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_ab_mode_shows_a_second_method_beside(loaded, items, tmp_path):
    explorer = Explorer(
        loaded, [items[2]], ["pepper", "tank"], vocabulary=["bird", "nut"], figure_dir=tmp_path
    )
    assert explorer.image_b.layout.display == "none" and explorer.method_b.disabled
    shown = _png(explorer.image)
    explorer.ab.value = True
    assert explorer.method_b.value == "raw" and not explorer.method_b.disabled
    assert explorer.image_b.layout.display is None and _png(explorer.image_b).startswith(b"\x89PNG")
    assert _png(explorer.image) != shown  # A's figure is titled "A · ..." now
    raw = _png(explorer.image_b)
    explorer.method_b.value = "clearclip"
    assert _png(explorer.image_b) != raw and "B: ClearCLIP (clearclip)" in explorer.status.value
    explorer.controls["feature_surgery"].value = False
    explorer.pin()  # B := A's current config
    assert explorer.method_b.value == widgets.PINNED and explorer.results("B")[0].maps.equal(
        explorer.results()[0].maps
    )
    explorer.method.value = "surgery"
    assert not explorer.results("B")[0].maps.equal(explorer.results()[0].maps)
    paths = explorer.export()
    assert [p.suffix for p in paths] == [".png", ".pdf", ".json"] * 2
    a, b = (json.loads(p.read_text()) for p in paths[2::3])
    assert (a["method"], a["view"], b["method"], b["view"]) == ("surgery", "A", "surgery-no-fs", "B")
    assert b["config"] == dataclasses.asdict(METHODS["surgery-no-fs"])
    explorer.ab.value = False
    assert explorer.image_b.layout.display == "none"


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_every_export_is_a_new_file_with_a_sidecar(loaded, items, tmp_path, monkeypatch):
    from surgery_lib.model.shipped import weights_path
    from surgery_lib.ui import export

    monkeypatch.setattr(export, "_library_version", lambda: "9.9.9")
    explorer = Explorer(loaded, [items[2]], ["pepper", "tank"], vocabulary=["bird"], figure_dir=tmp_path)
    first, second = explorer.export(), explorer.export()
    assert [p.name for p in first] == [
        f"seen_instances_00002_pepper-tank_surgery.{s}" for s in ("png", "pdf", "json")
    ]
    assert [p.name for p in second] == [
        f"seen_instances_00002_pepper-tank_surgery-2.{s}" for s in ("png", "pdf", "json")
    ]
    record = json.loads(first[2].read_text())
    digest = hashlib.sha256(weights_path("toy-vit").read_bytes()).hexdigest()
    assert record["model"] == "toy-vit" and record["weights"]["sha256"] == digest
    assert record["config"] == dataclasses.asdict(SurgeryConfig.paper()) and record["method"] == "surgery"
    assert record["labels"] == ["pepper", "tank"] and record["vocabulary"] == ["pepper", "tank", "bird"]
    assert record["image"] == items[2].name and record["library_version"] == "9.9.9"
    assert record["files"] == [p.name for p in first[:2]]
    assert {s["label"] for s in record["scores"]} == {"pepper", "tank"}
    explorer.controls["depth"].value = 3
    custom = explorer.export()[0].name
    assert custom.startswith("seen_instances_00002_pepper-tank_custom-") and custom.endswith(".png")
    assert export._library_version() == "9.9.9"
    monkeypatch.undo()
    assert export._library_version() != ""  # the installed version, or "unknown"


# ---- the attention, caption and SAM explorers -----------------------------------------------------------


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_attention_explorer_heads_class_token_images_and_kinds(loaded, items):
    explorer = AttentionExplorer(loaded, items, kinds=("qk", "identity", "gem"), block=-1, query=(1, 2))
    assert list(explorer.picker.options) == [item.name for item in items]
    assert list(explorer.kind_boxes) == ["qk", "identity", "gem", "vv", "qq", "kk", "qq+kk"]
    assert explorer.kinds == ("qk", "identity", "gem")
    h, w_ = explorer.grid
    weights, _ = explorer.attention(7, 1 + 1 * w_ + 2)
    identity = torch.zeros(h * w_)
    identity[1 * w_ + 2] = 1.0
    torch.testing.assert_close(weights["identity"], identity)  # each token keeps its own value
    views = {_png(explorer.image)}
    explorer.head.value = 1
    views.add(_png(explorer.image))
    explorer.cls_query.value = True  # the class token as query: the sliders do nothing
    assert explorer.row.disabled and "class token" in explorer.status.value
    views.add(_png(explorer.image))
    explorer.picker.value = items[2].name
    views.add(_png(explorer.image))
    explorer.kind_boxes["vv"].value = True
    views.add(_png(explorer.image))
    assert len(views) == 5
    batch = loaded.reference_preprocess(items[2].image).unsqueeze(0)
    full, _ = attention_maps(loaded.model, batch, 3, 0, ("gem", "vv"))
    weights, _ = explorer.attention(3, 0, head=1)
    for kind in ("gem", "vv"):
        torch.testing.assert_close(weights[kind], full[kind][0][1][1:])
    for kind in ("qk", "identity", "vv"):
        explorer.kind_boxes[kind].value = False
    shown = _png(explorer.image)
    explorer.kind_boxes["gem"].value = False  # none left
    assert "at least one attention kind" in explorer.status.value and _png(explorer.image) == shown
    cls_start = AttentionExplorer(loaded, items[0].image, query="cls", head=0)
    assert cls_start.cls_query.value and cls_start.picker.layout.display == "none"


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_caption_explorer_switches_method_and_image(loaded, items):
    explorer = CaptionExplorer(loaded, items, method="raw")
    assert explorer.caption_box.value == items[0].describe() and explorer.method.value == "raw"
    assert list(explorer.method.options) == list(METHODS)
    first = _png(explorer.image)
    explorer.method.value = "surgery"
    assert _png(explorer.image) != first
    explorer.picker.value = items[2].name  # its caption goes into the box
    assert explorer.caption_box.value == items[2].describe() and "pepper" in explorer.caption_box.value
    misses = explorer.misses
    explorer.picker.value = items[0].name
    explorer.method.value = "raw"
    assert _png(explorer.image) == first and explorer.misses == misses  # both from the cache
    with pytest.raises(ValueError, match="dense method"):
        CaptionExplorer(loaded, items[0].image, "a nut", method="gradcam")
    custom = CaptionExplorer(loaded, items[0].image, "a nut", config=SurgeryConfig(depth=2))
    assert custom.method.value == CUSTOM and custom.config.depth == 2


def test_sam_explorer_switches_method_and_image(loaded, items):
    explorer = SamExplorer(loaded, items, ["nut", "bird", "pepper", "tank"], target="bird")
    assert explorer.method.value == "surgery" and list(explorer.method.options) == list(method_names())
    first = _png(explorer.image)
    explorer.method.value = "raw"
    assert _png(explorer.image) != first and explorer.explanation.method == METHODS["raw"]
    explorer.method.value = "gradcam"
    assert explorer.explanation.method == GRADIENT_METHODS["gradcam"] and "gradcam" in explorer.status.value
    explorer.picker.value = items[2].name
    assert explorer.picture is items[2].image or explorer.picture.size == items[2].image.size
    assert len(explorer.points()[0]) > 0
    explorer.method.value = "surgery"
    explorer.picker.value = items[0].name
    assert _png(explorer.image) == first and explorer.hits >= 1
