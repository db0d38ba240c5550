"""Dataset loaders on tiny fixtures in each dataset's exact on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surgery_lib.data.datasets import (
    ADE20K_CLASSES,
    COCO_THINGS,
    NUS_WIDE_CLASSES,
    DatasetError,
    load_dataset,
)
from surgery_lib.data.shipped import read_real_photos as load_real_photos

H, W = 12, 16


def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _label(path: Path, values: list[int], palette: bool = False) -> np.ndarray:
    """An (H, W) label map: one horizontal band per value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((H, W), dtype=np.uint8)
    for i, v in enumerate(values):
        arr[i * H // len(values) : (i + 1) * H // len(values)] = v
    im = Image.fromarray(arr)  # mode L
    if palette:
        im = im.convert("P")  # VOC-style palette PNG, same indices
        im.putpalette([c for i in range(256) for c in (i, 255 - i, i // 2)])
    im.save(path)
    return arr


def make_voc(root: Path, labels: dict[str, list[int]], split: str = "val") -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for n, (image_id, values) in enumerate(labels.items()):
        _image(base / "JPEGImages" / f"{image_id}.jpg", n)
        _label(base / "SegmentationClass" / f"{image_id}.png", values, palette=True)
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{split}.txt").write_text("\n".join(reversed(list(labels))) + "\n")
    return root


def test_voc_sorted_with_and_without_background(tmp_path):
    root = make_voc(tmp_path, {"2007_000002": [0, 15, 255], "2007_000001": [3, 0]})
    ds = load_dataset("voc", root)
    assert ds.ids == ["2007_000001", "2007_000002"]
    assert len(ds.class_names) == 21 and ds.background == 0 and ds.ignore_index == 255
    sample = ds[1]
    assert sample.label.dtype == np.int64 and sample.label.shape == (H, W)
    assert sorted(np.unique(sample.label).tolist()) == [0, 15, 255]
    assert sample.image.mode == "RGB" and sample.image.size == (W, H)
    voc20 = load_dataset("voc20", root / "VOCdevkit")  # a parent folder works too
    assert voc20.background is None and len(voc20.class_names) == 20
    assert sorted(np.unique(voc20[1].label).tolist()) == [14, 255]  # person 15 -> 14, background ignored


def test_context_60_and_59(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2010"
    for n, (image_id, values) in enumerate({"2008_000002": [0, 59], "2008_000008": [1, 255]}.items()):
        _image(base / "JPEGImages" / f"{image_id}.jpg", n)
        _label(base / "SegmentationClassContext" / f"{image_id}.png", values)
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000008\n2008_000002\n")
    ctx = load_dataset("context", tmp_path)
    assert len(ctx.class_names) == 60 and ctx.class_names[0] == "background"
    assert sorted(np.unique(ctx[0].label).tolist()) == [0, 59]
    ctx59 = load_dataset("context59", tmp_path)
    assert len(ctx59.class_names) == 59 and ctx59.class_names[58] == "wood"
    assert sorted(np.unique(ctx59[0].label).tolist()) == [58, 255]
    assert sorted(np.unique(ctx59[1].label).tolist()) == [0, 255]


def _coco(root: Path) -> Path:
    base = root / "coco_stuff164k"
    for n, (stem, values) in enumerate({"000000000285": [0, 100], "000000000139": [79, 170, 255]}.items()):
        _image(base / "images" / "val2017" / f"{stem}.jpg", n)
        _label(base / "annotations" / "val2017" / f"{stem}_labelTrainIds.png", values)
    return root


def test_coco_stuff_and_object(tmp_path):
    root = _coco(tmp_path)
    stuff = load_dataset("coco_stuff", root)
    assert stuff.ids == ["000000000139", "000000000285"] and len(stuff.class_names) == 171
    assert sorted(np.unique(stuff[0].label).tolist()) == [79, 170, 255]
    obj = load_dataset("coco_object", root)
    assert obj.class_names == ("background", *COCO_THINGS) and obj.background == 0
    assert sorted(np.unique(obj[0].label).tolist()) == [0, 80, 255]  # toothbrush 79 -> 80, stuff -> 0
    assert sorted(np.unique(obj[1].label).tolist()) == [0, 1]


def test_cityscapes(tmp_path):
    for n, (city, name) in enumerate(
        [("lindau", "lindau_000001_000019"), ("frankfurt", "frankfurt_000000_000294")]
    ):
        _image(tmp_path / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png", n)
        _label(tmp_path / "gtFine" / "val" / city / f"{name}_gtFine_labelTrainIds.png", [0, 18, 255])
    ds = load_dataset("cityscapes", tmp_path)
    assert ds.ids == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000001_000019"]
    assert len(ds.class_names) == 19 and ds.background is None
    assert sorted(np.unique(ds[0].label).tolist()) == [0, 18, 255]


def test_ade20k_reduce_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for n, stem in enumerate(["ADE_val_00000002", "ADE_val_00000001"]):
        _image(base / "images" / "validation" / f"{stem}.jpg", n)
        _label(base / "annotations" / "validation" / f"{stem}.png", [0, 1, 150])
    ds = load_dataset("ade20k", tmp_path)
    assert ds.ids == ["ADE_val_00000001", "ADE_val_00000002"] and ds.class_names == ADE20K_CLASSES
    assert sorted(np.unique(ds[0].label).tolist()) == [0, 149, 255]


def make_nus(root: Path) -> Path:
    for n, rel in enumerate(["sky/b.jpg", "animal/a.jpg", "sky/c.jpg"]):
        _image(root / "images" / rel, n)
    (root / "test.txt").write_text("sky/b.jpg sky clouds\nanimal/a.jpg animal dog sky\n\nsky/c.jpg\n")
    return root


def test_nus_wide(tmp_path):
    ds = load_dataset("nus_wide", make_nus(tmp_path))
    assert ds.multilabel_only and len(ds.class_names) == 81
    assert ds.ids == ["animal/a", "sky/b", "sky/c"]
    sample = ds[0]
    assert sample.label is None and sample.tags.dtype == np.int64
    assert [NUS_WIDE_CLASSES[i] for i in np.nonzero(sample.tags)[0]] == ["animal", "dog", "sky"]
    assert ds[2].tags.sum() == 0


def test_nus_wide_errors(tmp_path):
    make_nus(tmp_path)
    (tmp_path / "test.txt").write_text("sky/b.jpg sky unicorn\n")
    with pytest.raises(DatasetError, match=r"test.txt line 1: unknown concepts \['unicorn'\]"):
        load_dataset("nus_wide", tmp_path)
    (tmp_path / "test.txt").write_text("sky/b.jpg sky\nsky/missing.jpg sky\n")
    with pytest.raises(DatasetError, match=r"missing file: .*sky/missing\.jpg"):
        load_dataset("nus_wide", tmp_path)


def test_composites_fixture_and_shipped_set(tmp_path):
    _image(tmp_path / "images" / "00001.jpg")
    _image(tmp_path / "images" / "00000.jpg")
    _label(tmp_path / "masks" / "00000.png", [0, 1, 2])
    _label(tmp_path / "masks" / "00001.png", [0, 1])
    meta = {
        "classes": ["apple", "big cat"],
        "images": [
            {"file": "00001.jpg", "mask": "00001.png", "objects": [{"index": 1, "label": "apple"}]},
            {"file": "00000.jpg", "mask": "00000.png",
             "objects": [{"index": 1, "label": "big cat"}, {"index": 2, "label": "apple"}]},
        ],
    }  # fmt: skip
    (tmp_path / "labels.json").write_text(json.dumps(meta))
    ds = load_dataset("composites", tmp_path)
    assert ds.ids == ["00000", "00001"] and ds.class_names == ("background", "apple", "big cat")
    assert ds.prompts[2] == "big cat"
    assert sorted(np.unique(ds[0].label).tolist()) == [0, 1, 2]
    assert (ds[0].label[H // 3 + 1] == 2).all()  # instance 1 is a big cat
    shipped = load_dataset("composites", "data/composites/seen_instances")
    assert len(shipped) == 300 and len(shipped.class_names) == 32


def test_real_photos_go_through_the_voc_loader():
    ds = load_dataset("real", "data/real")
    photos = {p.id: p for p in load_real_photos(Path("data/real"))}
    assert len(ds) == len(photos) == 11 and ds.ids == sorted(photos)
    for i in (0, 5, 10):
        sample = ds[i]
        photo = photos[sample.image_id]
        assert sample.image_path.parent.name == "JPEGImages"
        lut = np.full(256, 255, dtype=np.int64)
        lut[: len(photo.class_names)] = [ds.class_names.index(n) for n in photo.class_names]
        expected = lut[photo.class_mask]
        assert np.array_equal(sample.label, expected)
        assert [ds.class_names[c] for c in sample.vocabulary] == photo.class_names[1:]


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"missing folder: .*JPEGImages"):
        load_dataset("voc", tmp_path)
    root = make_voc(tmp_path, {"a": [0, 1], "b": [0, 2], "c": [0, 3]})
    base = root / "VOCdevkit" / "VOC2012"
    (base / "SegmentationClass" / "b.png").unlink()
    (base / "SegmentationClass" / "c.png").unlink()
    with pytest.raises(DatasetError, match=r"missing file: .*SegmentationClass/b\.png"):
        load_dataset("voc", root)
    with pytest.raises(DatasetError, match=r"missing file: .*ImageSets/Segmentation/train\.txt"):
        load_dataset("voc", root, split="train")
    with pytest.raises(DatasetError, match=r"missing folder: .*annotations"):
        load_dataset("ade20k", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


def test_malformed_label_and_image_are_named(tmp_path):
    root = make_voc(tmp_path, {"a": [0, 1], "b": [0, 42]})
    ds = load_dataset("voc", root)
    assert ds[0].label.max() == 1
    with pytest.raises(DatasetError, match=r"malformed label map: .*b\.png holds values \[42\]"):
        ds[1]
    base = root / "VOCdevkit" / "VOC2012"
    Image.fromarray(np.zeros((H, W), dtype=np.uint16)).save(base / "SegmentationClass" / "b.png")
    with pytest.raises(DatasetError, match=r"malformed label map: .*b\.png has mode"):
        ds[1]
    _label(base / "SegmentationClass" / "b.png", [0])
    (base / "JPEGImages" / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"malformed image file: .*b\.jpg"):
        ds[1]
