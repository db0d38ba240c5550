"""Minimal heat-map rendering with PIL and numpy (no plotting library needed).

The analysis notebooks use matplotlib (:mod:`surgery_lib.ui.viz`); this module serves the command
line with the same look: a perceptual colormap (``inferno``, or the paper's ``jet``) drawn with
value-weighted opacity over a greyscale copy of the image, so a map's low values leave the image
untinted and the colours belong to the map alone.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_INFERNO_ANCHORS = np.array(
    [
        [0, 0, 4], [11, 7, 36], [33, 12, 74], [61, 9, 101], [87, 16, 110], [113, 25, 110],
        [138, 34, 106], [163, 44, 97], [188, 55, 84], [210, 70, 68], [228, 90, 49], [241, 115, 29],
        [249, 142, 9], [252, 172, 17], [249, 203, 53], [242, 234, 105], [252, 255, 164],
    ],
    dtype=np.float64,
)  # fmt: skip
"""matplotlib's ``inferno`` sampled at 17 evenly spaced values (0, 1/16, ..., 1), as RGB in 0..255;
linear interpolation between them stays within 7/255 of the full colormap."""


def jet(values: np.ndarray) -> np.ndarray:
    """The 'jet' colormap: ``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 RGB."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    out = np.empty((*x.shape, 3), dtype=np.uint8)
    for c, centre in enumerate((3.0, 2.0, 1.0)):  # red, green, blue peaks at x = 3/4, 1/2, 1/4
        out[..., c] = np.clip(1.5 - np.abs(4.0 * x - centre), 0.0, 1.0) * 255.0 + 0.5  # one channel at a time
    return out


def inferno(values: np.ndarray) -> np.ndarray:
    """The perceptually uniform 'inferno' colormap: ``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8."""
    x = np.asarray(values)
    x = np.clip(x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64), 0.0, 1.0)
    anchors = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
    out = np.empty((*x.shape, 3), dtype=np.uint8)
    for c in range(3):  # one channel at a time (np.interp works in float64)
        out[..., c] = np.interp(x, anchors, _INFERNO_ANCHORS[:, c]) + 0.5
    return out


COLORMAPS = {"inferno": inferno, "jet": jet}
"""The colormaps of :func:`overlay`: ``inferno`` (default) and ``jet`` (the paper's look)."""

MAX_OVERLAY_SIDE = 2048
"""The longest side, in pixels, that ``surgery explain`` draws an overlay at: larger images are drawn
scaled down (aspect ratio kept), so memory and time stay bounded whatever the input's size (a map
holds a few dozen tokens' worth of detail; 2048 px is more than any screen or page shows)."""


def overlay_size(width: int, height: int, max_side: int = MAX_OVERLAY_SIDE) -> tuple[int, int]:
    """``(width, height)`` scaled down so that the longer side is at most ``max_side`` (aspect ratio
    kept, each side at least 1 pixel); unchanged when it fits already."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def overlay(
    image: Image.Image,
    heat: torch.Tensor | np.ndarray,
    alpha: float = 0.7,
    cmap: str = "inferno",
    grey_image: bool = True,
) -> Image.Image:
    """Draw a ``(H, W)`` map in [0, 1] over ``image`` (resized to the map's size bilinearly).

    Each pixel's opacity is ``alpha`` times the map's value there, over a greyscale copy of the image
    (``grey_image``; False keeps its colours), as the notebooks' figures draw maps. Computed in
    float32 at the map's size (the image is resized before anything else), so the memory is a few
    times the map's pixels.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; expected one of {tuple(COLORMAPS)}")
    heat = heat.detach().float().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if heat.ndim != 2:
        raise ValueError(f"heat map must be (H, W), got shape {heat.shape}")
    size = (heat.shape[1], heat.shape[0])
    if image.size != size:  # resize first: at most the map's pixels from here on
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
        image = image.resize(size, Image.BILINEAR)
    blended = np.array(image.convert("L" if grey_image else "RGB").convert("RGB"), dtype=np.float32)
    value = np.clip(heat.astype(np.float32, copy=False), 0.0, 1.0)
    weight = (np.float32(alpha) * value)[..., None]
    blended *= np.float32(1.0) - weight  # in place, float32: base · (1 − α·v) + colour · α·v
    blended += COLORMAPS[cmap](value) * weight
    blended += np.float32(0.5)
    return Image.fromarray(np.clip(blended, 0, 255, out=blended).astype(np.uint8))
