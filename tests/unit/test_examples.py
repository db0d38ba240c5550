"""The notebooks' example sources."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from surgery_lib.data.shipped import default_source, example_images


@pytest.mark.parametrize("source", ["composites", "composites-new", "real"])
def test_sources_give_images_with_matching_masks(source):
    classes, items = example_images(source, limit=3)
    assert len(items) == 3 and classes
    for item in items:
        assert item.image.mode == "RGB" and item.masks
        for label, mask in item.masks.items():
            assert label in classes and label != "background"
            assert mask.dtype == bool and mask.shape == (item.image.height, item.image.width) and mask.any()


def test_a_folder_of_images_has_no_masks(tmp_path):
    Image.new("RGB", (20, 30), "red").save(tmp_path / "b.png")
    Image.new("L", (20, 30)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    classes, items = example_images(str(tmp_path))
    assert classes == [] and [it.name for it in items] == ["a", "b"]
    assert all(it.image.mode == "RGB" and it.masks == {} for it in items)
    assert np.asarray(items[1].image)[0, 0].tolist() == [255, 0, 0]


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown image source 'nope'"):
        example_images("nope")
    with pytest.raises(FileNotFoundError, match=r"no \.jpg"):
        example_images(str(tmp_path))
    with pytest.raises(ValueError, match="limit"):
        example_images("real", limit=0)


def test_default_source_per_model():
    assert default_source("toy-vit") == "composites" and default_source("ViT-B-16") == "real"


def test_describe_uses_the_caption_or_names_the_classes():
    from PIL import Image

    from surgery_lib.data.records import AnnotatedImage

    mask = np.ones((2, 2), bool)
    image = Image.new("RGB", (2, 2))
    assert AnnotatedImage("a", image, {"cat": mask}, caption="two cats.").describe() == "two cats."
    assert AnnotatedImage("b", image, {"cat": mask, "dog": mask, "car": mask}).describe() == (
        "a photo of a cat, a dog and a car."
    )
    assert AnnotatedImage("c", image).describe() == "a photo."


def test_target_mask_and_iou_follow_the_target_rule():
    from PIL import Image

    from surgery_lib.data.records import AnnotatedImage
    from surgery_lib.eval.metrics import mask_iou

    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    item = AnnotatedImage("x", Image.new("RGB", (4, 4)), {"a": left, "b": ~left})
    assert item.target_mask("a+b").all() and np.array_equal(item.target_mask("a"), left)
    with pytest.raises(ValueError, match="no mask for \\['zebra'\\]"):
        item.target_mask("a+zebra")
    assert mask_iou(left, item.target_mask("a+b")) == 0.5
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(left, np.zeros((2, 2), bool))
