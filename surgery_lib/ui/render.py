"""Minimal heat-map rendering with PIL and numpy (no plotting library needed).

The analysis notebooks use matplotlib; this module only serves the command line.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def jet(values: np.ndarray) -> np.ndarray:
    """The 'jet' colormap: ``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 RGB."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peaks at x = 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Image.Image, heat: torch.Tensor | np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a ``(H, W)`` map in [0, 1] over ``image`` (resized to the map's size bilinearly)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if heat.ndim != 2:
        raise ValueError(f"heat map must be (H, W), got shape {heat.shape}")
    base = image.convert("RGB").resize((heat.shape[1], heat.shape[0]), Image.BILINEAR)
    return Image.blend(base, Image.fromarray(jet(heat)), alpha)
