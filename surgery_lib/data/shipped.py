"""Readers of the sets this project ships in ``data/``: composites and real annotated photos.

Composite set layout (``data/composites/<set>``): ``images/<n>.jpg``, ``masks/<n>.png`` (instance
indices, 0 = background) and ``labels.json`` = ``{"classes": [...], "images": [{"file", "mask",
"caption", "objects": [{"index", "label"}]}]}``.

Real photos (``data/real``): PASCAL VOC layout written by ``python -m surgery_tools.real_data``::

    JPEGImages/<id>.jpg            the photo
    SegmentationClass/<id>.png     palette PNG of class indices (0 background, 255 void/ignore)
    SegmentationObject/<id>.png    palette PNG of instance indices (0 none, 255 void/ignore)
    ImageSets/Segmentation/all.txt one id per line
    classes.json                   per id: subset, source, licence, class_names, objects
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from surgery_lib.data.datasets import IGNORE_INDEX, VOC_CLASSES, decode_image_file
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.maps.images import to_rgb
from surgery_lib.paths import data_dir

CLASS_DIR = "SegmentationClass"
OBJECT_DIR = "SegmentationObject"
IMAGE_DIR = "JPEGImages"
LIST_FILE = Path("ImageSets") / "Segmentation" / "all.txt"
CLASSES_FILE = "classes.json"
SOURCES: tuple[str, ...] = ("composites", "composites-new", "real")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

__all__ = [
    "IGNORE_INDEX",
    "SOURCES",
    "VOC_CLASSES",
    "RealDataError",
    "RealImage",
    "default_source",
    "example_images",
    "read_captions",
    "read_composite_set",
    "read_real_photos",
    "voc_palette",
]


class RealDataError(ValueError):
    """The real-photo folder is missing a file or holds a malformed one; the message names it."""


@dataclass
class RealImage:
    """One annotated photo read by :func:`read_real_photos`.

    ``class_mask`` holds indices into ``class_names`` (255: void/ignore); ``instance_mask`` holds
    object indices (0: no object, 255: void/ignore); ``objects`` lists ``(index, class name)`` for
    every index present in ``instance_mask``.
    """

    id: str
    image: Image.Image
    class_mask: np.ndarray
    instance_mask: np.ndarray
    class_names: list[str]
    objects: list[tuple[int, str]]


def voc_palette() -> list[int]:
    """The 256-colour PASCAL VOC palette as a flat ``[r, g, b, r, g, b, ...]`` list (768 values).

    Colour ``i`` spreads the bits of ``i`` over the high bits of the three channels, so that
    neighbouring indices get clearly different colours; index 255 comes out light grey-white.
    """
    palette: list[int] = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((red, green, blue))
    return palette


def _open_image(path: Path) -> Image.Image:
    """``path`` opened and decoded, or a :class:`RealDataError` naming it."""
    if not path.is_file():
        raise RealDataError(f"missing file: {path}")
    return decode_image_file(path, None, "image file", lambda image: image.copy(), RealDataError)


def _read_mask(path: Path, size: tuple[int, int], n_classes: int | None) -> np.ndarray:
    """An index mask of ``size`` (width, height); class indices checked when ``n_classes`` is given."""
    image = _open_image(path)
    if image.mode not in ("P", "L"):
        raise RealDataError(f"malformed mask file: {path} has mode {image.mode!r}, not a palette PNG")
    if image.size != size:
        raise RealDataError(f"malformed mask file: {path} is {image.size}, the photo is {size}")
    mask = np.asarray(image, dtype=np.uint8)
    if n_classes is not None:
        bad = sorted({int(v) for v in np.unique(mask)} - {*range(n_classes), IGNORE_INDEX})
        if bad:
            raise RealDataError(
                f"malformed mask file: {path} has indices {bad} beyond its {n_classes} classes"
            )
    return mask


def _entry(
    meta: Mapping[str, Any], image_id: str, classes_path: Path
) -> tuple[list[str], list[tuple[int, str]]]:
    """The class names and objects of ``image_id`` from ``classes.json``, checked."""
    entry = meta.get(image_id)
    if not isinstance(entry, dict):
        raise RealDataError(f"malformed {classes_path}: no entry for image id {image_id!r}")
    names = entry.get("class_names")
    objects = entry.get("objects")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise RealDataError(f"malformed {classes_path}: {image_id!r} has no list of class_names")
    if not isinstance(objects, list):
        raise RealDataError(f"malformed {classes_path}: {image_id!r} has no list of objects")
    pairs = []
    for obj in objects:
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("index"), int)
            or obj.get("class") not in names
        ):
            raise RealDataError(f"malformed {classes_path}: {image_id!r} has a bad object {obj!r}")
        pairs.append((obj["index"], obj["class"]))
    return names, pairs


def read_real_photos(root: Path) -> list[RealImage]:
    """Read the photos and masks written by ``python -m surgery_tools.real_data``, in ``all.txt`` order.

    Raises :class:`RealDataError` naming the first missing or malformed file: a missing photo, mask,
    list or ``classes.json``; a mask that is not a palette/grey PNG, has another size than its photo
    or class indices beyond its class names; objects that do not match the instance mask.
    """
    root = Path(root)
    classes_path = root / CLASSES_FILE
    list_path = root / LIST_FILE
    for path in (list_path, classes_path):
        if not path.is_file():
            raise RealDataError(f"missing file: {path}")
    try:
        meta = json.loads(classes_path.read_text())
    except json.JSONDecodeError as error:
        raise RealDataError(f"malformed {classes_path}: not valid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise RealDataError(f"malformed {classes_path}: expected an object keyed by image id")
    ids = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    if not ids:
        raise RealDataError(f"malformed {list_path}: it lists no image ids")

    images = []
    for image_id in ids:
        class_names, objects = _entry(meta, image_id, classes_path)
        photo = _open_image(root / IMAGE_DIR / f"{image_id}.jpg").convert("RGB")
        class_mask = _read_mask(root / CLASS_DIR / f"{image_id}.png", photo.size, len(class_names))
        object_path = root / OBJECT_DIR / f"{image_id}.png"
        instance_mask = _read_mask(object_path, photo.size, None)
        present = {int(v) for v in np.unique(instance_mask)} - {0, IGNORE_INDEX}
        listed = {index for index, _ in objects}
        if present != listed:
            raise RealDataError(
                f"malformed mask file: {object_path} holds instances {sorted(present)}, "
                f"{classes_path} lists {sorted(listed)}"
            )
        images.append(RealImage(image_id, photo, class_mask, instance_mask, class_names, objects))
    return images


def read_composite_set(root: Path, limit: int | None = None) -> tuple[list[str], list[AnnotatedImage]]:
    """Read a composite set (layout in the module doc) as :class:`AnnotatedImage` records named
    ``<set>/<n:05d>``, with the class list; errors name the first bad file."""
    labels_path = root / "labels.json"
    if not labels_path.is_file():
        raise FileNotFoundError(f"not an evaluation set: {labels_path} is missing")
    meta = json.loads(labels_path.read_text())
    items = []
    for n, entry in enumerate(meta["images"][:limit]):
        image_path, mask_path = root / "images" / entry["file"], root / "masks" / entry["mask"]
        for path in (image_path, mask_path):
            if not path.is_file():
                raise FileNotFoundError(f"evaluation set {root}: missing {path}")
        image = decode_image_file(image_path, None, "image file", lambda im: im.convert("RGB"), ValueError)
        instance = decode_image_file(mask_path, None, "mask file", np.array, ValueError)
        if instance.shape != (image.height, image.width):
            raise ValueError(f"{mask_path}: mask {instance.shape} does not match image {image.size[::-1]}")
        masks: dict[str, np.ndarray] = {}
        for obj in entry["objects"]:
            part = instance == obj["index"]
            masks[obj["label"]] = masks.get(obj["label"], np.zeros_like(part)) | part
        kept = {k: v for k, v in masks.items() if v.any()}
        name = f"{root.name}/{n:05d}"
        items.append(
            AnnotatedImage(name, image, kept, caption=entry.get("caption"), vocabulary=tuple(meta["classes"]))
        )
    return list(meta["classes"]), items


def read_captions(root: Path, limit: int | None = None) -> list[str]:
    """The caption of each image of an evaluation set (``labels.json`` ``"caption"``), in order.

    Raises:
        ValueError: an image has no caption (the message names its file).
    """
    labels_path = Path(root) / "labels.json"
    if not labels_path.is_file():
        raise FileNotFoundError(f"not an evaluation set: {labels_path} is missing")
    captions = []
    for entry in json.loads(labels_path.read_text())["images"][:limit]:
        if not entry.get("caption"):
            raise ValueError(f"{labels_path}: image {entry['file']} has no caption")
        captions.append(entry["caption"])
    return captions


def default_source(model_name: str) -> str:
    """The example source that suits a model: the composites for the toy models, real photos else."""
    return "composites" if model_name.startswith("toy-") else "real"


def _real(root: Path, limit: int | None) -> tuple[list[str], list[AnnotatedImage]]:
    photos = read_real_photos(root)[:limit]
    classes: list[str] = []
    images = []
    for photo in photos:
        masks = {}
        for index, name in enumerate(photo.class_names):
            mask = photo.class_mask == index
            if name != "background" and index != IGNORE_INDEX and mask.any():
                masks[name] = mask
                if name not in classes:
                    classes.append(name)
        images.append(AnnotatedImage(photo.id, photo.image, masks, vocabulary=tuple(photo.class_names[1:])))
    return classes, images


def _folder(root: Path, limit: int | None) -> tuple[list[str], list[AnnotatedImage]]:
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {root}")
    images = []

    def read(im: Image.Image) -> Image.Image:
        im.load()  # read the pixels before the file closes
        return to_rgb(im, what=str(im.filename))

    for path in paths:
        image = decode_image_file(path, None, "image file", read, ValueError)
        images.append(AnnotatedImage(path.stem, image))
    return [], images


def example_images(
    source: str = "composites", limit: int | None = None
) -> tuple[list[str], list[AnnotatedImage]]:
    """The candidate class names of a source and its first ``limit`` images.

    Args:
        source: one of :data:`SOURCES` or a folder of images.
    Raises:
        ValueError: an unknown source that is not a folder either.
        FileNotFoundError: the source's files are missing (the message names the first one).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if source == "composites":
        return read_composite_set(data_dir() / "composites" / "seen_instances", limit)
    if source == "composites-new":
        return read_composite_set(data_dir() / "composites" / "new_instances", limit)
    if source == "real":
        return _real(data_dir() / "real", limit)
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder(path, limit)
    raise ValueError(f"unknown image source {source!r}: expected one of {SOURCES} or a folder of images")
