"""Image input: validation, conversion to RGB, and the reference preprocessing.

Accepted images: PIL images, ``(H, W, 3)`` / ``(H, W)`` numpy arrays (uint8, or float in [0, 1]) and
``(3, H, W)`` uint8 tensors. Conversions that cannot change the meaning of an image are done
(grayscale, palette without transparency, CMYK/YCbCr -> RGB; PIL images are turned upright as their EXIF
orientation tag says); anything ambiguous is refused with an
:class:`ImageInputError` that names the problem: an alpha channel (composite it yourself first),
16-bit or 32-bit pixels (choose a scaling yourself), channel-first arrays, NaN, too small or too
large images. Size and mode are checked before any pixel is decoded (the upright size, as the EXIF
orientation says); :func:`open_image` and :func:`read_image` do the same for files, from the header,
with PIL's decompression-bomb warning and error turned into that one error. Inputs are never modified.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from os import PathLike

import numpy as np
import torch
from PIL import Image, ImageOps

from surgery_lib.model.preprocess import (
    OPENAI_MEAN,
    OPENAI_STD,
    ImageInputError,
    check_image_batch,
    image_normalisation,
    reference_transform,
)

MIN_SIDE = 16
MAX_PIXELS = 64_000_000

ImageLike = Image.Image | np.ndarray | torch.Tensor


_EXIF_ORIENTATION = 0x0112

_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90° (width and height swap)

_CONVERTIBLE = {"L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def _check_size(width: int, height: int, what: str) -> None:
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(f"{what} is {width}×{height} pixels: at least {MIN_SIDE}×{MIN_SIDE} is needed")
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"{what} is {width}×{height} pixels ({width * height / 1e6:.0f} MP), more than "
            f"{MAX_PIXELS / 1e6:.0f} MP: downscale it first (it is resized for CLIP anyway)"
        )


def _orientation(image: Image.Image, decode: bool = True) -> int:
    """The EXIF orientation tag, 1..8 (1: as stored; an unreadable or invalid tag counts as 1, as most
    viewers show it). A PNG may keep its EXIF block after the pixels, where PIL decodes the whole image to
    look: without ``decode`` such a PNG (not read yet) counts as 1."""
    if not decode and image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block: the pixels are shown as stored
        return 1
    return orientation if orientation in range(1, 9) else 1


def _check_header(image: Image.Image, what: str) -> None:
    """Check what a PIL image's header tells, without decoding a pixel: its size (upright, as the EXIF
    orientation says: 5 to 8 swap the axes) and its mode."""
    width, height = image.size
    if _orientation(image, decode=False) in _SWAPS_AXES:
        width, height = height, width
    _check_size(width, height, what)
    mode = image.mode
    if mode in _ALPHA or (mode == "P" and "transparency" in image.info):
        raise ImageInputError(
            f"{what} has mode {mode!r} with an alpha channel: composite it on a background of your "
            "choice first, e.g. Image.alpha_composite(Image.new('RGBA', im.size, 'white'), "
            "im.convert('RGBA')).convert('RGB')"
        )
    if mode != "RGB" and mode not in _CONVERTIBLE:
        raise ImageInputError(
            f"{what} has mode {mode!r} (16/32-bit or unsupported pixels): scale it to 8-bit RGB yourself, "
            "since the right scaling depends on the data"
        )


def _pil_to_rgb(image: Image.Image, what: str) -> Image.Image:
    _check_header(image, what)  # before exif_transpose decodes and copies the image
    if _orientation(image) != 1:
        image = ImageOps.exif_transpose(image)  # a new image; the input is not modified
    return image if image.mode == "RGB" else image.convert("RGB")


def _bomb_message(error: Exception, what: str) -> str:
    found = re.search(r"\((\d+) pixels\)", str(error))
    if found is None:
        return (
            f"{what} is larger than PIL's decompression-bomb limit, and more than {MAX_PIXELS / 1e6:.0f} MP"
        )
    pixels = int(found.group(1))
    if pixels > MAX_PIXELS:
        return (
            f"{what} declares {pixels} pixels ({pixels / 1e6:.0f} MP), more than {MAX_PIXELS / 1e6:.0f} MP: "
            "downscale it first (it is resized for CLIP anyway)"
        )
    return (
        f"{what} declares {pixels} pixels ({pixels / 1e6:.0f} MP), more than PIL.Image.MAX_IMAGE_PIXELS "
        f"({Image.MAX_IMAGE_PIXELS}) allows: raise that limit for files you trust"
    )


def open_image(path: str | PathLike, what: str | None = None) -> Image.Image:
    """Open an image file lazily (PIL reads the header only) and check what the header tells: the size
    (upright, as the EXIF orientation says) within ``MIN_SIDE`` .. ``MAX_PIXELS`` and the mode, as
    :func:`to_rgb` would, before any pixel is decoded. PIL's decompression-bomb warning and error become
    one :class:`ImageInputError` naming ``what`` (default: the path).

    Errors of opening (missing file, ``PIL.UnidentifiedImageError``) are PIL's. Close the image (it is
    a context manager) or pass it to :func:`to_rgb`; :func:`read_image` does both.
    """
    what = str(path) if what is None else what
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as error:
            raise ImageInputError(_bomb_message(error, what)) from None
    try:
        _check_header(image, what)
    except BaseException:
        image.close()
        raise
    return image


def read_image(path: str | PathLike, what: str | None = None) -> Image.Image:
    """An image file as an upright RGB PIL image, decoded (the file is closed): :func:`open_image`
    (the header checked before decoding), then :func:`to_rgb`."""
    what = str(path) if what is None else what
    image = open_image(path, what)
    try:
        rgb = to_rgb(image, what)
        if rgb is image and getattr(image, "n_frames", 1) > 1:
            rgb = image.copy()  # the first frame; a multi-frame file would stay open
        rgb.load()  # a single-frame file is closed once read
    except BaseException:
        image.close()
        raise
    if rgb is not image:
        image.close()
    return rgb


def _array_to_rgb(array: np.ndarray, what: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        raise ImageInputError(
            f"{what} has shape {array.shape}, which looks channel-first: pass (H, W, 3) "
            "(e.g. array.transpose(1, 2, 0))"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        extra = (
            " (4 channels: an alpha channel? drop or composite it first)" if array.shape[-1:] == (4,) else ""
        )
        raise ImageInputError(f"{what} has shape {array.shape}: expected (H, W, 3) or (H, W){extra}")
    height, width = array.shape[:2]
    _check_size(width, height, what)
    if array.dtype == np.uint8:
        data = array
    elif array.dtype in (np.float32, np.float64, np.float16):
        if not np.isfinite(array).all():
            raise ImageInputError(f"{what} contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ImageInputError(
                f"{what} is a float array with values in [{array.min():.3g}, {array.max():.3g}]: "
                "expected [0, 1] (or pass uint8)"
            )
        data = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageInputError(
            f"{what} has dtype {array.dtype}: expected uint8, or float in [0, 1] "
            "(16-bit images must be scaled to 8 bits by you, since the right scaling depends on the data)"
        )
    return Image.fromarray(np.ascontiguousarray(data)).convert("RGB")


def to_rgb(image: ImageLike, what: str = "image") -> Image.Image:
    """An RGB PIL image from a PIL image, numpy array or uint8 ``(3, H, W)`` tensor (see module doc)."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, what)
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ImageInputError(
                f"{what} is a {image.dtype} tensor of shape {tuple(image.shape)}: to preprocess, pass a "
                "uint8 (3, H, W) tensor; an already normalised (B, 3, H, W) float batch goes to the "
                "encoders directly"
            )
        return _array_to_rgb(image.permute(1, 2, 0).cpu().numpy(), what)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, what)
    raise ImageInputError(f"{what} is a {type(image).__name__}: expected a PIL image, numpy array or tensor")


