"""Evaluation datasets read from their standard on-disk layouts (nothing is downloaded).

Every loader returns a :class:`Dataset`: a deterministically sorted list of entries whose files were
checked to exist when it was built, read lazily one :class:`Sample` at a time. A missing folder or
file raises :class:`DatasetError` naming the first bad path; so does a listed entry (``labels.json``,
NUS-WIDE list files, VOC id lists) that would leave the dataset folder (an absolute path or ``..``),
and an image or label file that is a symbolic link resolving outside its folder (``images/``,
``JPEGImages/``, …; the folder itself may be a link, containment is checked where it resolves). A label
map that cannot be read or holds values the dataset does not define raises it when the sample is read;
so does an image or label map over the pixel cap (:data:`~surgery_lib.maps.images.MAX_PIXELS`, 64 MP,
checked from the header before decoding; PIL's decompression-bomb error and warning become a
:class:`DatasetError` naming the file too).

Class prompts: :func:`prompt_name`; renames meant for one dataset apply to that dataset only, and two
classes of a dataset that prompt to the same text are refused (:class:`Dataset`).

Accepted layouts (``root`` may also be a parent folder named in brackets):

* ``voc`` / ``voc20``: PASCAL VOC 2012, ``[VOCdevkit/]VOC2012/`` with ``JPEGImages/<id>.jpg``,
  ``SegmentationClass/<id>.png`` (palette PNG: 0 background, 1..20 classes, 255 void) and
  ``ImageSets/Segmentation/<split>.txt``. ``voc`` has 21 classes (background included); ``voc20``
  the 20 objects, background pixels ignored (as the training-free literature's "VOC20").
* ``context`` / ``context59``: PASCAL Context in mmsegmentation's layout, ``[VOCdevkit/]VOC2010/``
  with ``JPEGImages/``, ``SegmentationClassContext/<id>.png`` (0 background, 1..59 classes, 255
  ignore) and ``ImageSets/SegmentationContext/<split>.txt``. ``context``: 60 classes with background;
  ``context59``: 59 classes, background ignored (mmseg's ``reduce_zero_label``).
* ``coco_stuff``: COCO-Stuff 164k in mmsegmentation's layout, ``[coco_stuff164k/]`` with
  ``images/<split>2017/<id>.jpg`` and ``annotations/<split>2017/<id>_labelTrainIds.png`` (171 train
  ids: 0..79 the things, 80..170 the stuff; 255 ignore), as written by mmseg's ``coco_stuff164k.py``.
* ``coco_object``: the same files; the 80 things become classes 1..80 and every stuff pixel becomes
  background 0 (81 classes; 255 stays ignored), as the training-free segmentation literature derives
  COCO-Object from the COCO-Stuff label maps.
* ``cityscapes``: ``[cityscapes/]leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (19 train ids, 255 ignore; written by
  ``cityscapesscripts``' ``createTrainIdLabelImgs``). Image ids are ``<city>/<name>``.
* ``ade20k``: ``[ADEChallengeData2016/]images/<split>/<id>.jpg`` and ``annotations/<split>/<id>.png``
  (0 "other" -> ignored, 1..150 -> 0..149, like mmseg's ``reduce_zero_label``). Split ``val`` reads the
  ``validation`` folders.
* ``nus_wide``: multi-label only, no maps: ``images/<relative path>`` and ``<split>.txt`` in ``root``,
  one line per image: the path relative to ``images/`` followed by its concepts, separated by
  whitespace (``actor/0001_2124494179.jpg sky clouds``; a line with a path only is an image without
  labels). Concepts are the 81 NUS-WIDE names of :data:`NUS_WIDE_CLASSES` (``Concepts81.txt``).
* ``composites``: this project's held-out composites (``data/composites/<set>``):
  ``images/<n>.jpg``, ``masks/<n>.png`` (instance indices) and ``labels.json`` (see
  :mod:`surgery_lib.eval.sets`); class ``k + 1`` is ``labels.json``'s class ``k``, 0 background.
* ``real``: ``data/real`` (:mod:`surgery_tools.real_data`), read by the VOC loader with the split
  ``all``; each photo's class indices are mapped onto one union vocabulary (``background`` first) and
  :attr:`Sample.vocabulary` holds the classes of the photo's own subset (the candidates to predict).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from surgery_lib.maps.images import MAX_PIXELS

_T = TypeVar("_T")

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

CONTEXT59_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
    "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
    "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road",
    "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train",
    "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

COCO_THINGS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

COCO_STUFF: tuple[str, ...] = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone",
    "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

NUS_WIDE_CLASSES: tuple[str, ...] = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars", "castle",
    "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake", "elk", "fire",
    "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier", "grass", "harbor", "horses",
    "house", "lake", "leaf", "map", "military", "moon", "mountain", "nighttime", "ocean", "person", "plane",
    "plants", "police", "protest", "railroad", "rainbow", "reflection", "road", "rocks", "running",
    "sand", "sign", "sky", "snow", "soccer", "sports", "statue", "street", "sun", "sunset", "surf",
    "swimmers", "tattoo", "temple", "tiger", "tower", "town", "toys", "train", "tree", "valley", "vehicle",
    "water", "waterfall", "wedding", "whales", "window", "zebra",
)  # fmt: skip

# Readable names given to the text encoder where a dataset's identifier is not plain English.
_PROMPT_NAMES: dict[str, str] = {
    "aeroplane": "aeroplane",
    "diningtable": "table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
    "bedclothes": "bedclothes",
    "motorbike": "motorbike",
    "building-other": "building",
    "ceiling-other": "ceiling",
    "ceiling-tile": "ceiling tile",
    "desk-stuff": "desk",
    "door-stuff": "door",
    "floor-marble": "marble floor",
    "floor-other": "floor",
    "floor-stone": "stone floor",
    "floor-tile": "tile floor",
    "floor-wood": "wooden floor",
    "food-other": "food",
    "furniture-other": "furniture",
    "ground-other": "ground",
    "mirror-stuff": "mirror",
    "plant-other": "plant",
    "playingfield": "playing field",
    "sky-other": "sky",
    "solid-other": "solid",
    "structural-other": "structure",
    "textile-other": "textile",
    "wall-brick": "brick wall",
    "wall-concrete": "concrete wall",
    "wall-other": "wall",
    "wall-panel": "panel wall",
    "wall-stone": "stone wall",
    "wall-tile": "tile wall",
    "wall-wood": "wooden wall",
    "water-other": "water",
    "waterdrops": "water drops",
    "window-blind": "window blind",
    "window-other": "window",
    "windowpane": "window",
    "crt screen": "crt screen",
    "ashcan": "trash can",
}

# Renames that hold for one dataset only (dataset name -> {class identifier -> text}), applied on top of
# ``_PROMPT_NAMES``. PASCAL Context has both "track" and "truck": a global rename would give the two
# the same text features, so that one is never predicted (:class:`Dataset` refuses that).
_DATASET_PROMPT_NAMES: dict[str, dict[str, str]] = {
    # data/real's street subset: labelme's "track" is the truck (data/real/README.md)
    "real": {"track": "truck"},
}

DATASETS: tuple[str, ...] = (
    "voc",
    "voc20",
    "context",
    "context59",
    "coco_stuff",
    "coco_object",
    "cityscapes",
    "ade20k",
    "nus_wide",
    "composites",
    "real",
)


class DatasetError(ValueError):
    """A dataset folder is missing or malformed; the message names the first bad file or folder."""


def prompt_name(name: str, dataset: str | None = None) -> str:
    """The text given to the text encoder for a class identifier (``"pottedplant"`` -> ``"potted plant"``).

    Underscores become spaces; a few dataset spellings are rewritten (see ``_PROMPT_NAMES``), and a few
    only in the ``dataset`` they were meant for (``_DATASET_PROMPT_NAMES``: ``real``'s ``"track"`` is a
    truck, PASCAL Context's is a track).
    """
    renames = _DATASET_PROMPT_NAMES.get(dataset, {}) if dataset is not None else {}
    return renames.get(name, _PROMPT_NAMES.get(name, name)).replace("_", " ")


def _prompt_key(prompt: str) -> str:
    """What the text encoder sees of a prompt: CLIP's tokenizer lowercases and collapses whitespace."""
    return " ".join(prompt.lower().split())


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
        image_id: the dataset's id of the image (unique, sorted order).
        image_path: the image file.
        image: the image, RGB.
        label: ``(H, W)`` int64 class indices of the image, ``ignore_index`` where not annotated;
            ``None`` for multi-label datasets.
        tags: ``(K,)`` int64 multi-hot class vector for multi-label datasets; ``None`` otherwise.
        vocabulary: indices of the classes that can occur in this image (the candidates to predict),
            background excluded; ``None``: all the dataset's classes.
        fingerprint: sha256 digests of the bytes that were decoded (``"image"``, ``"label"`` when the
            dataset has label maps) and of the image's entry (``"entry"``: id, label mapping, tags,
            vocabulary); equal to :meth:`Dataset.fingerprint` of its index.
    """

    image_id: str
    image_path: Path
    image: Image.Image
    label: np.ndarray | None
    tags: np.ndarray | None
    vocabulary: tuple[int, ...] | None
    fingerprint: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class _Entry:
    image_id: str
    image_path: Path
    label_path: Path | None = None
    lut: np.ndarray | None = None  # label value (0..255) -> class index; -1: not a valid value
    tags: tuple[int, ...] | None = None
    vocabulary: tuple[int, ...] | None = None


@dataclass(frozen=True, eq=False)
class Dataset:
    """A sorted, validated list of images with their annotations.

    Attributes:
        name: the loader's name (see :data:`DATASETS`).
        root: the folder that was read.
        class_names: index -> class identifier.
        prompts: index -> text for the text encoder (:func:`prompt_name`).
        background: index of the background class, ``None`` when the dataset has none.
        ignore_index: label value of pixels that are not evaluated.
        multilabel_only: ``True`` when the dataset has image-level tags and no label maps.
        sources: the list and label files the entries were read from (``labels.json``, id lists).

    Two classes whose prompts are the same text (after lowercasing and collapsing whitespace, as CLIP's
    tokenizer does) raise :class:`DatasetError` naming both: their text features would be identical and
    one of them could never be predicted.
    """

    name: str
    root: Path
    class_names: tuple[str, ...]
    background: int | None
    ignore_index: int
    entries: tuple[_Entry, ...]
    multilabel_only: bool = False
    prompts: tuple[str, ...] = field(default=())
    sources: tuple[Path, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.prompts:
            object.__setattr__(self, "prompts", tuple(prompt_name(c, self.name) for c in self.class_names))
        seen: dict[str, str] = {}
        for name, prompt in zip(self.class_names, self.prompts, strict=True):
            first = seen.get(_prompt_key(prompt))
            seen[_prompt_key(prompt)] = name
            if first is not None:
                raise DatasetError(
                    f"dataset {self.name} at {self.root}: classes {first!r} and {name!r} are prompted as the "
                    f"same text {prompt!r}: they would get identical text features and one of them could "
                    "never be predicted; rename one of them"
                )

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    @property
    def ids(self) -> list[str]:
        """Image ids in order."""
        return [e.image_id for e in self.entries]

    @property
    def foreground(self) -> tuple[int, ...]:
        """Indices of all classes except the background."""
        return tuple(i for i in range(len(self.class_names)) if i != self.background)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        data = _read_bytes(entry.image_path, "image file")
        image = _open_rgb(entry.image_path, data)
        fingerprint = {"image": hashlib.sha256(data).hexdigest()}
        label = tags = None
        if entry.label_path is not None:
            data = _read_bytes(entry.label_path, "label map")
            label = _read_label(entry.label_path, entry.lut, (image.height, image.width), data)
            fingerprint["label"] = hashlib.sha256(data).hexdigest()
        if entry.tags is not None:
            tags = np.zeros(len(self.class_names), dtype=np.int64)
            tags[list(entry.tags)] = 1
        fingerprint["entry"] = _entry_sha256(entry)
        return Sample(entry.image_id, entry.image_path, image, label, tags, entry.vocabulary, fingerprint)

    def fingerprint(self, index: int) -> dict[str, str]:
        """sha256 digests of image ``index``'s files and entry, as :attr:`Sample.fingerprint`, without
        decoding the images: ``{"image", "label" (with label maps), "entry"}``. Content, not ``mtime``:
        a file touched without a change keeps its digest, an edit that keeps size and ``mtime`` does not."""
        entry = self.entries[index]
        found = {"image": _file_sha256(entry.image_path, "image file")}
        if entry.label_path is not None:
            found["label"] = _file_sha256(entry.label_path, "label map")
        found["entry"] = _entry_sha256(entry)
        return found


# ---------------------------------------------------------------------------------------------------
# helpers


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise DatasetError(f"missing {what}: {path}") from err
    except OSError as err:
        raise DatasetError(f"malformed {what}: {path} ({err})") from err


def _file_sha256(path: Path, what: str) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as err:
        raise DatasetError(f"missing {what}: {path}") from err
    except OSError as err:
        raise DatasetError(f"malformed {what}: {path} ({err})") from err
    return digest.hexdigest()


def _entry_sha256(entry: _Entry) -> str:
    """sha256 of what an entry says about its image beyond the files: id, label mapping, tags, vocabulary."""
    digest = hashlib.sha256(json.dumps([entry.image_id, entry.tags, entry.vocabulary]).encode())
    digest.update(b"" if entry.lut is None else entry.lut.astype("<i8").tobytes())
    return digest.hexdigest()


def decode_image_file(
    path: Path,
    data: bytes | None,
    what: str,
    read: Callable[[Image.Image], _T],
    error: type[ValueError] = DatasetError,
) -> _T:
    """``read(image)`` of the image file ``path`` (decoded from ``data`` when given); an ``error``
    (default :class:`DatasetError`) naming the file when it is missing, malformed or over the pixel cap
    (:data:`~surgery_lib.maps.images.MAX_PIXELS`, checked from the header before decoding; PIL's own
    ``DecompressionBombError`` / ``DecompressionBombWarning``, when its limit is lower, become it too)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise error(
                        f"{what} too large: {path} is {width}×{height} pixels ({width * height / 1e6:.0f} "
                        f"MP), more than {MAX_PIXELS / 1e6:.0f} MP: downscale it first"
                    )
                return read(im)
    except FileNotFoundError as err:
        raise error(f"missing {what}: {path}") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise error(f"{what} too large: {path} is refused as a decompression bomb ({err})") from err
    except (UnidentifiedImageError, OSError) as err:
        raise error(f"malformed {what}: {path} ({err})") from err


