"""Toy composite data: generator, masks, eval-set layout and curation files, on a tiny synthetic cache.

Needs neither the Debian stamps package nor the real cache: the cache is made here from numpy arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_cache import COLOURS, _bar, _dilate, _disc, _square  # noqa: F401

from surgery_tools import toy_data as toy


def test_generator_is_deterministic_and_order_independent(cache: Path) -> None:
    g1 = toy.CompositeGenerator(cache, size=64, seed=3)
    g2 = toy.CompositeGenerator(cache, size=64, seed=3)
    forward = [g1.sample(i) for i in range(6)]
    backward = [g2.sample(i) for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert a.image.tobytes() == b.image.tobytes()
        assert np.array_equal(a.masks, b.masks)
        assert a.labels == b.labels and a.caption == b.caption
    assert forward[0].image.tobytes() != forward[1].image.tobytes()
    other_seed = toy.CompositeGenerator(cache, size=64, seed=4).sample(0)
    assert other_seed.image.tobytes() != forward[0].image.tobytes()


def test_composites_are_consistent(cache: Path) -> None:
    generator = toy.CompositeGenerator(cache, size=72, seed=0, background_split="heldout")
    assert generator.classes == sorted(COLOURS)
    counts = set()
    for index in range(40):
        c = generator.sample(index)
        k = len(c.labels)
        counts.add(k)
        assert c.image.mode == "RGB" and c.image.size == (72, 72)
        assert c.masks.shape == (k, 72, 72) and c.masks.dtype == bool
        assert 1 <= k <= 3 and len(set(c.labels)) == k
        assert set(c.labels) <= set(generator.classes)
        assert c.caption == toy._caption(c.labels)
        assert (c.masks.sum(axis=0) <= 1).all(), "masks overlap"
        assert c.masks.reshape(k, -1).any(axis=1).all(), "empty mask"
        pixels = np.asarray(c.image).astype(int)
        for j, (mask, label) in enumerate(zip(c.masks, c.labels, strict=True)):
            # pixels under a later object's soft edge (alpha < 128) stay in the mask by definition: skip
            # those near other masks; everywhere else the object's own colour must be dominant
            others = _dilate(np.delete(c.masks, j, axis=0).any(axis=0), 4)
            channel = int(np.argmax(COLOURS[label]))
            own = pixels[mask & ~others]
            margin = own[:, channel] - np.delete(own, channel, axis=1).max(axis=1)
            assert (margin >= 10).all(), f"{label}: mask covers pixels of another object or the background"
    assert counts == {1, 2, 3}


def test_sizes_and_max_objects(cache: Path) -> None:
    for size in (32, 50, 129):
        c = toy.CompositeGenerator(cache, size=size, max_objects=1, seed=1).sample(7)
        assert c.image.size == (size, size) and c.masks.shape == (1, size, size)
    with pytest.raises(ValueError, match="max_objects"):
        toy.CompositeGenerator(cache, max_objects=4)


def test_paste_opaque_square_gives_exact_mask() -> None:
    canvas = np.full((64, 64, 3), 0.5, dtype=np.float32)
    square = _square((255, 0, 0), side=20)
    mask = toy._paste(canvas, square, x=5, y=7, scale=1.0, flip=False)
    expected = np.zeros((64, 64), dtype=bool)
    expected[7:27, 5:25] = True
    assert np.array_equal(mask, expected)
    assert np.allclose(canvas[expected], (1.0, 0.0, 0.0))
    assert np.allclose(canvas[~expected], 0.5)

    canvas = np.full((64, 64, 3), 0.5, dtype=np.float32)
    mask = toy._paste(canvas, square, x=50, y=-10, scale=1.5, flip=True)  # 30 × 30, clipped by the border
    expected = np.zeros((64, 64), dtype=bool)
    expected[0:20, 50:64] = True
    assert np.array_equal(mask, expected)


def test_paste_soft_alpha_mask_is_alpha_threshold() -> None:
    disc = _disc((0, 0, 255), side=48)
    canvas = np.zeros((64, 64, 3), dtype=np.float32)
    mask = toy._paste(canvas, disc, x=8, y=8, scale=1.0, flip=False)
    alpha = np.asarray(disc)[..., 3]
    assert np.array_equal(mask[8:56, 8:56], alpha >= 128)
    assert mask.sum() == (alpha >= 128).sum()
    assert canvas[..., 0].max() == 0 and canvas[..., 1].max() == 0, "colour under alpha 0 leaked"
    edge = (alpha > 0) & (alpha < 255)
    assert np.allclose(canvas[8:56, 8:56, 2][edge], alpha[edge] / 255.0, atol=1e-6)


def test_occlusion_removes_later_pixels_from_earlier_masks() -> None:
    canvas = np.zeros((64, 64, 3), dtype=np.float32)
    first = toy._paste(canvas, _square((255, 0, 0), 20), x=10, y=10, scale=1.0, flip=False)
    too_close = toy._object_mask(np.full((20, 20), 255, dtype=np.uint8), x=23, y=10, size=64)
    assert not toy._placement_ok([first], [400], too_close)  # would hide 7 of 20 columns: 35 % > 30 %
    second = toy._paste(canvas, _square((0, 255, 0), 20), x=24, y=10, scale=1.0, flip=False)
    assert toy._placement_ok([first], [400], second)  # hides 6 of 20 columns: exactly 30 %
    first_visible = toy._occlude([first], second)[0]
    assert first_visible.sum() == 280 and not (first_visible & second).any()
    assert np.array_equal(first_visible | second, first | second)
    assert np.allclose(canvas[first_visible], (1.0, 0.0, 0.0)) and np.allclose(
        canvas[second], (0.0, 1.0, 0.0)
    )
    # the rule counts against the mask at paste time: a third object may hide only 0 more pixels here
    third = np.zeros((64, 64), dtype=bool)
    third[10, 10] = True
    assert not toy._placement_ok([first_visible, second], [400, 400], third)


def test_captions() -> None:
    assert toy._caption(["horse"]) == "a photo of a horse"
    assert toy._caption(["horse", "car"]) == "a photo of a horse and a car"
    assert toy._caption(["horse", "car", "bird"]) == "a photo of a horse, a car and a bird"
    assert toy._caption(["apple", "insect"]) == "a photo of an apple and an insect"


def test_write_eval_set_layout(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    toy.write_eval_set(cache, out, n=8, split="heldout", background_split="train", size=48, seed=5)
    labels = json.loads((out / "labels.json").read_text())
    assert labels["classes"] == sorted(COLOURS) and len(labels["images"]) == 8
    generator = toy.CompositeGenerator(cache, split="heldout", size=48, seed=5, background_split="train")
    for index, record in enumerate(labels["images"]):
        assert record["file"] == f"{index:05d}.jpg" and record["mask"] == f"{index:05d}.png"
        image = Image.open(out / "images" / record["file"])
        mask = np.asarray(Image.open(out / "masks" / record["mask"]))
        assert image.format == "JPEG" and image.size == (48, 48)
        assert mask.dtype == np.uint8 and mask.shape == (48, 48)
        objects = record["objects"]
        assert [o["index"] for o in objects] == list(range(1, len(objects) + 1))
        assert set(np.unique(mask)) == {0, *range(1, len(objects) + 1)}
        composite = generator.sample(index)
        assert [o["label"] for o in objects] == composite.labels
        assert record["caption"] == composite.caption
        for k, object_mask in enumerate(composite.masks, start=1):
            assert np.array_equal(mask == k, object_mask)


def test_build_cache_names_the_package_when_stamps_are_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install tuxpaint-stamps-default"):
        toy.build_cache(tmp_path / "cache", stamps_root=tmp_path / "no-stamps")
    assert not (tmp_path / "cache").exists()


def test_build_cache_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stamps = tmp_path / "stamps"
    for rel in ("animals/a.png", "animals/b.png", "animals/c.png", "things/x.png", "things/y.png"):
        (stamps / rel).parent.mkdir(parents=True, exist_ok=True)
        array = np.zeros((40, 300, 4), dtype=np.uint8)
        array[5:35, 10:290] = 200
        Image.fromarray(array).save(stamps / rel)
    package = tmp_path / "site" / "fakebg"  # a stand-in for the pip packages holding the photos
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    Image.fromarray(np.full((600, 900, 3), 128, dtype=np.uint8)).save(package / "p.jpg")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    animals = ["animals/c.png", "animals/a.png", "animals/b.png"]
    classes = {"classes": {"big thing": ["things/x.png", "things/y.png"], "animal": animals}}
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    entries = [
        {"name": f"bg{k}", "split": split, "package": "x==1", "file": "fakebg/p.jpg", "licence": "CC0"}
        for k, split in enumerate(["train", "train", "heldout"])
    ]
    backgrounds = {"backgrounds": entries}
    (tmp_path / "backgrounds.json").write_text(json.dumps(backgrounds))
    cache = tmp_path / "cache"
    toy.build_cache(cache, stamps, tmp_path / "classes.json", tmp_path / "backgrounds.json")
    files = sorted(str(f.relative_to(cache)) for f in cache.rglob("*") if f.is_file())
    assert files == [
        "backgrounds/heldout/bg2.jpg",
        "backgrounds/train/bg0.jpg",
        "backgrounds/train/bg1.jpg",
        "cutouts/heldout/animal/animals-b.png",
        "cutouts/heldout/big_thing/things-y.png",
        "cutouts/train/animal/animals-a.png",
        "cutouts/train/animal/animals-c.png",
        "cutouts/train/big_thing/things-x.png",
    ]
    assert Image.open(cache / "cutouts/train/animal/animals-a.png").size == (256, 27)
    assert Image.open(cache / "backgrounds/train/bg0.jpg").size == (512, 341)
    generator = toy.CompositeGenerator(cache, split="heldout", size=32)
    assert generator.classes == ["animal", "big thing"]
    assert set(generator.sample(0).labels) <= {"animal", "big thing"}


def test_trim_cutout() -> None:
    array = np.zeros((300, 600, 4), dtype=np.uint8)
    array[50:250, 100:500] = (10, 20, 30, 255)
    cutout = toy._trim_cutout(Image.fromarray(array))
    assert cutout.mode == "RGBA" and cutout.size == (256, 128)
    assert np.asarray(cutout)[..., 3].min() > 0


def test_split_instances() -> None:
    classes = {"a": [f"a/{i}.png" for i in range(9)], "b": ["b/y.png", "b/x.png", "b/z.png"]}
    splits = toy.split_instances(classes)
    assert splits["heldout"] == {"a": ["a/1.png", "a/5.png"], "b": ["b/y.png"]}
    assert splits["train"]["b"] == ["b/x.png", "b/z.png"]
    with pytest.raises(ValueError, match="at least 2"):
        toy.split_instances({"c": ["c.png"]})


def test_curated_classes_file_is_well_formed() -> None:
    doc = json.loads(toy.CLASSES_FILE.read_text())
    assert doc["version"] == 1 and "tuxpaint-stamps-default" in doc["source"]
    classes = doc["classes"]
    assert 30 <= len(classes) <= 40
    all_paths = [p for paths in classes.values() for p in paths]
    assert len(all_paths) == len(set(all_paths)), "a stamp is in two classes"
    for name, paths in classes.items():
        assert name == name.strip().lower() and "_" not in name
        assert len(paths) >= 3, name
        for path in paths:
            assert path.endswith(".png") and not path.startswith("/")
            assert "cartoon" not in path.split("/"), path
    splits = toy.split_instances(classes)
    for name in classes:
        assert len(splits["train"][name]) >= 2 and len(splits["heldout"][name]) >= 1


def test_backgrounds_file_is_well_formed() -> None:
    entries = toy.load_backgrounds()
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names))
    held = [e for e in entries if e["split"] == "heldout"]
    assert {e["split"] for e in entries} == set(toy.SPLITS)
    assert len(held) >= 3 and 0.15 <= len(held) / len(entries) <= 0.35
    for entry in entries:
        assert entry["licence"] and "==" in entry["package"] and "/" in entry["file"]
    assert not any(e["file"].endswith("flower.jpg") for e in entries)


def test_augmented_cutout_rotates_and_stretches_exactly() -> None:
    square = _square((200, 50, 50), side=20)
    plain_rgb, plain_alpha = toy._scaled_cutout(square, 1.0, flip=False)
    rgb, alpha = toy._augmented_cutout(square, 1.0, flip=False, aspect=1.0, angle=0.0)
    assert np.array_equal(alpha, plain_alpha) and np.allclose(rgb, plain_rgb, atol=1 / 255)
    _, wide = toy._augmented_cutout(square, 1.0, flip=False, aspect=2.0, angle=0.0)
    assert wide.shape == (20, 40) and (wide == 255).all()
    _, tilted = toy._augmented_cutout(square, 1.0, flip=False, aspect=1.0, angle=45.0)
    # a 20 px square turned by 45 degrees: a diamond in a ~28 px box, same area, empty corners
    assert 27 <= tilted.shape[0] <= 30 and tilted.shape == tilted.shape[::-1]
    assert abs(np.count_nonzero(tilted >= toy.MASK_THRESHOLD) - 400) <= 40
    assert (
        tilted[0, 0] == 0
        and tilted[-1, -1] == 0
        and tilted[tilted.shape[0] // 2, tilted.shape[1] // 2] == 255
    )


def test_recolour_keeps_luma_and_turns_hue() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0.2, 0.8, size=(6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(toy._recolour(rgb, 0.0, gray=False), rgb, atol=1e-5)
    np.testing.assert_allclose(toy._recolour(rgb, 360.0, gray=False), rgb, atol=1e-5)
    turned = toy._recolour(rgb, 25.0, gray=False)
    assert np.abs(turned - rgb).max() > 0.02
    np.testing.assert_allclose(turned @ toy._GRAY, rgb @ toy._GRAY, atol=1e-4)  # luma kept (no clipping here)
    gray = toy._recolour(rgb, 0.0, gray=True)
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-5)
    np.testing.assert_allclose(gray[..., 0], rgb @ toy._GRAY, atol=1e-4)


def test_augmented_composites_are_deterministic_and_leave_plain_ones_alone(cache: Path) -> None:
    plain = toy.CompositeGenerator(cache, size=64, seed=2)
    before = [plain.sample(i) for i in range(8)]
    augmented = toy.CompositeGenerator(cache, size=64, seed=2, augment=True)
    again = toy.CompositeGenerator(cache, size=64, seed=2, augment=True)
    changed = 0
    for i, p in enumerate(before):
        a, b = augmented.sample(i), again.sample(i)
        assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.masks, b.masks)
        k = len(a.labels)
        assert a.masks.shape == (k, 64, 64) and (a.masks.sum(axis=0) <= 1).all()
        assert a.masks.reshape(k, -1).any(axis=1).all() and a.caption == toy._caption(a.labels)
        changed += a.image.tobytes() != p.image.tobytes()
        q = plain.sample(i)  # sampling augmented composites did not disturb the plain generator
        assert q.image.tobytes() == p.image.tobytes() and np.array_equal(q.masks, p.masks)
    assert changed == len(before)
