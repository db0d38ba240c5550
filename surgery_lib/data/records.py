"""The one annotated-image record used by the library, the notebooks and the tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class AnnotatedImage:
    """An RGB image and what is known about it.

    Attributes:
        name: an identifier (``seen_instances/00003``, a file stem, an image id).
        image: the RGB PIL image.
        masks: one ``(H, W)`` boolean mask per class present in it (empty when unknown).
        caption: a caption of the image, where the set has one.
        vocabulary: the class names of the set the image comes from (the candidates a model is asked
            about); empty when unknown.
    """

    name: str
    image: Image.Image
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    caption: str | None = None
    vocabulary: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        """The classes present (those with a mask)."""
        return list(self.masks)

    def describe(self) -> str:
        """The image's caption; without one, a caption naming the classes present
        (``"a photo of a cat, a dog and a car."``; ``"a photo."`` when none is known)."""
        if self.caption:
            return self.caption
        names = [f"a {label}" for label in self.labels]
        if not names:
            return "a photo."
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"a photo of {listed}."

    def target_mask(self, target: str) -> np.ndarray:
        """The union of the masks of ``"a"`` or ``"a+b"`` (the same target rule as
        :func:`surgery_lib.maps.sam.parse_target`), ``(H, W)`` bool.

        Raises:
            ValueError: a named class has no mask in this image (the message lists the known ones).
        """
        names = [t.strip() for t in target.split("+")]
        missing = [n for n in names if n not in self.masks]
        if missing or not all(names):
            raise ValueError(
                f"target {target!r}: no mask for {missing or names} in {self.name}; known: {self.labels}"
            )
        return np.any([self.masks[n] for n in names], axis=0)


def size_groups(items: Sequence[AnnotatedImage], batch: int = 16) -> list[list[int]]:
    """Indices of consecutive items of the same image size, at most ``batch`` per group (images of one
    size can be stacked into one batch)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    groups: list[list[int]] = []
    for i, item in enumerate(items):
        if not groups or len(groups[-1]) == batch or items[groups[-1][0]].image.size != item.image.size:
            groups.append([])
        groups[-1].append(i)
    return groups
