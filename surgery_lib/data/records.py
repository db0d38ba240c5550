"""The one annotated-image record used by the library, the notebooks and the tests."""

from __future__ import annotations

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
