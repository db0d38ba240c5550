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
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peaks at x = 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def inferno(values: np.ndarray) -> np.ndarray:
    """The perceptually uniform 'inferno' colormap: ``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    anchors = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
    rgb = np.stack([np.interp(x, anchors, _INFERNO_ANCHORS[:, c]) for c in range(3)], axis=-1)
    return (rgb + 0.5).astype(np.uint8)


COLORMAPS = {"inferno": inferno, "jet": jet}
"""The colormaps of :func:`overlay`: ``inferno`` (default) and ``jet`` (the paper's look)."""


def overlay(
    image: Image.Image,
    heat: torch.Tensor | np.ndarray,
    alpha: float = 0.7,
    cmap: str = "inferno",
    grey_image: bool = True,
) -> Image.Image:
    """Draw a ``(H, W)`` map in [0, 1] over ``image`` (resized to the map's size bilinearly).

    Each pixel's opacity is ``alpha`` times the map's value there, over a greyscale copy of the image
    (``grey_image``; False keeps its colours), as the notebooks' figures draw maps.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; expected one of {tuple(COLORMAPS)}")
    heat = heat.detach().float().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if heat.ndim != 2:
        raise ValueError(f"heat map must be (H, W), got shape {heat.shape}")
    base = image.convert("L" if grey_image else "RGB").convert("RGB")
    base = np.asarray(base.resize((heat.shape[1], heat.shape[0]), Image.BILINEAR), dtype=np.float64)
    value = np.clip(heat.astype(np.float64), 0.0, 1.0)[..., None]
    colours = COLORMAPS[cmap](value[..., 0]).astype(np.float64)
    blended = base * (1.0 - alpha * value) + colours * (alpha * value)
    return Image.fromarray((blended + 0.5).clip(0, 255).astype(np.uint8))
