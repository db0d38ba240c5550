"""A tiny synthetic cache for the toy-data and training tests: 3 classes × 2 instances per split, 2 grey
backgrounds per split, made from numpy arrays (needs neither the Debian stamps nor the real cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from surgery_tools import toy_data as toy

# Pure colours: in a composite, every pixel of an object's mask keeps its class's colour channel dominant
# (jitter changes brightness / contrast / saturation by at most 20 %; backgrounds are grey).
COLOURS = {"red square": (230, 20, 20), "green disc": (20, 230, 20), "blue bar": (20, 20, 230)}


def _square(colour: tuple[int, int, int], side: int = 40) -> Image.Image:
    """Opaque square, alpha 255 everywhere."""
    array = np.zeros((side, side, 4), dtype=np.uint8)
    array[..., :3] = colour
    array[..., 3] = 255
    return Image.fromarray(array)


def _disc(colour: tuple[int, int, int], side: int = 48) -> Image.Image:
    """Disc with a soft (linear ramp) alpha edge and random-ish RGB where alpha is 0."""
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    radius = np.hypot(yy, xx)
    alpha = np.clip((side / 2 - radius) / 4.0, 0.0, 1.0)
    array = np.zeros((side, side, 4), dtype=np.uint8)
    array[..., :3] = colour
    array[alpha == 0, :3] = (255, 255, 0)  # garbage colour under full transparency must not leak
    array[..., 3] = np.round(alpha * 255).astype(np.uint8)
    return Image.fromarray(array)


def _bar(colour: tuple[int, int, int]) -> Image.Image:
    """Opaque 60 × 16 bar in a transparent margin."""
    array = np.zeros((24, 70, 4), dtype=np.uint8)
    array[4:20, 5:65, :3] = colour
    array[4:20, 5:65, 3] = 255
    return Image.fromarray(array)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of an (H, W) bool mask by a (2r+1)² square."""
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def build_toy_cache(root: Path) -> Path:
    """A tiny cache: 3 classes × 2 instances per split, 2 grey background JPGs per split."""
    makers = {"red square": _square, "green disc": _disc, "blue bar": _bar}
    for split in toy.SPLITS:
        for name, make in makers.items():
            folder = root / "cutouts" / split / toy._class_dir(name)
            folder.mkdir(parents=True)
            make(COLOURS[name]).save(folder / "a.png")
            make(tuple(int(c * 0.8) for c in COLOURS[name])).save(folder / "b.png")
        bg_folder = root / "backgrounds" / split
        bg_folder.mkdir(parents=True)
        for k, level in enumerate((90, 160)):
            ramp = np.linspace(level - 30, level + 30, 96).astype(np.uint8)
            grey = np.repeat(np.tile(ramp, (80, 1))[..., None], 3, axis=2)
            Image.fromarray(grey).save(bg_folder / f"bg{k}.jpg", quality=95)
    return root
