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

Both protocols take the text features of a named template set (``Protocol.templates``, see
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
    """

    name: Literal["paper", "sliding"] = "paper"
    image_size: int | None = None
    short_side: int = 336
    window: int = 224
    stride: int = 112
    logit_scale: float = 100.0
    background_threshold: float = 0.5
    templates: str = "surgery85"
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)

    def __post_init__(self) -> None:
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
    tokens, (h, w) = encode_image_tokens(model, images, config)
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
    preds = []
    for im, total, count in zip(images, logits, counts, strict=True):
        upsampled = _refine(_upsample((total / count)[None], (im.height, im.width)), im, protocol)
        probs = torch.softmax(upsampled[0], dim=0)
        best, winner = probs.max(0)
        preds.append(_decide(best, winner, protocol.background_threshold if background else None))
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
        if protocol.name == "paper":
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
