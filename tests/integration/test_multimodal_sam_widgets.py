"""Caption and text -> SAM figures, explorers and measurements (point precision, presence gate)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from PIL import Image

from surgery_lib.data.records import size_groups
from surgery_lib.data.shipped import read_captions
from surgery_lib.eval.sets import (
    _is_class_word,
    caption_word_records,
    point_precision_records,
    presence_records,
)
from surgery_lib.maps.sam import SamSegmenter, gate_rates, point_precision, text_points
from surgery_lib.paths import data_dir
from surgery_lib.ui import viz
from surgery_lib.ui.widgets import CaptionExplorer, SamExplorer

matplotlib.use("Agg")
CLASSES = ["nut", "bird", "pepper", "tank"]


@pytest.fixture(scope="module")
def loaded(toy_vit):
    return toy_vit  # the shipped toy-vit (fast), offline; shared by the session


@pytest.fixture(scope="module")
def items(composites3):
    return composites3[1]  # nut; bird; pepper, tank, bird


def _image(h: int = 40, w: int = 60) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


# ---- figures ----------------------------------------------------------------------------------------


def test_caption_figure_shades_each_word():
    words = ["a", "dog", "on", "a", "bench"]
    fig = viz.caption_figure(words, torch.tensor([0.0, 1.0, 0.2, 0.0, 0.7]), title="caption")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == words and ax.get_title() == "caption"
    shades = [t.get_bbox_patch().get_facecolor() for t in ax.texts]
    darkness = [sum(c[:3]) for c in shades]
    assert int(np.argmin(darkness)) == 1 and darkness[0] == darkness[3] > darkness[4]  # dog darkest
    assert fig.axes[1].get_xlabel() == "word importance"  # the colorbar
    long = viz.caption_figure(["word"] * 60, np.linspace(0, 1, 60))
    assert long.get_size_inches()[1] > fig.get_size_inches()[1]  # wrapped onto more lines
    for f in (fig, long):
        viz.close(f)


def test_caption_figure_errors():
    with pytest.raises(ValueError, match="one importance per word"):
        viz.caption_figure(["a", "dog"], [0.5])
    with pytest.raises(ValueError, match="one importance per word"):
        viz.caption_figure(["a", "dog"], np.zeros((2, 1)))
    with pytest.raises(ValueError, match="no words"):
        viz.caption_figure([], [])


def test_word_maps_figure():
    maps = np.random.default_rng(0).random((40, 60, 3))
    fig = viz.word_maps_figure(_image(), ["a", "red", "ball"], maps)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "a", "red", "ball"]
    viz.close(fig)
    with pytest.raises(ValueError, match="T = 2 labels"):
        viz.word_maps_figure(_image(), ["a", "ball"], maps)


def test_points_figure_draws_points_and_mask():
    heat = np.random.default_rng(0).random((40, 60))
    points, labels = torch.tensor([[10, 5], [50, 30], [2, 38]]), torch.tensor([1, 1, 0])
    mask = np.zeros((40, 60), bool)
    mask[0:20, 0:30] = True
    fig = viz.points_figure(_image(), heat, points, labels, mask, title="dog")
    ax = fig.axes[0]
    offsets = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_array_equal(offsets[0], [[10, 5], [50, 30]])  # positives (green stars)
    np.testing.assert_array_equal(offsets[1], [[2, 38]])  # negatives (red crosses)
    assert ax.get_title() == "dog"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["object (2)", "background (1)", "SAM mask"]
    viz.close(fig)
    gated = viz.points_figure(_image(), heat, torch.zeros(0, 2), torch.zeros(0))  # no points: still draws
    viz.close(gated)
    with pytest.raises(ValueError, match="K labels"):
        viz.points_figure(_image(), heat, points, labels[:2])
    with pytest.raises(ValueError, match="must match the map"):
        viz.points_figure(_image(), heat, points, labels, mask[:10])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        viz.points_figure(_image(), heat[..., None], points, labels)


# ---- measurement helpers ------------------------------------------------------------------------------


def test_point_precision_by_hand():
    mask = np.zeros((10, 10), bool)
    mask[0:2, 5:8] = True  # rows (y) 0-1, columns (x) 5-7
    points = torch.tensor([[6, 1], [1, 6], [7, 0], [9, 9]])  # [x, y]
    assert point_precision(points, torch.tensor([1, 1, 1, 0]), mask) == pytest.approx(2 / 3)
    assert point_precision(points, torch.tensor([1, 0, 0, 0]), mask) == 1.0
    assert point_precision(points, torch.tensor([0, 0, 0, 0]), mask) is None  # no positives
    with pytest.raises(ValueError, match="outside"):
        point_precision(torch.tensor([[10, 0]]), torch.tensor([1]), mask)
    with pytest.raises(ValueError, match="labels"):
        point_precision(points, torch.tensor([1]), mask)


def test_gate_rates_by_hand():
    probs = [0.9, 0.2, 0.05, 0.6, 0.01, 0.0]
    present = [True, True, True, False, False, False]
    rates = gate_rates(probs, present, [0.0, 0.1, 0.5, 1.0])
    got = [[r["threshold"], r["false_positive"], r["recall"]] for r in rates]
    want = [[0.0, 100, 100], [0.1, 100 / 3, 200 / 3], [0.5, 100 / 3, 100 / 3], [1.0, 0, 0]]
    np.testing.assert_allclose(got, want)
    assert rates[0]["absent"] == 3 and rates[0]["present"] == 3
    only_present = gate_rates([0.5], [True], [0.1])[0]
    assert math.isnan(only_present["false_positive"]) and only_present["recall"] == 100
    with pytest.raises(ValueError, match="presence flags"):
        gate_rates([0.5, 0.1], [True], [0.1])


def test_the_gate_rates_match_text_points(loaded, items):
    records = presence_records(loaded.model, loaded.tokenizer, CLASSES, items, loaded.image_size)
    assert len(records) == len(items) * len(CLASSES)
    for i in range(len(items)):
        assert sum(r["probability"] for r in records if r["image"] == i) == pytest.approx(1.0, abs=1e-5)
    assert [r["present"] for r in records if r["image"] == 2] == [False, True, True, True]
    from surgery_lib.maps.explain import explain

    ordered = sorted(r["probability"] for r in records)
    threshold = math.sqrt(ordered[len(ordered) // 2] * ordered[len(ordered) // 2 + 1])  # between two pairs
    rate = gate_rates([r["probability"] for r in records], [r["present"] for r in records], [threshold])[0]
    passed = {True: [], False: []}
    for r in records:  # the same gate through text_points
        item = items[r["image"]]
        ex = explain(loaded.model, loaded.tokenizer, loaded.reference_preprocess(item.image)[None], CLASSES)
        passed[r["present"]].append(len(text_points(ex, r["class"], min_probability=threshold)[0]) > 0)
    assert rate["recall"] == pytest.approx(100 * np.mean(passed[True]), abs=1e-4)
    assert rate["false_positive"] == pytest.approx(100 * np.mean(passed[False]), abs=1e-4)


def test_point_precision_records(loaded, items):
    records = point_precision_records(loaded.model, loaded.tokenizer, CLASSES, items, loaded.image_size)
    assert len(records) == 2 * 5  # (nut, bird, pepper + tank + bird) x (raw, surgery)
    assert {r["method"] for r in records} == {"raw", "surgery"}
    assert all(r["precision"] is None or 0 <= r["precision"] <= 100 for r in records)
    from surgery_lib.config import SurgeryConfig
    from surgery_lib.maps.explain import explain

    item = items[2]
    for method, config in {"raw": SurgeryConfig.off(), "surgery": SurgeryConfig.paper()}.items():
        ex = explain(
            loaded.model, loaded.tokenizer, loaded.reference_preprocess(item.image)[None], CLASSES, config
        )
        ex.maps = torch.zeros(1, item.image.height, item.image.width, len(CLASSES))  # points at image size
        want = point_precision(*text_points(ex, "tank"), item.masks["tank"])
        got = next(r for r in records if r["image"] == 2 and r["class"] == "tank" and r["method"] == method)
        assert got["precision"] == (None if want is None else pytest.approx(100 * want))
    only_bird = point_precision_records(
        loaded.model, loaded.tokenizer, ["bird", "dog"], items, loaded.image_size
    )
    assert {r["class"] for r in only_bird} == {"bird"}  # only the classes the model is asked about
    assert size_groups(items, 2) == [[0, 1], [2]]


def test_captions_and_word_records(loaded, items):
    captions = read_captions(data_dir() / "composites" / "seen_instances", limit=3)
    assert captions[0] == "a photo of a nut" and len(captions) == 3
    assert _is_class_word("cat", ["big cat"]) and not _is_class_word("a", ["big cat"])
    records = caption_word_records(loaded.model, loaded.tokenizer, items[:2], captions[:2], loaded.image_size)
    assert len(records) == 2 * 2 * 2 * 2  # images x methods x redundancies x importances
    assert all(r["chance"] == pytest.approx(1 / 5) for r in records)  # "a photo of a nut": 1 of 5 words
    tops = {
        (r["image"], r["method"], r["redundancy"]): r["word"]
        for r in records
        if r["importance"] == "class token"
    }
    assert len({v for k, v in tops.items() if k[0] == 0}) == 1  # the class token's top word: one for all
    with pytest.raises(ValueError, match="captions for"):
        caption_word_records(loaded.model, loaded.tokenizer, items, captions[:1], loaded.image_size)


# ---- widgets ------------------------------------------------------------------------------------------


def test_caption_explorer_follows_the_caption(loaded, items):
    explorer = CaptionExplorer(loaded, items[2].image, "a photo of a pepper")
    first = (bytes(explorer.caption_image.value), bytes(explorer.image.value))
    assert first[0].startswith(b"\x89PNG") and first[1].startswith(b"\x89PNG")
    explorer.caption_box.value = "a tank and a bird"
    assert bytes(explorer.image.value) != first[1] and bytes(explorer.caption_image.value) != first[0]
    shown = bytes(explorer.image.value)
    explorer.caption_box.value = "   "
    assert "empty" in explorer.status.value and bytes(explorer.image.value) == shown
    explorer.caption_box.value = "word " * 100
    assert "too long" in explorer.status.value and bytes(explorer.image.value) == shown
    explorer.caption_box.value = "a tank and a bird"  # back to a good caption: from the cache
    assert "error" not in explorer.status.value and bytes(explorer.image.value) == shown
    importance = bytes(explorer.caption_image.value)
    explorer.redundancy.value = "word_mean"  # the maps change; the class-token importance does not
    assert bytes(explorer.image.value) != shown and bytes(explorer.caption_image.value) == importance
    misses = explorer.misses
    explorer.redundancy.value = "empty_prompt"
    explorer.caption_box.value = "a photo of a pepper"
    assert (bytes(explorer.caption_image.value), bytes(explorer.image.value)) == first
    assert explorer.misses == misses and explorer.hits >= 2  # both drawn from the cache
    assert list(explorer.redundancy.options) == ["empty_prompt", "word_mean", "none"]


def test_sam_explorer_follows_the_target(loaded, items):
    explorer = SamExplorer(loaded, items[2].image, CLASSES, target="pepper")
    first = bytes(explorer.image.value)
    assert first.startswith(b"\x89PNG") and len(explorer.points()[0]) > 0
    explorer.target.value = "tank+bird"
    assert bytes(explorer.image.value) != first
    shown = bytes(explorer.image.value)
    explorer.target.value = "dragon"
    assert "not explained" in explorer.status.value and bytes(explorer.image.value) == shown
    explorer.target.value = "pepper"
    assert bytes(explorer.image.value) == first and explorer.hits == 1
    explorer.quantile.value = 0.5
    assert bytes(explorer.image.value) != first
    explorer.gate.value = 1.0
    explorer.gate_on.value = True  # no label reaches probability 1: gated out, no points
    assert len(explorer.points()[0]) == 0 and bytes(explorer.image.value) != first


def test_sam_explorer_with_a_segmenter(loaded, items):
    from test_multimodal_sam import _tiny_sam

    segmenter = SamSegmenter(sam=_tiny_sam())
    calls = []
    original = segmenter.segment

    def spy(image, points, labels):
        calls.append((image.shape, len(points)))
        return original(image, points, labels)

    segmenter.segment = spy
    plain = SamExplorer(loaded, items[2].image, CLASSES, target="pepper")
    with_sam = SamExplorer(loaded, items[2].image, CLASSES, segmenter=segmenter, target="pepper")
    assert calls and calls[0][0] == (224, 224, 3)
    assert bytes(with_sam.image.value) != bytes(plain.image.value)  # the mask is drawn
    with_sam.gate.value = 1.0  # the gate is off: nothing changes
    with_sam.gate_on.value = True  # now gated out: SAM is not called, the figure says so
    assert len(calls) == 1 and "error" not in with_sam.status.value
