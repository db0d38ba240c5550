"""What the image tower takes: CLIP's normalisation, the reference preprocessing, batch checks.

Owned by the model layer because loading a model builds its preprocessing; :mod:`surgery_lib.maps.images`
re-exports these names for users.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class ImageInputError(ValueError):
    """An image that cannot be used as it is; the message says why and what to do."""


def resize_size(size: object) -> tuple[int, int]:
    """``size`` (``n`` or ``(H, W)``, positive integers, NumPy integers accepted) as ``(H, W)``; a
    ``ValueError`` naming ``size`` otherwise (floats, booleans, strings, zero or negative sides)."""
    message = f"size must be a positive integer n or a pair (H, W) of positive integers, got {size!r}"
    if isinstance(size, (str, bytes)):
        raise ValueError(message)
    try:
        items = tuple(size)  # type: ignore[arg-type]
    except TypeError:  # one number
        items = (size, size)
    if len(items) != 2 or any(isinstance(s, bool) for s in items):
        raise ValueError(message)
    try:
        h, w = (operator.index(s) for s in items)
    except TypeError:
        raise ValueError(message) from None
    if min(h, w) < 1:
        raise ValueError(message)
    return h, w


def image_normalisation(model: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std ``model``'s image tower was trained with: open_clip records them in
    ``model.visual.preprocess_cfg`` (SigLIP: 0.5, 0.5; OpenAI CLIP: :data:`OPENAI_MEAN`,
    :data:`OPENAI_STD`); a model without that record gets OpenAI's."""
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    mean, std = cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def reference_transform(
    size: int | tuple[int, int] = 224,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
):
    """The reference code's preprocessing: ``Resize((n, n))`` bicubic (no crop), then normalisation with
    ``mean`` / ``std`` (CLIP's by default; pass :func:`image_normalisation` ``(model)`` for other towers).

    ``size`` may be ``(H, W)`` for a non-square resize. Returns a torchvision transform
    PIL image -> ``(3, H, W)`` float tensor.
    """
    from torchvision import transforms as T

    hw = resize_size(size)
    return T.Compose(
        [
            T.Resize(hw, interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )


def check_image_batch(images: torch.Tensor, min_hw: tuple[int, int] = (1, 1)) -> None:
    """Check a preprocessed batch: ``(B, 3, H, W)`` floating point, finite, at least ``min_hw``."""
    if not isinstance(images, torch.Tensor):
        raise ImageInputError(
            f"expected a preprocessed (B, 3, H, W) tensor, got {type(images).__name__}: "
            "use surgery_lib.preprocess_images first"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        hint = " (add a batch dimension: images[None])" if images.ndim == 3 else ""
        raise ImageInputError(f"expected a (B, 3, H, W) image batch, got shape {tuple(images.shape)}{hint}")
    if images.shape[0] == 0:
        raise ImageInputError("the image batch is empty")
    if not images.is_floating_point():
        raise ImageInputError(
            f"expected a normalised floating-point batch, got dtype {images.dtype}: use preprocess_images"
        )
    if not torch.isfinite(images).all():
        raise ImageInputError("the image batch contains NaN or infinite values")
    if images.shape[2] < min_hw[0] or images.shape[3] < min_hw[1]:
        raise ImageInputError(
            f"images of {images.shape[2]}×{images.shape[3]} pixels are smaller than one token "
            f"({min_hw[0]}×{min_hw[1]} pixels) of this model"
        )
