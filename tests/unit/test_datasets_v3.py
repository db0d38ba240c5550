"""Dataset loaders: per-dataset prompt renames, distinct prompts, files that stay inside the dataset
folder, images over the pixel cap."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image
from test_datasets import H, W, _image, _label, make_nus, make_voc

from surgery_lib.data import datasets
from surgery_lib.data.datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_STUFF,
    COCO_THINGS,
    CONTEXT59_CLASSES,
    NUS_WIDE_CLASSES,
    VOC_CLASSES,
    Dataset,
    DatasetError,
    load_dataset,
)

# ---- 3: prompts ---------------------------------------------------------------------------------------


def _prompts(name: str, classes: tuple[str, ...]) -> tuple[str, ...]:
    return Dataset(name, Path("."), classes, None, 255, ()).prompts


def test_context_prompts_track_and_truck_as_themselves():
    for name, classes in (("context59", CONTEXT59_CLASSES), ("context", ("background", *CONTEXT59_CLASSES))):
        prompts = dict(zip(classes, _prompts(name, classes), strict=True))
        assert prompts["track"] == "track" and prompts["truck"] == "truck"


def test_the_real_sets_track_is_a_truck():
    ds = load_dataset("real", "data/real")
    assert ds.prompts[ds.class_names.index("track")] == "truck"
    assert datasets.prompt_name("track") == "track"  # no dataset: no dataset-specific rename


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("voc", VOC_CLASSES),
        ("context", ("background", *CONTEXT59_CLASSES)),
        ("context59", CONTEXT59_CLASSES),
        ("coco_stuff", COCO_THINGS + COCO_STUFF),
        ("coco_object", ("background", *COCO_THINGS)),
        ("cityscapes", CITYSCAPES_CLASSES),
        ("ade20k", ADE20K_CLASSES),
        ("nus_wide", NUS_WIDE_CLASSES),
    ],
)
def test_every_datasets_prompts_are_distinct(name, classes):
    prompts = _prompts(name, classes)
    assert len(set(prompts)) == len(prompts)


def _composites(root: Path, classes: list[str], files: dict[str, str] | None = None) -> Path:
    _image(root / "images" / "00000.jpg")
    _label(root / "masks" / "00000.png", [0, 1])
    item = {"file": "00000.jpg", "mask": "00000.png", "objects": [{"index": 1, "label": classes[0]}]}
    (root / "labels.json").write_text(json.dumps({"classes": classes, "images": [{**item, **(files or {})}]}))
    return root


@pytest.mark.parametrize("pair", [("big cat", "big_cat"), ("Dog", "dog"), ("potted plant", "pottedplant")])
def test_two_classes_prompted_alike_are_refused_naming_both(tmp_path, pair):
    _composites(tmp_path, ["apple", *pair])
    with pytest.raises(DatasetError, match="same text") as info:
        load_dataset("composites", tmp_path)
    assert all(repr(c) in str(info.value) for c in pair), info.value


# ---- symlinks leaving the dataset folder -------------------------------------------------------------


def test_a_listed_image_that_links_outside_the_root_is_refused(tmp_path):
    outside = tmp_path / "secret.jpg"
    _image(outside)
    root = _composites(tmp_path / "set", ["apple"])
    (root / "images" / "00000.jpg").unlink()
    (root / "images" / "00000.jpg").symlink_to(outside)
    with pytest.raises(DatasetError, match=r"00000\.jpg.*outside") as info:
        load_dataset("composites", root)
    assert str(outside.resolve()) in str(info.value)


def test_a_listed_mask_that_links_outside_the_root_is_refused(tmp_path):
    root = _composites(tmp_path / "set", ["apple"])
    (root / "masks" / "00000.png").rename(tmp_path / "mask.png")
    (root / "masks" / "00000.png").symlink_to(tmp_path / "mask.png")
    with pytest.raises(DatasetError, match=r"00000\.png.*outside"):
        load_dataset("composites", root)


def test_voc_and_nus_entries_that_link_outside_are_refused(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": [0, 1], "b": [0, 2]})
    jpeg = root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "b.jpg"
    jpeg.rename(tmp_path / "b.jpg")
    jpeg.symlink_to(tmp_path / "b.jpg")
    with pytest.raises(DatasetError, match=r"b\.jpg.*outside"):
        load_dataset("voc", root)
    nus = make_nus(tmp_path / "nus")
    (nus / "images" / "sky" / "b.jpg").rename(tmp_path / "nus-b.jpg")
    (nus / "images" / "sky" / "b.jpg").symlink_to(tmp_path / "nus-b.jpg")
    with pytest.raises(DatasetError, match=r"sky/b\.jpg.*outside"):
        load_dataset("nus_wide", nus)


def test_links_inside_the_root_and_a_linked_folder_are_followed(tmp_path):
    root = _composites(tmp_path / "set", ["apple"])
    (root / "images" / "00000.jpg").rename(root / "images" / "real.jpg")
    (root / "images" / "00000.jpg").symlink_to(root / "images" / "real.jpg")
    assert len(load_dataset("composites", root)) == 1
    (root / "masks").rename(tmp_path / "masks-elsewhere")  # the whole folder on another disk
    (root / "masks").symlink_to(tmp_path / "masks-elsewhere")
    assert load_dataset("composites", root)[0].label.shape == (H, W)


# ---- images over the pixel cap ------------------------------------------------------------------------


def test_an_image_over_the_pixel_cap_is_a_dataset_error(tmp_path):
    root = _composites(tmp_path, ["apple"])
    Image.new("1", (8200, 8000)).save(root / "images" / "00000.jpg", format="PNG")  # PIL reads by content
    ds = load_dataset("composites", root)
    with pytest.raises(DatasetError, match=r"00000\.jpg.*8200×8000.*64 MP"):
        ds[0]


@pytest.mark.parametrize("what", ["image", "label"])
# PIL: an error over twice its limit, a warning over the limit
@pytest.mark.parametrize("limit", [H * W // 2 - 1, H * W - 1])
def test_pils_decompression_bomb_checks_are_dataset_errors(tmp_path, monkeypatch, what, limit):
    root = _composites(tmp_path, ["apple"])
    ds = load_dataset("composites", root)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    name = "00000.jpg" if what == "image" else "00000.png"
    if what == "label":
        monkeypatch.setattr(datasets, "_open_rgb", lambda path, data=None: Image.new("RGB", (W, H)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DatasetError, match=rf"{name}.*(pixel|bomb)"):
            ds[0]
