"""Annotated example images for the notebooks: the shipped composites and real photos, one format.

Sources (all offline, under the repository's ``data/``):

* ``"composites"``: held-out composites of training instances on new backgrounds
  (``data/composites/seen_instances``), the classes the embedded toy models know;
* ``"composites-new"``: composites of held-out instances (``data/composites/new_instances``);
* ``"real"``: the real annotated photos (``data/real``, PASCAL VOC layout) — for real CLIP weights;
* any folder path: every ``.jpg``/``.jpeg``/``.png`` in it, without masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .images import to_rgb

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SOURCES: tuple[str, ...] = ("composites", "composites-new", "real")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class AnnotatedImage:
    """An RGB image and, where known, one ``(H, W)`` boolean mask per class present in it."""

    name: str
    image: Image.Image
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The classes present (those with a mask)."""
        return list(self.masks)


def default_source(model_name: str) -> str:
    """The example source that suits a model: the composites for the toy models, real photos else."""
    return "composites" if model_name.startswith("toy-") else "real"


def _composites(root: Path, limit: int | None) -> tuple[list[str], list[AnnotatedImage]]:
    from .toy.evaluate import read_set

    classes, items = read_set(root, limit)
    return classes, [AnnotatedImage(f"{root.name}/{i:05d}", it.image, it.masks) for i, it in enumerate(items)]


def _real(root: Path, limit: int | None) -> tuple[list[str], list[AnnotatedImage]]:
    from .real_data import IGNORE_INDEX, load_real

    photos = load_real(root)[:limit]
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
        images.append(AnnotatedImage(photo.id, photo.image, masks))
    return classes, images


def _folder(root: Path, limit: int | None) -> tuple[list[str], list[AnnotatedImage]]:
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {root}")
    images = []
    for path in paths:
        with Image.open(path) as im:
            im.load()  # read the pixels before the file closes
            images.append(AnnotatedImage(path.stem, to_rgb(im, what=str(path))))
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
        return _composites(DATA_DIR / "composites" / "seen_instances", limit)
    if source == "composites-new":
        return _composites(DATA_DIR / "composites" / "new_instances", limit)
    if source == "real":
        return _real(DATA_DIR / "real", limit)
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder(path, limit)
    raise ValueError(f"unknown image source {source!r}: expected one of {SOURCES} or a folder of images")