def _open_rgb(path: Path, data: bytes | None = None) -> Image.Image:
    return decode_image_file(path, data, "image file", lambda im: im.convert("RGB"))


def _label_values(path: Path, im: Image.Image) -> np.ndarray:
    if im.mode not in ("P", "L"):
        raise DatasetError(f"malformed label map: {path} has mode {im.mode!r}, expected 8-bit P or L")
    return np.asarray(im, dtype=np.uint8)


def _read_label(
    path: Path, lut: np.ndarray | None, hw: tuple[int, int], data: bytes | None = None
) -> np.ndarray:
    """``(H, W)`` int64 class map of an 8-bit (palette or grey) PNG, through ``lut``."""
    values = decode_image_file(path, data, "label map", lambda im: _label_values(path, im))
    if values.shape != hw:
        raise DatasetError(f"malformed label map: {path} is {values.shape[::-1]}, its image is {hw[::-1]}")
    if lut is None:
        return values.astype(np.int64)
    out = lut[values]
    if (out < 0).any():
        bad = sorted({int(v) for v in np.unique(values[out < 0])})
        raise DatasetError(f"malformed label map: {path} holds values {bad} that are not classes")
    return out


def _lut(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry table value -> class index; values not in ``mapping`` map to -1 (invalid)."""
    lut = np.full(256, -1, dtype=np.int64)
    for value, index in mapping.items():
        lut[value] = index
    return lut


def _identity_lut(num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    return _lut({**{i: i for i in range(num_classes)}, ignore_index: ignore_index})


def _find_root(root: Path, marker: str, parents: Sequence[str]) -> Path:
    """``root`` or ``root/<parent>`` that holds ``marker``; an error names every place looked at."""
    candidates = [root, *(root / p for p in parents)]
    for candidate in candidates:
        if (candidate / marker).is_dir():
            return candidate
    looked = ", ".join(str(c / marker) for c in candidates)
    raise DatasetError(f"missing folder: {root / marker} (looked for {looked})")


def _need_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DatasetError(f"missing folder: {path}")
    return path


def _need_file(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"missing file: {path}")
    return path


def _inside(base: Path, entry: object, where: str) -> Path:
    """``base / entry`` for a relative path ``entry`` that stays inside ``base``; an absolute path, a
    ``..`` part or a non-string raises :class:`DatasetError` naming the entry and ``where`` it is listed."""
    text = entry if isinstance(entry, str) else None
    parts = PurePosixPath(text.replace("\\", "/")).parts if text else ()
    if (
        not text
        or PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or PureWindowsPath(text).drive
        or ".." in parts
    ):
        raise DatasetError(
            f"malformed {where}: entry {entry!r} is not a relative path inside {base} "
            "(absolute paths and '..' are refused)"
        )
    return base / text


def _contained(folder: Path, path: Path, where: str) -> Path:
    """``path`` (a file of ``folder``) when it resolves, following symbolic links, inside ``folder``'s own
    resolved path; a :class:`DatasetError` naming the file and its target otherwise. A linked folder
    (``images -> /mnt/disk/images``) is fine: containment is checked against where it resolves."""
    inside, real = folder.resolve(), path.resolve()
    if real != inside and inside not in real.parents:
        raise DatasetError(
            f"malformed {where}: {path} is a symbolic link to {real}, outside {inside} (links that leave "
            "the dataset's folders are refused: link the whole folder instead, or copy the file)"
        )
    return path


def _read_ids(list_file: Path) -> list[str]:
    ids = [line.strip() for line in _need_file(list_file).read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"malformed list file: {list_file} lists no image ids")
    return sorted(ids)


def _paired(
    image_dir: Path, label_dir: Path, image_glob: str, to_label: Callable[[Path], Path], lut: np.ndarray
) -> list[_Entry]:
    """Entries for every image under ``image_dir`` (sorted by relative path) with its label file."""
    _need_dir(image_dir)
    _need_dir(label_dir)
    images = sorted(image_dir.glob(image_glob))
    if not images:
        raise DatasetError(f"malformed folder: {image_dir} holds no {image_glob} images")
    entries = []
    for path in images:
        _contained(image_dir, path, f"folder {image_dir}")
        label = to_label(path)
        _need_file(_contained(label_dir, label, f"folder {label_dir}"))
        entries.append(_Entry(path.relative_to(image_dir).as_posix().rsplit(".", 1)[0], path, label, lut))
    return entries


# ---------------------------------------------------------------------------------------------------
# loaders


def load_voc(root: Path, split: str = "val", with_background: bool = True) -> Dataset:
    """PASCAL VOC 2012 segmentation (see the module doc for the layout)."""
    base = _find_root(Path(root), "JPEGImages", ["VOC2012", "VOCdevkit/VOC2012"])
    _need_dir(base / "SegmentationClass")
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    ids = _read_ids(list_file)
    if with_background:
        names, background, lut = VOC_CLASSES, 0, _identity_lut(21)
    else:
        names, background = VOC_CLASSES[1:], None
        lut = _lut({0: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX, **{i: i - 1 for i in range(1, 21)}})
    entries = _voc_entries(base, ids, "SegmentationClass", lut, list_file)
    name = "voc" if with_background else "voc20"
    return Dataset(name, base, names, background, IGNORE_INDEX, entries, sources=(list_file,))


def _voc_entries(
    base: Path, ids: Sequence[str], label_dir: str, lut: np.ndarray, list_file: Path
) -> tuple[_Entry, ...]:
    entries = []
    where = f"image id list: {list_file}"
    for image_id in ids:
        _inside(base / "JPEGImages", image_id, "image id list")
        image = _need_file(_contained(base / "JPEGImages", base / "JPEGImages" / f"{image_id}.jpg", where))
        label = _need_file(_contained(base / label_dir, base / label_dir / f"{image_id}.png", where))
        entries.append(_Entry(image_id, image, label, lut))
    return tuple(entries)


def load_context(root: Path, split: str = "val", with_background: bool = True) -> Dataset:
    """PASCAL Context, 60 classes (background first) or 59 (mmseg layout; see the module doc)."""
    base = _find_root(Path(root), "SegmentationClassContext", ["VOC2010", "VOCdevkit/VOC2010"])
    _need_dir(base / "JPEGImages")
    list_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    ids = _read_ids(list_file)
    if with_background:
        names, background, lut = ("background", *CONTEXT59_CLASSES), 0, _identity_lut(60)
    else:
        names, background = CONTEXT59_CLASSES, None
        lut = _lut({0: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX, **{i: i - 1 for i in range(1, 60)}})
    entries = _voc_entries(base, ids, "SegmentationClassContext", lut, list_file)
    name = "context" if with_background else "context59"
    return Dataset(name, base, names, background, IGNORE_INDEX, entries, sources=(list_file,))


def load_coco(root: Path, split: str = "val", objects: bool = False) -> Dataset:
    """COCO-Stuff 164k (171 classes) or COCO-Object (background + 80 things); mmseg layout."""
    base = _find_root(Path(root), "images", ["coco_stuff164k"])
    folder = f"{split}2017"
    if objects:
        mapping = {i: i + 1 for i in range(80)} | {i: 0 for i in range(80, 171)}
        lut = _lut({**mapping, IGNORE_INDEX: IGNORE_INDEX})
        names, background = ("background", *COCO_THINGS), 0
    else:
        lut, names, background = _identity_lut(171), COCO_THINGS + COCO_STUFF, None
    entries = _paired(
        base / "images" / folder,
        base / "annotations" / folder,
        "*.jpg",
        lambda p: base / "annotations" / folder / f"{p.stem}_labelTrainIds.png",
        lut,
    )
    name = "coco_object" if objects else "coco_stuff"
    return Dataset(name, base, names, background, IGNORE_INDEX, tuple(entries))


def load_cityscapes(root: Path, split: str = "val") -> Dataset:
    """Cityscapes fine annotations, 19 train ids (see the module doc)."""
    base = _find_root(Path(root), "leftImg8bit", ["cityscapes"])
    image_dir, label_dir = base / "leftImg8bit" / split, base / "gtFine" / split
    suffix = "_leftImg8bit.png"

    def to_label(path: Path) -> Path:
        stem = path.name[: -len(suffix)]
        return label_dir / path.parent.name / f"{stem}_gtFine_labelTrainIds.png"

    entries = _paired(image_dir, label_dir, f"*/*{suffix}", to_label, _identity_lut(19))
    entries = [_Entry(e.image_id[: -len("_leftImg8bit")], e.image_path, e.label_path, e.lut) for e in entries]
    return Dataset("cityscapes", base, CITYSCAPES_CLASSES, None, IGNORE_INDEX, tuple(entries))


def load_ade20k(root: Path, split: str = "val") -> Dataset:
    """ADE20K (SceneParsing, 150 classes; 0 ignored, the rest shifted down by one)."""
    base = _find_root(Path(root), "annotations", ["ADEChallengeData2016"])
    folder = {"val": "validation", "train": "training"}.get(split, split)
    lut = _lut({0: IGNORE_INDEX, **{i: i - 1 for i in range(1, 151)}})
    entries = _paired(
        base / "images" / folder,
        base / "annotations" / folder,
        "*.jpg",
        lambda p: base / "annotations" / folder / f"{p.stem}.png",
        lut,
    )
    return Dataset("ade20k", base, ADE20K_CLASSES, None, IGNORE_INDEX, tuple(entries))


def load_nus_wide(root: Path, split: str = "test") -> Dataset:
    """NUS-WIDE, 81 concepts, multi-label (see the module doc for the layout)."""
    root = Path(root)
    image_dir = _need_dir(root / "images")
    list_file = _need_file(root / f"{split}.txt")
    index = {name: i for i, name in enumerate(NUS_WIDE_CLASSES)}
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        unknown = [p for p in parts[1:] if p not in index]
        if unknown:
            raise DatasetError(f"malformed list file: {list_file} line {number}: unknown concepts {unknown}")
        where = f"list file: {list_file} line {number}"
        path = _need_file(_contained(image_dir, _inside(image_dir, parts[0], where), where))
        tags = tuple(sorted({index[p] for p in parts[1:]}))
        entries.append(_Entry(parts[0].rsplit(".", 1)[0], path, tags=tags))
    if not entries:
        raise DatasetError(f"malformed list file: {list_file} lists no images")
    entries.sort(key=lambda e: e.image_id)
    return Dataset(
        "nus_wide", root, NUS_WIDE_CLASSES, None, IGNORE_INDEX, tuple(entries), multilabel_only=True,
        sources=(list_file,),
    )  # fmt: skip


def load_composites(root: Path) -> Dataset:
    """This project's composites (``data/composites/<set>``; layout of :mod:`surgery_lib.eval.sets`)."""
    root = Path(root)
    labels_path = _need_file(root / "labels.json")
    try:
        meta = json.loads(labels_path.read_text())
        classes = [str(c) for c in meta["classes"]]
        images = list(meta["images"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DatasetError(f"malformed file: {labels_path} ({err.__class__.__name__}: {err})") from err
    index = {name: i + 1 for i, name in enumerate(classes)}
    entries = []
    for item in images:
        try:
            mapping = {0: 0} | {int(o["index"]): index[o["label"]] for o in item["objects"]}
            image_file, mask_file = item["file"], item["mask"]
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"malformed file: {labels_path}: bad entry {item!r}") from err
        where = f"file: {labels_path}"
        image = _need_file(_contained(root / "images", _inside(root / "images", image_file, where), where))
        mask = _need_file(_contained(root / "masks", _inside(root / "masks", mask_file, where), where))
        entries.append(_Entry(Path(image_file).stem, image, mask, _lut(mapping)))
    if not entries:
        raise DatasetError(f"malformed file: {labels_path} lists no images")
    entries.sort(key=lambda e: e.image_id)
    names = ("background", *classes)
    return Dataset("composites", root, names, 0, IGNORE_INDEX, tuple(entries), sources=(labels_path,))


def load_real(root: Path = Path("data/real")) -> Dataset:
    """The real annotated photos of ``data/real``, read by the VOC loader (split ``all``).

    Per-photo class names (``classes.json``) are mapped onto one vocabulary: ``background``, then
    every other name in order of first appearance over the sorted ids.
    """
    voc = load_voc(root, split="all")
    classes_path = _need_file(voc.root / "classes.json")
    try:
        meta = json.loads(classes_path.read_text())
        per_image = {i: [str(n) for n in meta[i]["class_names"]] for i in voc.ids}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DatasetError(f"malformed file: {classes_path} ({err.__class__.__name__}: {err})") from err
    names = ["background"]
    for image_id in voc.ids:
        if per_image[image_id][:1] != ["background"]:
            raise DatasetError(f"malformed file: {classes_path}: {image_id}'s class 0 is not 'background'")
        names += [n for n in per_image[image_id] if n not in names]
    entries = []
    for entry in voc.entries:
        local = per_image[entry.image_id]
        mapping = {i: names.index(n) for i, n in enumerate(local)} | {IGNORE_INDEX: IGNORE_INDEX}
        vocabulary = tuple(names.index(n) for n in local[1:])
        entries.append(
            _Entry(entry.image_id, entry.image_path, entry.label_path, _lut(mapping), None, vocabulary)
        )
    return Dataset(
        "real", voc.root, tuple(names), 0, IGNORE_INDEX, tuple(entries), sources=(*voc.sources, classes_path)
    )


def load_dataset(name: str, root: Path | str, split: str | None = None) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`) at ``root``; ``split`` defaults per dataset
    (``val``; ``test`` for NUS-WIDE; composites and ``real`` have none)."""
    root = Path(root)
    if name in ("voc", "voc20"):
        return load_voc(root, split or "val", with_background=name == "voc")
    if name in ("context", "context59"):
        return load_context(root, split or "val", with_background=name == "context")
    if name in ("coco_stuff", "coco_object"):
        return load_coco(root, split or "val", objects=name == "coco_object")
    if name == "cityscapes":
        return load_cityscapes(root, split or "val")
    if name == "ade20k":
        return load_ade20k(root, split or "val")
    if name == "nus_wide":
        return load_nus_wide(root, split or "test")
    if name == "composites":
        return load_composites(root)
    if name == "real":
        return load_real(root)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
