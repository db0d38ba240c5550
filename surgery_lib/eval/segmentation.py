"""Open-vocabulary semantic segmentation from class similarity maps, and mIoU.

Each pixel gets the class whose similarity is highest (raw CLIP: cosine similarity of the dense
tokens; CLIP Surgery: the feature-surgery similarity, both from :mod:`surgery_lib.maps.explain`). Two
protocols (:class:`Protocol`):

* ``paper``: the whole image resized to ``(n, n)`` (the reference preprocessing, ``n`` the model's
  native size unless given), one forward pass, patch similarities bilinearly upsampled to the label
  size, argmax over the foreground classes. The authors' own setting (``/shared/METHODS.md`` §9b) is a
  plain argmax with no background rule: ``background_threshold=``:data:`ARGMAX` (0). The default 0.5 is
  this project's assumption for datasets with a background class: a pixel is background where the
  winning class's min-max normalised map (:func:`surgery_lib.maps.features.similarity_map`, the map the
  paper evaluates) is below ``background_threshold`` (0.5, the threshold of the explainability mIoU).
* ``sliding``: the common training-free protocol (MaskCLIP / SCLIP / ClearCLIP style): the short side
  resized to 336 (VOC, Context, COCO; 448 for ADE20K, 560 for Cityscapes), windows of 224 with stride
  112, window logits (``logit_scale`` × similarity) upsampled to the window and averaged where windows
  overlap, upsampled to the label size, softmax over the foreground classes; with a background class,
  a pixel is background where the highest probability is below ``background_threshold``.

:func:`records_confusion`, :func:`class_miou` and :func:`paired_miou` compare methods run on the same
images: mIoU over the positive classes (the background left out, as the authors count it) with paired
bootstrap intervals of the differences.

:class:`ConfusionMatrix` accumulates the (ground truth, prediction) pixel counts with an ignore index;
its state is one integer tensor, so distributed runs sum it (``all_reduce``) exactly.

The ``official`` protocol (:class:`OfficialProtocol`, :func:`official_segment`) is each method's own
segmentor, exact (``../shared/golden/protocols/FORMAT.md``): SCLIP's, NACLIP's and ClearCLIP's window
placement, crop padding, resizes, PAMR and post-processing (logit scale, softmax, max over a class's
names, ``prob_thd``, SCLIP's ``area_thd``), step by step; :func:`surgery_demo_segment` is CLIP Surgery's
demo protocol and :func:`segment_image` runs either protocol on one image.

The paper and sliding protocols take the text features of a named template set (``Protocol.templates``, see
:data:`surgery_lib.maps.text.TEMPLATE_SETS`) and may refine the per-class maps with PAMR
(``Protocol.pamr_steps``, :func:`surgery_lib.maps.pamr.pamr`, dilations 8 and 16) after they are
upsampled to the image's size and before the argmax (``paper``: the winner and the min-max normalised
map that decides background are both refined; ``sliding``: the averaged logits, before the softmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.datasets import Dataset, Sample
from surgery_lib.eval.metrics import bootstrap_statistic
from surgery_lib.maps.explain import configured_similarity, encode_image_tokens
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.images import OPENAI_MEAN, OPENAI_STD, image_normalisation, reference_transform
from surgery_lib.maps.pamr import pamr
from surgery_lib.maps.text import TEMPLATE_SETS, Tokenizer, text_features
from surgery_lib.methods import METHODS, PROTOCOL_PRESETS
from surgery_lib.model import LoadedCLIP, patch_tokens

SHORT_SIDE: dict[str, int] = {"ade20k": 448, "cityscapes": 560}
"""Short side of the sliding protocol per dataset; every other dataset: 336."""


class ConfusionMatrix:
    """Pixel counts ``matrix[gt, pred]`` (int64) over ``num_classes`` classes; ``ignore_index`` skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one or more ``(..., H, W)`` predictions against targets of the same shape.

        Pixels whose target is ``ignore_index`` are skipped; other targets and all predictions must be
        class indices in ``[0, num_classes)``.
        """
        pred, target = torch.as_tensor(pred).long().flatten(), torch.as_tensor(target).long().flatten()
        if pred.shape != target.shape:
            raise ValueError(f"prediction and target differ in size: {pred.numel()} vs {target.numel()}")
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        k = self.num_classes
        for name, values in (("target", target), ("prediction", pred)):
            if values.numel() and (values.min() < 0 or values.max() >= k):
                raise ValueError(f"{name} holds classes outside [0, {k}) (ignore index {self.ignore_index})")
        counts = torch.bincount(target * k + pred, minlength=k * k)
        self.matrix += counts.reshape(k, k).cpu()

    def state(self) -> torch.Tensor:
        """The ``(K, K)`` int64 counts (a copy): sum states to reduce over processes."""
        return self.matrix.clone()

    def merge(self, other: ConfusionMatrix | torch.Tensor) -> None:
        """Add another matrix (or its :meth:`state`) to this one."""
        counts = other.matrix if isinstance(other, ConfusionMatrix) else torch.as_tensor(other)
        if counts.shape != self.matrix.shape:
            raise ValueError(f"cannot merge a {tuple(counts.shape)} matrix into {tuple(self.matrix.shape)}")
        self.matrix += counts.to(torch.int64).cpu()

    def sparse(self) -> list[list[int]]:
        """Non-zero entries as ``[gt, pred, count]`` rows (compact per-image records)."""
        idx = torch.nonzero(self.matrix)
        return [[int(g), int(p), int(self.matrix[g, p])] for g, p in idx]

    def add_sparse(self, rows: Sequence[Sequence[int]]) -> None:
        """Add ``[gt, pred, count]`` rows (see :meth:`sparse`)."""
        for g, p, c in rows:
            self.matrix[int(g), int(p)] += int(c)

    def iou_per_class(self) -> torch.Tensor:
        """``(K,)`` float64 IoU = TP / (TP + FP + FN); NaN where a class is neither in gt nor predicted."""
        m = self.matrix.double()
        tp = torch.diagonal(m)
        union = m.sum(0) + m.sum(1) - tp
        iou = tp / union
        iou[union == 0] = float("nan")
        return iou

    def miou(self) -> float:
        """Mean IoU (%) over the classes with a defined IoU (NaN when none)."""
        iou = self.iou_per_class()
        iou = iou[~torch.isnan(iou)]
        return 100.0 * float(iou.mean()) if len(iou) else float("nan")

    def pixel_accuracy(self) -> float:
        """Share (%) of evaluated pixels predicted correctly."""
        total = int(self.matrix.sum())
        return 100.0 * int(torch.diagonal(self.matrix).sum()) / total if total else float("nan")


@dataclass(frozen=True)
class Protocol:
    """How images become predictions (see the module doc).

    Attributes:
        name: ``"paper"`` or ``"sliding"``.
        image_size: ``paper``: square input side (``None``: the model's native size).
        short_side: ``sliding``: the short side after resizing (aspect ratio kept).
        window, stride: ``sliding``: window side and step, in pixels of the resized image.
        logit_scale: ``sliding``: logits = scale × similarity before the softmax.
        background_threshold: see the module doc; used only when the dataset has a background class.
        templates: the prompt template set (a name of :data:`~surgery_lib.maps.text.TEMPLATE_SETS`).
        pamr_steps: PAMR iterations on the upsampled per-class maps (0: none).
        pamr_dilations: PAMR neighbourhood dilations in pixels.
        segmentor: ``official``: whose official segmentor runs (:data:`SEGMENTORS`, :meth:`official`).
        area_threshold: ``official``: SCLIP's ``area_thd`` (``None``: off).

    ``name="official"`` runs a method's official segmentor (:class:`OfficialProtocol`) with these
    values: ``window`` 0 is the whole image, ``background_threshold`` is its ``prob_thd``.
    """

    name: Literal["paper", "sliding", "official"] = "paper"
    image_size: int | None = None
    short_side: int = 336
    window: int = 224
    stride: int = 112
    logit_scale: float = 100.0
    background_threshold: float = 0.5
    templates: str = "surgery85"
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    segmentor: str | None = None
    area_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.name == "official" and self.segmentor not in SEGMENTORS:
            raise ValueError(
                f"the official protocol needs a segmentor of {SEGMENTORS}, got {self.segmentor!r}"
            )
        if self.templates not in TEMPLATE_SETS:
            known = tuple(TEMPLATE_SETS)
            raise ValueError(f"unknown template set {self.templates!r}; expected one of {known}")
        if isinstance(self.pamr_steps, bool) or not isinstance(self.pamr_steps, int) or self.pamr_steps < 0:
            raise ValueError(f"pamr_steps must be an int >= 0, got {self.pamr_steps!r}")

    @classmethod
    def for_dataset(cls, name: str, dataset: str, **changes) -> Protocol:
        """The protocol ``name`` with the dataset's short side (:data:`SHORT_SIDE`); ``None`` values in
        ``changes`` keep the defaults."""
        fields = {"short_side": SHORT_SIDE.get(dataset, 336)}
        fields.update({k: v for k, v in changes.items() if v is not None})
        return cls(name=name, **fields)  # type: ignore[arg-type]

    def official(self, patch: int = 16) -> OfficialProtocol:
        """The :class:`OfficialProtocol` of ``name="official"`` (``patch``: the tower's patch size)."""
        if self.name != "official" or self.segmentor is None:
            raise ValueError(f"protocol {self.name!r} is not an official segmentor's")
        return OfficialProtocol(
            segmentor=self.segmentor,  # type: ignore[arg-type]
            window=self.window,
            stride=self.stride,
            logit_scale=self.logit_scale,
            prob_threshold=self.background_threshold,
            area_threshold=self.area_threshold,
            pamr_steps=self.pamr_steps,
            pamr_dilations=self.pamr_dilations,
            patch=patch,
        )


def class_similarity(
    model: nn.Module,
    tokenizer: Tokenizer,
    images: torch.Tensor,
    texts: torch.Tensor,
    config: SurgeryConfig,
) -> torch.Tensor:
    """Patch similarities on the token grid, as :func:`surgery_lib.maps.explain.explain` computes them.

    Args:
        images: preprocessed ``(B, 3, H, W)``; texts: ``(T, D)`` text features.
    Returns:
        ``(B, T, h, w)`` float32 (class token dropped).
    """
    tokens, (h, w) = encode_image_tokens(model, images, config, texts=texts)
    sim = patch_tokens(configured_similarity(model, tokenizer, tokens, texts, config))
    return sim.reshape(sim.shape[0], h, w, -1).permute(0, 3, 1, 2).float()


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _image_tensor(image: Image.Image) -> torch.Tensor:
    """The image as ``(1, 3, H, W)`` float in [0, 1] (the guide of PAMR)."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    return x.permute(2, 0, 1)[None]


def _refine(maps: torch.Tensor, image: Image.Image, protocol: Protocol) -> torch.Tensor:
    """``(1, T, H, W)`` maps at the image's size, refined by PAMR when ``protocol.pamr_steps``."""
    if not protocol.pamr_steps:
        return maps
    return pamr(_image_tensor(image), maps, protocol.pamr_steps, protocol.pamr_dilations)


def _decide(best: torch.Tensor, winner: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Class positions ``(H, W)`` int64; -1 (background) where ``best < threshold``."""
    out = winner.clone()
    if threshold is not None:
        out[best < threshold] = -1
    return out


@torch.no_grad()
def predict_paper(
    model: nn.Module,
    tokenizer: Tokenizer,
    images: Sequence[Image.Image],
    texts: torch.Tensor,
    config: SurgeryConfig,
    protocol: Protocol,
    native_size: int,
    background: bool,
) -> list[torch.Tensor]:
    """Paper protocol: one ``(n, n)`` forward pass per image (batched).

    Returns:
        per image, ``(H, W)`` int64 positions into ``texts`` at the image's size; -1 for background.
    """
    n = protocol.image_size or native_size
    transform = reference_transform(n, *image_normalisation(model))
    batch = torch.stack([transform(im) for im in images])
    sim = class_similarity(model, tokenizer, batch, texts, config).cpu()
    preds = []
    for b, im in enumerate(images):
        size = (im.height, im.width)
        winner = _refine(_upsample(sim[b : b + 1], size), im, protocol)[0].argmax(0)
        best = None
        if background:
            patch = sim[b : b + 1].flatten(2).transpose(1, 2)  # (1, h·w, T)
            norm = similarity_map(patch, size, tuple(sim.shape[-2:]))  # (1, H, W, T)
            if protocol.pamr_steps:
                norm = _refine(norm.permute(0, 3, 1, 2), im, protocol).permute(0, 2, 3, 1)
            best = torch.gather(norm[0], 2, winner[..., None])[..., 0]
        preds.append(_decide(best, winner, protocol.background_threshold if background else None))
    return preds


def _resize_short(
    image: Image.Image, short: int, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD
) -> torch.Tensor:
    """Short side to ``short`` (bicubic, aspect ratio kept), normalised with the tower's ``mean`` / ``std``
    (CLIP's by default), ``(3, H', W')``."""
    w, h = image.size
    scale = short / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    x = torch.from_numpy(np.asarray(image.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0)
    x = x.permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(y0, y1, x0, x1)`` covering the image: steps of ``stride``, the last one flush with the
    border, each ``window`` wide (or the whole side when the image is smaller)."""
    boxes = []
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride + window, height), min(c * stride + window, width)
            boxes.append((max(y1 - window, 0), y1, max(x1 - window, 0), x1))
    return boxes


def _sliding_logits(
    model: nn.Module,
    tokenizer: Tokenizer,
    images: Sequence[Image.Image],
    texts: torch.Tensor,
    config: SurgeryConfig,
    protocol: Protocol,
    batch_size: int,
) -> list[torch.Tensor]:
    """The sliding protocol's scaled window-averaged logits, per image ``(T, H, W)`` at its size (after
    PAMR when ``protocol.pamr_steps``), before the softmax."""
    mean, std = image_normalisation(model)
    inputs = [_resize_short(im, protocol.short_side, mean, std) for im in images]
    crops: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
    for i, x in enumerate(inputs):
        for box in window_boxes(x.shape[1], x.shape[2], protocol.window, protocol.stride):
            crops.setdefault((box[1] - box[0], box[3] - box[2]), []).append((i, box))
    t = texts.shape[0]
    logits = [torch.zeros(t, x.shape[1], x.shape[2]) for x in inputs]
    counts = [torch.zeros(1, x.shape[1], x.shape[2]) for x in inputs]
    for size in sorted(crops):
        jobs = crops[size]
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            batch = torch.stack([inputs[i][:, y0:y1, x0:x1] for i, (y0, y1, x0, x1) in chunk])
            sim = class_similarity(model, tokenizer, batch, texts, config).cpu()
            sim = _upsample(sim, size) * protocol.logit_scale
            for (i, (y0, y1, x0, x1)), s in zip(chunk, sim, strict=True):
                logits[i][:, y0:y1, x0:x1] += s
                counts[i][:, y0:y1, x0:x1] += 1
    return [
        _refine(_upsample((total / count)[None], (im.height, im.width)), im, protocol)[0]
        for im, total, count in zip(images, logits, counts, strict=True)
    ]


@torch.no_grad()
def predict_sliding(
    model: nn.Module,
    tokenizer: Tokenizer,
    images: Sequence[Image.Image],
    texts: torch.Tensor,
    config: SurgeryConfig,
    protocol: Protocol,
    background: bool,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Sliding-window protocol; windows of equal size from all ``images`` run in batches of ``batch_size``.

    Returns:
        per image, ``(H, W)`` int64 positions into ``texts`` at the image's size; -1 for background.
    """
    preds = []
    for logits in _sliding_logits(model, tokenizer, images, texts, config, protocol, batch_size):
        best, winner = torch.softmax(logits, dim=0).max(0)
        preds.append(_decide(best, winner, protocol.background_threshold if background else None))
    return preds


def _patch_size(model: nn.Module) -> int:
    """The tower's patch size (the stem's stride; 16 when the model does not say)."""
    conv = getattr(getattr(model, "visual", None), "conv1", None)
    stride = getattr(conv, "stride", None)
    return int(stride[0]) if isinstance(stride, tuple) else 16


@torch.no_grad()
def predict_official(
    model: nn.Module,
    images: Sequence[Image.Image],
    texts: torch.Tensor,
    config: SurgeryConfig,
    protocol: Protocol,
    background_texts: torch.Tensor | None,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """A method's official segmentor (``protocol.name == "official"``, :func:`official_segment`) on
    each image: the short side resized to ``protocol.short_side``, the queries the background's names
    (class 0, ``background_texts`` ``(B_q, D)``) then ``texts`` ``(T, D)`` one class each.

    Returns:
        per image, ``(H, W)`` int64 positions into ``texts``; -1 for background (class 0; without
        ``background_texts`` class 0 is ``texts[0]``, as the official code has it).
    """
    official = protocol.official(_patch_size(model))
    mean, std = image_normalisation(model)
    queries, query_idx = texts, list(range(len(texts)))
    shift = 0
    if background_texts is not None:
        queries = torch.cat([background_texts.to(texts), texts])
        query_idx = [0] * len(background_texts) + [c + 1 for c in range(len(texts))]
        shift = 1
    preds = []
    for im in images:
        x = _resize_short(im, protocol.short_side, mean, std)
        steps = official_segment(
            model, x, queries, query_idx, config, official, (im.height, im.width), batch_size
        )
        preds.append(steps["pred"] - shift)
    return preds


def to_dataset_classes(
    positions: torch.Tensor, candidates: Sequence[int], background: int | None
) -> torch.Tensor:
    """Map positions into the candidate list (and -1 = background) to dataset class indices ``(H, W)``."""
    lut = torch.tensor([background if background is not None else -1, *candidates], dtype=torch.int64)
    out = lut[positions + 1]
    if (out < 0).any():
        raise ValueError("a background prediction was made for a dataset without a background class")
    return out


def segment_samples(
    loaded: LoadedCLIP,
    dataset: Dataset,
    samples: Sequence[Sample],
    config: SurgeryConfig,
    protocol: Protocol,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Predicted label maps of ``samples``: per image ``(H, W)`` int64 dataset class indices.

    Each image is predicted over its candidate classes (its ``vocabulary``, else the dataset's
    foreground classes); images with the same candidates run together.
    """
    foreground = list(dataset.foreground)
    prompts = [dataset.prompts[c] for c in foreground]
    texts = text_features(loaded.model, loaded.tokenizer, prompts, templates=protocol.templates)
    position = {c: j for j, c in enumerate(foreground)}
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, sample in enumerate(samples):
        vocabulary = sample.vocabulary
        candidates = foreground if vocabulary is None else [c for c in foreground if c in vocabulary]
        groups.setdefault(tuple(candidates), []).append(b)
    has_background = dataset.background is not None
    preds: dict[int, torch.Tensor] = {}
    for candidates, members in groups.items():
        images = [samples[b].image for b in members]
        chosen = texts[[position[c] for c in candidates]]
        if protocol.name == "official":
            back = None
            if has_background:
                prompt = [dataset.prompts[dataset.background]]  # type: ignore[index]
                back = text_features(loaded.model, loaded.tokenizer, prompt, templates=protocol.templates)
            out = predict_official(loaded.model, images, chosen, config, protocol, back, batch_size)
        elif protocol.name == "paper":
            model, tokenizer = loaded.model, loaded.tokenizer
            out = predict_paper(
                model, tokenizer, images, chosen, config, protocol, loaded.image_size, has_background
            )
        else:
            out = predict_sliding(
                loaded.model, loaded.tokenizer, images, chosen, config, protocol, has_background, batch_size
            )
        for b, positions in zip(members, out, strict=True):
            preds[b] = to_dataset_classes(positions, candidates, dataset.background)
    return [preds[b] for b in range(len(samples))]


# ---------------------------------------------------------------------------------------------------
# the official protocols of SCLIP, NACLIP and ClearCLIP (../shared/golden/protocols/FORMAT.md), and
# CLIP Surgery's demo protocol

SEGMENTORS: tuple[str, ...] = ("sclip", "naclip", "clearclip")
"""The methods whose official segmentor :class:`OfficialProtocol` reproduces."""


@dataclass(frozen=True)
class OfficialProtocol:
    """One method's official segmentor (SCLIP ``CLIPForSegmentation``, NACLIP ``NACLIP``, ClearCLIP
    ``ClearCLIPSegmentation``): window inference, resizes, PAMR and post-processing, step by step.

    Attributes:
        segmentor: ``"sclip"``, ``"naclip"`` or ``"clearclip"``: which code's rules apply (SCLIP and
            NACLIP floor a window's patch grid and stretch it over the window, ClearCLIP pads the window
            to a patch multiple, centred; SCLIP applies PAMR only to sliding windows; only SCLIP has an
            area threshold, only ClearCLIP no PAMR; NACLIP renormalises its stored probabilities).
        window: ``slide_crop`` in pixels of the network input; 0: the whole image in one pass.
        stride: ``slide_stride``.
        logit_scale: probabilities = softmax over queries of ``logit_scale`` × cosine logits.
        prob_threshold: ``prob_thd``: a pixel whose highest class probability is below it (strict)
            becomes class 0 (the background).
        area_threshold: ``area_thd`` (SCLIP only; ``None``: off): a foreground class whose argmax
            area is not above ``area_threshold`` × the foreground area is dropped (its probabilities
            zeroed).
        pamr_steps, pamr_dilations: PAMR (:func:`~surgery_lib.maps.pamr.pamr`) on the cosine logits
            at the original size (SCLIP, NACLIP; 0 steps: none).
        patch: the tower's patch size (the stem's stride).
    """

    segmentor: Literal["sclip", "naclip", "clearclip"]
    window: int = 224
    stride: int = 112
    logit_scale: float = 40.0
    prob_threshold: float = 0.0
    area_threshold: float | None = None
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    patch: int = 16

    def __post_init__(self) -> None:
        if self.segmentor not in SEGMENTORS:
            raise ValueError(f"unknown segmentor {self.segmentor!r}; expected one of {SEGMENTORS}")
        for name in ("window", "stride", "patch", "pamr_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.stride < 1 or self.patch < 1:
            raise ValueError(f"stride and patch must be >= 1, got {self.stride} and {self.patch}")
        if self.area_threshold is not None and self.segmentor != "sclip":
            raise ValueError(f"area_threshold is SCLIP's rule; the {self.segmentor} segmentor has none")
        if self.pamr_steps and self.segmentor == "clearclip":
            raise ValueError("the clearclip segmentor has no PAMR (pamr_steps must be 0)")
        object.__setattr__(self, "pamr_dilations", tuple(self.pamr_dilations))

    @property
    def pamr_applied(self) -> bool:
        """Whether PAMR runs: SCLIP only inside its sliding window path, NACLIP on both paths."""
        if not self.pamr_steps or self.segmentor == "clearclip":
            return False
        return self.segmentor == "naclip" or self.window > 0


@dataclass(frozen=True)
class Crop:
    """One model call of an official protocol: the window ``box = (y1, y2, x1, x2)`` of the input and
    the zero padding ``pad = (left, right, top, bottom)`` the crop gets (ClearCLIP's windows only)."""

    box: tuple[int, int, int, int]
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def size(self) -> tuple[int, int]:
        """The window's ``(height, width)`` before padding."""
        return self.box[1] - self.box[0], self.box[3] - self.box[2]

    @property
    def padded_size(self) -> tuple[int, int]:
        """The ``(height, width)`` the model sees."""
        h, w = self.size
        return h + self.pad[2] + self.pad[3], w + self.pad[0] + self.pad[1]


def centred_padding(height: int, width: int, patch: int = 16) -> tuple[int, int, int, int]:
    """ClearCLIP's zero padding of a crop to a multiple of ``patch``: ``(left, right, top, bottom)``,
    ``left = ⌊r/2⌋``, ``right = r − left`` with ``r = patch − width mod patch`` (0 when a multiple;
    top / bottom likewise)."""

    def split(n: int) -> tuple[int, int]:
        r = (patch - n % patch) % patch
        return r // 2, r - r // 2

    return (*split(width), *split(height))


def official_crops(height: int, width: int, protocol: OfficialProtocol) -> list[Crop]:
    """The model calls of ``protocol`` on an input of ``height × width``, in the code's order: the
    windows of :func:`window_boxes` (row-major) or one whole-image call (``window = 0``, never padded)."""
    if not protocol.window:
        return [Crop((0, height, 0, width))]
    crops = []
    for box in window_boxes(height, width, protocol.window, protocol.stride):
        pad = (0, 0, 0, 0)
        if protocol.segmentor == "clearclip":
            pad = centred_padding(box[1] - box[0], box[3] - box[2], protocol.patch)
        crops.append(Crop(box, pad))
    return crops


def crop_input(image: torch.Tensor, crop: Crop) -> torch.Tensor:
    """The model input of ``crop``: ``image`` ``(..., 3, H, W)`` cut to the window and zero padded,
    ``(..., 3, h', w')``."""
    y1, y2, x1, x2 = crop.box
    out = image[..., y1:y2, x1:x2]
    return F.pad(out, crop.pad) if any(crop.pad) else out


def query_logits(
    model: nn.Module, images: torch.Tensor, queries: torch.Tensor, config: SurgeryConfig
) -> torch.Tensor:
    """The dense cosine logits of the official segmentors' ``forward_feature``: the method's patch
    tokens (:func:`~surgery_lib.maps.explain.encode_image_tokens`), L2-normalised, class token dropped,
    times the unit query features.

    Args:
        images: ``(B, 3, h, w)`` normalised crops; queries: ``(Q, D)`` unit rows.
    Returns:
        ``(B, Q, ⌊h/p⌋, ⌊w/p⌋)`` float32 on the token grid.
    """
    tokens, (gh, gw) = encode_image_tokens(model, images, config, texts=queries)
    tokens = F.normalize(tokens.float(), dim=-1)[:, 1:]
    logits = tokens @ queries.to(tokens).t()  # (B, N, Q)
    return logits.permute(0, 2, 1).reshape(logits.shape[0], -1, gh, gw)


def _bilinear(x: torch.Tensor, size: tuple[int, int], grid: bool = False) -> torch.Tensor:
    """``F.interpolate(bilinear, align_corners=False, size=size)`` of ``(B, C, h, w)``, as the official
    code calls it. ``grid``: a resize of ``forward_feature``'s grid logits, which the code passes as a
    permuted (channels-last) view: the input is made channels-last as there (PyTorch's CPU kernel rounds
    differently for the two layouts); other resizes take a contiguous tensor."""
    x = x.contiguous(memory_format=torch.channels_last if grid else torch.contiguous_format)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).contiguous()


def _window_logits(grid: torch.Tensor, crop: Crop) -> torch.Tensor:
    """One window's logits at window size ``(Q, h, w)`` from its grid logits ``(Q, gh, gw)``: resized
    to the (padded) crop, then cut back to the window."""
    h, w = crop.size
    left, _, top, _ = crop.pad
    full = _bilinear(grid[None].float(), crop.padded_size, grid=True)[0]
    return full[:, top : top + h, left : left + w]


def official_seg_logits(
    grids: Sequence[torch.Tensor],
    crops: Sequence[Crop],
    input_size: tuple[int, int],
    ori_size: tuple[int, int],
    protocol: OfficialProtocol,
) -> dict[str, torch.Tensor]:
    """The cosine logits at the original size, before PAMR (FORMAT.md §1–3).

    Args:
        grids: per crop of ``crops`` (:func:`official_crops`), its logits ``(Q, gh, gw)``
            (:func:`query_logits`).
        input_size: the network input's ``(H, W)``; ori_size: the original ``(H0, W0)``.
    Returns:
        ``{"seg_logits": (Q, H0, W0)}``, with ``"count_mat"`` ``(H, W)`` and ``"logits_input_size"``
        ``(Q, H, W)`` (the window average) for sliding windows, and NACLIP's whole-image logits at the
        input size as ``"logits_input_size"``.
    """
    if len(grids) != len(crops):
        raise ValueError(f"{len(grids)} grid logits for {len(crops)} crops")
    q = grids[0].shape[0]
    out: dict[str, torch.Tensor] = {}
    if not protocol.window:
        if protocol.segmentor == "naclip":  # grid -> input size -> original size
            out["logits_input_size"] = _bilinear(grids[0][None].float(), input_size, grid=True)[0]
            out["seg_logits"] = _bilinear(out["logits_input_size"][None], ori_size)[0]
        else:  # SCLIP, ClearCLIP: straight to the original size
            out["seg_logits"] = _bilinear(grids[0][None].float(), ori_size, grid=True)[0]
        return out
    h, w = input_size
    preds = torch.zeros(q, h, w)
    count = torch.zeros(1, h, w)
    for grid, crop in zip(grids, crops, strict=True):
        y1, y2, x1, x2 = crop.box
        preds[:, y1:y2, x1:x2] += _window_logits(grid.cpu(), crop)
        count[:, y1:y2, x1:x2] += 1
    out["count_mat"] = count[0]
    out["logits_input_size"] = preds / count
    out["seg_logits"] = _bilinear(out["logits_input_size"][None], ori_size)[0]
    return out


def official_pamr(image: torch.Tensor, logits: torch.Tensor, protocol: OfficialProtocol) -> torch.Tensor:
    """PAMR as the segmentor applies it (unchanged ``logits`` where it does not, :attr:`pamr_applied`):
    the guide is the network input ``image`` ``(3, H, W)`` resized bilinearly to the logits' size.

    Args:
        logits: ``(Q, H0, W0)`` cosine logits at the original size (before the logit scale).
    Returns:
        ``(Q, H0, W0)``.
    """
    if not protocol.pamr_applied:
        return logits
    guide = _bilinear(image[None].float(), tuple(logits.shape[-2:]))
    return pamr(guide, logits[None].float(), protocol.pamr_steps, protocol.pamr_dilations)[0]


def official_postprocess(
    logits: torch.Tensor, query_idx: torch.Tensor | Sequence[int], protocol: OfficialProtocol
) -> dict[str, torch.Tensor]:
    """The segmentors' ``postprocess_result`` on one image (FORMAT.md §5).

    Args:
        logits: ``(Q, H0, W0)`` cosine logits at the original size (after PAMR where it ran).
        query_idx: ``(Q,)`` the class of each query (class 0 = background; several queries per class
            allowed, :func:`class_queries`).
    Returns:
        ``probs_query`` ``(Q, H0, W0)``, ``probs_class`` ``(C, H0, W0)`` (max over each class's
        queries), with an area threshold ``area_keep`` ``(C-1,)`` and ``probs_area`` ``(C, H0, W0)``,
        ``pred_argmax`` and ``pred`` ``(H0, W0)`` int64, ``final_seg_logits`` ``(C, H0, W0)`` (what the
        code stores: the probabilities, NACLIP's renormalised to sum 1).
    """
    idx = torch.as_tensor(query_idx, dtype=torch.int64).cpu()
    if idx.ndim != 1 or len(idx) != logits.shape[0]:
        raise ValueError(f"query_idx needs one class per query ({logits.shape[0]}), got {tuple(idx.shape)}")
    num_classes = int(idx.max()) + 1
    missing = sorted(set(range(num_classes)) - set(idx.tolist()))
    if missing or int(idx.min()) < 0:
        raise ValueError(
            f"query_idx must name every class 0..{num_classes - 1} at least once (missing {missing})"
        )
    out: dict[str, torch.Tensor] = {}
    probs = (logits.float() * protocol.logit_scale).softmax(0)
    out["probs_query"] = probs
    if num_classes != len(idx):
        probs = torch.stack([probs[idx == c].amax(0) for c in range(num_classes)])
    out["probs_class"] = probs
    if protocol.area_threshold is not None:
        labels = F.one_hot(probs.argmax(0), num_classes).to(probs.dtype)  # (H0, W0, C)
        area = labels[:, :, 1:].sum((0, 1))  # (C-1,)
        keep = (area > protocol.area_threshold * area.sum()).to(probs.dtype)
        probs = probs.clone()
        probs[1:] *= keep[:, None, None]
        out["area_keep"], out["probs_area"] = keep, probs
    best, pred = probs.amax(0), probs.argmax(0)  # argmax: the first index on ties
    out["pred_argmax"] = pred.clone()
    pred[best < protocol.prob_threshold] = 0
    out["pred"] = pred
    out["final_seg_logits"] = probs / probs.sum(0, keepdim=True) if protocol.segmentor == "naclip" else probs
    return out


def class_queries(class_file: str, separator: str = ", ") -> tuple[list[str], list[int]]:
    """The queries of a class-name file (one class per line, class 0 the background) as the official
    ``get_cls_idx`` parses it: every line split on ``separator`` (SCLIP, NACLIP: ``", "``; ClearCLIP:
    ``","``, names not stripped), the class of each name.

    Returns:
        ``(names, query_idx)``, e.g. ``"sky, cloud\\ncat\\n"`` -> ``(["sky", "cloud", "cat"], [0, 0, 1])``.
    """
    names: list[str] = []
    idx: list[int] = []
    for c, line in enumerate(class_file.splitlines()):
        parts = line.split(separator)
        names += parts
        idx += [c] * len(parts)
    if not names:
        raise ValueError("the class file names no class")
    return names, idx


@torch.no_grad()
def official_segment(
    model: nn.Module,
    image: torch.Tensor,
    queries: torch.Tensor,
    query_idx: torch.Tensor | Sequence[int],
    config: SurgeryConfig,
    protocol: OfficialProtocol,
    ori_size: tuple[int, int],
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """One image through a method's official segmentor: windows, resizes, PAMR, post-processing.

    Args:
        image: ``(3, H, W)`` the normalised network input (the official code's ``predict`` input).
        queries: ``(Q, D)`` unit text features; query_idx: ``(Q,)`` their classes (:func:`class_queries`).
        config: the method's dense preset (e.g. ``METHODS["sclip"]``).
        ori_size: the original ``(H0, W0)`` the label map is made at.
        batch_size: crops of equal size per model call (the result does not depend on it beyond float
            rounding).
    Returns:
        the steps of :func:`official_seg_logits` and :func:`official_postprocess`, plus ``crop_logits``
        (the grid logits of each crop, stacked when of one size: use ``"crops"``) and ``pamr_logits``
        where PAMR ran; ``pred`` ``(H0, W0)`` int64 is the label map, ``final_seg_logits`` ``(C, H0, W0)``
        the per-class probabilities.
    """
    if image.ndim != 3:
        raise ValueError(f"official_segment takes one image (3, H, W), got shape {tuple(image.shape)}")
    crops = official_crops(image.shape[1], image.shape[2], protocol)
    grids: list[torch.Tensor | None] = [None] * len(crops)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, crop in enumerate(crops):
        by_size.setdefault(crop.padded_size, []).append(i)
    for members in by_size.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            batch = torch.stack([crop_input(image, crops[i]) for i in chunk])
            for i, grid in zip(chunk, query_logits(model, batch, queries, config).cpu(), strict=True):
                grids[i] = grid
    steps = official_seg_logits(grids, crops, (image.shape[1], image.shape[2]), ori_size, protocol)  # type: ignore[arg-type]
    steps["crop_logits"] = grids  # type: ignore[assignment]
    logits = steps["seg_logits"]
    if protocol.pamr_applied:
        logits = steps["pamr_logits"] = official_pamr(image.cpu(), logits, protocol)
    steps.update(official_postprocess(logits, query_idx, protocol))
    return steps


def surgery_demo_segment(
    patch_similarity: torch.Tensor, ori_size: tuple[int, int], grid: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP Surgery's demo protocol (``demo.py``; segmentation as the authors describe it): the
    per-class maps of ``get_similarity_map`` (min-max over the patches, bilinear to the original
    size, :func:`~surgery_lib.maps.features.similarity_map`) and their argmax over the classes, with
    no background rule.

    Args:
        patch_similarity: ``(B, N, C)`` similarities of the patch tokens (class token dropped) of the
            square input; ori_size: ``(H0, W0)``.
    Returns:
        ``(maps (B, H0, W0, C), labels (B, H0, W0) int64)``.
    """
    maps = similarity_map(patch_similarity, ori_size, grid)
    return maps, maps.argmax(-1)


ARGMAX: float = 0.0
"""The ``background_threshold`` (runner: ``bg_threshold``) of the authors' protocol (``/shared/METHODS.md``
§9b: the new path without feature surgery, a plain argmax over the dataset's classes, no background
rule): min-max normalised maps (``paper``) and probabilities (``sliding``) are never below 0, so a
threshold of 0 never predicts background. The default 0.5 is this project's own background rule."""


def records_confusion(records: Sequence[dict], num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The per-image confusion matrices of segmentation records (the runner's ``{"confusion": sparse
    rows [gt, pred, count]}``, :func:`surgery_lib.eval.runner.image_records`) as one ``(n, K, K)``
    int64 array (``K = num_classes``).

    Raises:
        ValueError: no records, or a class index outside ``[0, K)``.
    """
    if not records:
        raise ValueError("records_confusion got no records")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    out = np.zeros((len(records), num_classes, num_classes), dtype=np.int64)
    for i, record in enumerate(records):
        for g, p, c in record["confusion"]:
            if not (0 <= int(g) < num_classes and 0 <= int(p) < num_classes):
                raise ValueError(f"record {i} has class ({g}, {p}) outside [0, {num_classes})")
            out[i, int(g), int(p)] += int(c)
    return out


def class_miou(matrix: np.ndarray | torch.Tensor, exclude: Sequence[int] = ()) -> float:
    """Mean IoU (%) of a ``(K, K)`` confusion matrix ``[gt, pred]`` over the classes with a defined IoU
    (in the ground truth or predicted), leaving out the classes in ``exclude`` — e.g. the background,
    as the authors count "the IoU of each positive class" (METHODS.md §9b). NaN when no class is left."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix is (K, K), got shape {m.shape}")
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    keep = union > 0
    for c in exclude:
        if not 0 <= int(c) < len(keep):
            raise ValueError(f"excluded class {c} is outside [0, {len(keep)})")
        keep[int(c)] = False
    return 100.0 * float((tp[keep] / union[keep]).mean()) if keep.any() else float("nan")


def paired_miou(
    confusions: dict[str, np.ndarray],
    exclude: Sequence[int] = (),
    reference: str | None = None,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """mIoU (:func:`class_miou`) of several methods run on the same images, with a paired percentile
    bootstrap over images: the same resampled images for every method, so the interval of a
    *difference* keeps the pairing.

    Args:
        confusions: method -> ``(n, K, K)`` per-image confusion matrices (:func:`records_confusion`),
            the same ``n`` images in the same order for every method.
        exclude: classes left out of the mean (e.g. the background).
        reference: a method of ``confusions``; every other method also gets its difference to it.
    Returns:
        method -> ``{"mIoU", "low", "high"}`` and, with ``reference``, ``{"diff", "diff_low",
        "diff_high"}`` (method − reference, mIoU points).
    Raises:
        ValueError: no methods, different image counts, or an unknown reference.
    """
    if not confusions:
        raise ValueError("paired_miou got no methods")
    shapes = {np.asarray(c).shape for c in confusions.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"every method needs (n, K, K) confusions over the same images, got {shapes}")
    if reference is not None and reference not in confusions:
        raise ValueError(f"reference {reference!r} is not one of {tuple(confusions)}")
    n = next(iter(shapes))[0]
    stacks = {m: np.asarray(c, dtype=np.float64) for m, c in confusions.items()}

    def statistic(idx: np.ndarray) -> dict[str, float]:
        weights = np.bincount(idx, minlength=n).astype(np.float64)
        values = {m: class_miou(np.tensordot(weights, s, axes=1), exclude) for m, s in stacks.items()}
        if reference is not None:
            values |= {f"{m} diff": v - values[reference] for m, v in values.items() if m != reference}
        return values

    intervals = bootstrap_statistic(n, statistic, level, resamples, seed)
    point = statistic(np.arange(n))
    out: dict[str, dict[str, float]] = {}
    for m in stacks:
        low, high = intervals.get(m, (float("nan"), float("nan")))
        out[m] = {"mIoU": point[m], "low": low, "high": high}
        if reference is not None and m != reference:
            low, high = intervals.get(f"{m} diff", (float("nan"), float("nan")))
            out[m] |= {"diff": point[f"{m} diff"], "diff_low": low, "diff_high": high}
    return out


def _class_names(classes: Sequence[str | Sequence[str]]) -> tuple[list[str], list[int]]:
    """Queries and their classes from one name or a list of names per class."""
    names: list[str] = []
    idx: list[int] = []
    for c, entry in enumerate(classes):
        group = [entry] if isinstance(entry, str) else list(entry)
        if not group or any(not isinstance(n, str) or not n.strip() for n in group):
            raise ValueError(f"class {c} needs one or more non-empty names, got {entry!r}")
        names += group
        idx += [c] * len(group)
    if not names:
        raise ValueError("segment_image needs at least one class")
    return names, idx


def preset_values(method: str, dataset: str | None = None, official: bool = False) -> dict[str, object]:
    """A method's protocol preset (:data:`~surgery_lib.methods.PROTOCOL_PRESETS`) read for ``dataset``
    (per-dataset values resolved), with its official-only values (``"official"``) where ``official``."""
    if method not in PROTOCOL_PRESETS:
        raise ValueError(
            f"method {method!r} has no protocol preset; expected one of {tuple(PROTOCOL_PRESETS)}"
        )
    preset = dict(PROTOCOL_PRESETS[method])
    extra = dict(preset.pop("official", {}))

    def value(v: object) -> object:
        return v.get(dataset, v[None]) if isinstance(v, dict) else v

    values = {k: value(v) for k, v in preset.items()}
    if official:
        values.update({k: value(v) for k, v in extra.items() if value(v) is not None})
    return values


@torch.no_grad()
def segment_image(
    loaded: LoadedCLIP,
    image: Image.Image,
    classes: Sequence[str | Sequence[str]],
    method: str = "sclip",
    protocol: Literal["official", "common"] = "official",
    dataset: str | None = None,
    **changes: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image segmented with a method and its evaluation protocol — e.g. SCLIP's sliding window and
    PAMR on a single image (SCLIP issue #12).

    Args:
        loaded: the model (:func:`~surgery_lib.model.load_clip`).
        image: the image; its size is the label map's.
        classes: one name or a list of names per class (the max over a class's names, as the official
            code's class files); with ``"official"`` class 0 is the background (``prob_thd`` and SCLIP's
            ``area_thd`` relabel to it).
        method: a method with a protocol preset (``"sclip"``, ``"naclip"``, ``"clearclip"`` for
            ``"official"``); its dense preset of :data:`~surgery_lib.methods.METHODS` runs the model.
        protocol: ``"official"``: the method's official segmentor, exact (:class:`OfficialProtocol`:
            windows, padding, resizes, PAMR, post-processing); ``"common"``: this project's sliding
            protocol (:class:`Protocol` ``"sliding"``) with the preset's values, argmax over classes.
        dataset: a dataset name for the preset's per-dataset values (e.g. ``"voc"``: SCLIP's logit scale
            65 and area threshold); ``None``: the defaults.
        changes: protocol fields to override (:class:`OfficialProtocol` fields for ``"official"``,
            e.g. ``pamr_steps=10``, ``window=0``; :class:`Protocol` fields for ``"common"``).
    Returns:
        ``(labels (H, W) int64 indices into classes, probabilities (C, H, W))``: for ``"official"`` the
        probabilities the code stores (after the area step; NACLIP's renormalised), for ``"common"`` the
        max over each class's names of the softmax over all names.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(METHODS)}")
    if protocol not in ("official", "common"):
        raise ValueError(f"protocol must be 'official' or 'common', got {protocol!r}")
    names, query_idx = _class_names(classes)
    values = preset_values(method, dataset, official=protocol == "official")
    model, config = loaded.model, METHODS[method]
    templates = str(values.get("templates", "surgery85"))
    queries = text_features(model, loaded.tokenizer, names, templates=templates)
    short = int(values.get("image_size") or SHORT_SIDE.get(dataset or "", 336))  # type: ignore[arg-type]
    size = (image.height, image.width)
    if protocol == "official":
        if method not in SEGMENTORS:
            raise ValueError(
                f"no official segmentor for {method!r}; the official protocol exists for {SEGMENTORS}"
            )
        fields = {
            "window": values["window"],
            "stride": values["stride"],
            "logit_scale": values["logit_scale"],
            "prob_threshold": values.get("bg_threshold", 0.0),
            "area_threshold": values.get("area_thd"),
            "pamr_steps": values.get("pamr_steps", 0),
        }
        official = OfficialProtocol(segmentor=method, patch=_patch_size(model), **{**fields, **changes})  # type: ignore[arg-type]
        x = _resize_short(image, short, *image_normalisation(model))
        steps = official_segment(model, x, queries, query_idx, config, official, size)
        return steps["pred"], steps["final_seg_logits"]
    fields = {k: values[k] for k in ("window", "stride", "logit_scale", "pamr_steps") if k in values}
    common = Protocol(name="sliding", short_side=short, templates=templates, **{**fields, **changes})  # type: ignore[arg-type]
    logits = _sliding_logits(model, loaded.tokenizer, [image], queries, config, common, 16)[0]
    probs = torch.softmax(logits, dim=0)
    idx = torch.tensor(query_idx)
    probs = torch.stack([probs[idx == c].amax(0) for c in range(len(classes))])
    return probs.argmax(0), probs
