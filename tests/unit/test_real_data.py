"""The committed real photos in data/real/ load and are consistent; the loader and rasteriser work.

Offline: nothing here downloads anything (the build itself is ``make real-data``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surgery_lib.data.shipped import (
    IGNORE_INDEX,
    VOC_CLASSES,
    RealDataError,
    RealImage,
    read_real_photos,
)
from surgery_lib.paths import data_dir
from surgery_tools.real_data import objects_from_masks, rasterise_labelme

REAL = data_dir() / "real"


@pytest.fixture(scope="module")
def real() -> list[RealImage]:
    return read_real_photos(REAL)


def test_at_least_eight_photos_with_unique_ids(real: list[RealImage]) -> None:
    assert len(real) >= 8
    assert len({r.id for r in real}) == len(real)


def test_masks_match_photos(real: list[RealImage]) -> None:
    for r in real:
        assert r.image.mode == "RGB", r.id
        assert max(r.image.size) <= 1024, r.id
        expected = (r.image.height, r.image.width)
        for mask in (r.class_mask, r.instance_mask):
            assert mask.shape == expected, r.id
            assert mask.dtype == np.uint8, r.id


def test_class_indices_within_class_names(real: list[RealImage]) -> None:
    for r in real:
        values = set(np.unique(r.class_mask).tolist()) - {IGNORE_INDEX}
        assert max(values) < len(r.class_names), r.id
        assert r.class_names[0] == "background", r.id
        assert len(values) >= 2, f"{r.id}: no object pixels"


def test_objects_consistent_with_instance_mask(real: list[RealImage]) -> None:
    for r in real:
        assert r.objects, r.id
        assert r.objects == objects_from_masks(r.class_mask, r.instance_mask, r.class_names), r.id
        assert [index for index, _ in r.objects] == list(range(1, len(r.objects) + 1)), r.id
        # void pixels are void in both masks; background pixels carry no instance
        assert np.array_equal(r.class_mask == IGNORE_INDEX, r.instance_mask == IGNORE_INDEX), r.id
        assert not np.any(r.instance_mask[r.class_mask == 0]), r.id


def test_vocabularies_are_consistent_within_subsets(real: list[RealImage]) -> None:
    meta = json.loads((REAL / "classes.json").read_text())
    by_subset: dict[str, list[str]] = {}
    for r in real:
        entry = meta[r.id]
        assert entry["licence"] and entry["source"], r.id
        assert by_subset.setdefault(entry["subset"], r.class_names) == r.class_names, r.id
    assert by_subset["voc"] == list(VOC_CLASSES)


def test_missing_mask_is_named(tmp_path: Path) -> None:
    copy = tmp_path / "real"
    shutil.copytree(REAL, copy)
    first = (copy / "ImageSets" / "Segmentation" / "all.txt").read_text().split()[0]
    missing = copy / "SegmentationObject" / f"{first}.png"
    missing.unlink()
    with pytest.raises(RealDataError, match="missing file") as info:
        read_real_photos(copy)
    assert str(missing) in str(info.value)


def test_wrong_size_mask_is_named(tmp_path: Path) -> None:
    copy = tmp_path / "real"
    shutil.copytree(REAL, copy)
    first = (copy / "ImageSets" / "Segmentation" / "all.txt").read_text().split()[0]
    mask = copy / "SegmentationClass" / f"{first}.png"
    Image.new("P", (7, 5)).save(mask)
    with pytest.raises(RealDataError, match="malformed mask file") as info:
        read_real_photos(copy)
    assert str(mask) in str(info.value)


def _labelme(shapes: list[dict]) -> dict:
    return {"imageHeight": 8, "imageWidth": 10, "shapes": shapes}


def _polygon(label: str, points: list[list[float]], group_id: int | None = None) -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": "polygon"}


def test_rasterise_square_polygon_exactly() -> None:
    square = _polygon("cat", [[2, 1], [5, 1], [5, 4], [2, 4]])
    class_mask, instance_mask = rasterise_labelme(_labelme([square]), ["background", "cat"])
    expected = np.zeros((8, 10), dtype=np.uint8)
    expected[1:5, 2:6] = 1  # edges included, like labelme's own export
    assert np.array_equal(class_mask, expected)
    assert np.array_equal(instance_mask, expected)


def test_rasterise_order_groups_ignore_and_rename() -> None:
    shapes = [
        _polygon("tv/monitor", [[0, 0], [9, 0], [9, 7], [0, 7]]),
        _polygon("cat", [[0, 0], [1, 0], [1, 1], [0, 1]], group_id=3),
        _polygon("cat", [[8, 6], [9, 6], [9, 7], [8, 7]], group_id=3),
        _polygon("__ignore__", [[4, 3], [5, 3], [5, 4], [4, 4]]),
    ]
    names = ["background", "cat", "tvmonitor"]
    class_mask, instance_mask = rasterise_labelme(_labelme(shapes), names, {"tv/monitor": "tvmonitor"})
    assert class_mask[0, 0] == 1 and class_mask[7, 9] == 1 and class_mask[2, 5] == 2
    assert instance_mask[0, 0] == instance_mask[7, 9] == 2 and instance_mask[2, 5] == 1
    assert class_mask[3, 4] == IGNORE_INDEX and instance_mask[3, 4] == IGNORE_INDEX
    assert objects_from_masks(class_mask, instance_mask, names) == [(1, "tvmonitor"), (2, "cat")]


def test_rasterise_refuses_unknown_label() -> None:
    with pytest.raises(ValueError, match="dog"):
        rasterise_labelme(_labelme([_polygon("dog", [[0, 0], [2, 0], [2, 2]])]), ["background", "cat"])