def preprocess_images(
    images: ImageLike | Sequence[ImageLike],
    size: int | tuple[int, int] = 224,
    transform=None,
    model: object | None = None,
) -> torch.Tensor:
    """Validate, convert to RGB and preprocess one image or a list of images.

    Args:
        images: see :func:`to_rgb`.
        size: resize target for the reference transform, ``n`` or ``(H, W)``.
        transform: PIL -> tensor transform to use instead (e.g. open_clip's own preprocessing).
        model: the model the images are for: the reference transform then normalises with its mean and
            std (:func:`image_normalisation`; SigLIP's differ from CLIP's, the default).
    Returns:
        ``(B, 3, H, W)`` float32.
    """
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    if isinstance(images, (str, bytes, PathLike)):
        raise TypeError(
            f"preprocess_images takes images, not the path {images!r}: open it first (PIL.Image.open(path))"
        )
    if images is None or not isinstance(images, Iterable):
        raise TypeError(
            f"preprocess_images takes a PIL image, an array, a uint8 tensor or a list of them, "
            f"got {type(images).__name__}"
        )
    images = list(images)
    if not images:
        raise ImageInputError("the image list is empty")
    transform = transform or reference_transform(size, *image_normalisation(model))
    return torch.stack([transform(to_rgb(im, f"image {i}")) for i, im in enumerate(images)])


__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "ImageInputError",
    "check_image_batch",
    "image_normalisation",
    "open_image",
    "preprocess_images",
    "read_image",
    "reference_transform",
    "to_rgb",
]
