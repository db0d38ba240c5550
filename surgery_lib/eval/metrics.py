"""Explainability metrics of similarity maps against ground-truth masks.

Per (image, class present in the ground truth), on a map min-max normalised to [0, 1] at the mask's
resolution:

* IoU: the map thresholded at 0.5 (``map >= 0.5``) against the class mask;
* score contrast (SC): mean map value inside the mask minus mean outside, ×100; negative means the
  map prefers the background ("opposite visualization");
* pointing game: 1 when the map's maximum lies inside the mask (first maximum in row-major order).

:class:`ExplainabilityMeter` averages each score per class, then over classes (mIoU, mSC, pointing
game), and also reports the fraction of (image, class) pairs with SC < 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MapScores:
    iou: float
    score_contrast: float
    pointing_hit: float


def map_scores(heat: torch.Tensor, mask: torch.Tensor) -> MapScores:
    """Scores of one ``(H, W)`` map in [0, 1] against one ``(H, W)`` boolean mask.

    Raises:
        ValueError: when shapes differ, or the mask is empty or covers the whole image (SC undefined).
    """
    if heat.shape != mask.shape or heat.ndim != 2:
        raise ValueError(f"map {tuple(heat.shape)} and mask {tuple(mask.shape)} must be the same (H, W)")
    mask = mask.bool()
    inside = int(mask.sum())
    if inside == 0 or inside == mask.numel():
        raise ValueError("the mask is empty or covers the whole image: the scores are undefined")
    heat = heat.float()
    pred = heat >= 0.5
    iou = float((pred & mask).sum()) / float((pred | mask).sum())
    sc = (float(heat[mask].mean()) - float(heat[~mask].mean())) * 100.0
    hit = float(mask.flatten()[int(torch.argmax(heat.flatten()))])
    return MapScores(iou, sc, hit)


class ExplainabilityMeter:
    """Accumulates :class:`MapScores` per class; summarises per class, then over classes."""

    def __init__(self) -> None:
        self._scores: dict[str, list[MapScores]] = defaultdict(list)

    def add(self, label: str, heat: torch.Tensor, mask: torch.Tensor) -> MapScores:
        scores = map_scores(heat, mask)
        self._scores[label].append(scores)
        return scores

    def __len__(self) -> int:
        return sum(len(v) for v in self._scores.values())

    def per_class(self) -> dict[str, dict[str, float]]:
        out = {}
        for label, rows in sorted(self._scores.items()):
            n = len(rows)
            out[label] = {
                "iou": sum(r.iou for r in rows) / n,
                "score_contrast": sum(r.score_contrast for r in rows) / n,
                "pointing_game": sum(r.pointing_hit for r in rows) / n,
                "count": n,
            }
        return out

    def summary(self) -> dict[str, float]:
        """``mIoU`` (%), ``mSC``, ``pointing_game`` (%), ``opposite_rate`` (% of pairs with SC < 0),
        ``pairs`` and ``classes`` (counts)."""
        per_class = self.per_class()
        if not per_class:
            raise ValueError("no scores were added")
        k = len(per_class)
        rows = [r for v in self._scores.values() for r in v]
        return {
            "mIoU": 100.0 * sum(c["iou"] for c in per_class.values()) / k,
            "mSC": sum(c["score_contrast"] for c in per_class.values()) / k,
            "pointing_game": 100.0 * sum(c["pointing_game"] for c in per_class.values()) / k,
            "opposite_rate": 100.0 * sum(r.score_contrast < 0 for r in rows) / len(rows),
            "pairs": float(len(rows)),
            "classes": float(k),
        }

    def add_scores(self, label: str, scores: MapScores) -> None:
        """Add scores computed elsewhere (e.g. read back from a per-image record)."""
        self._scores[label].append(scores)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of ``values`` and a percentile bootstrap confidence interval over them (e.g. over
    images): ``(mean, low, high)``. Deterministic for a seed; one value gives a zero-width interval.

    Raises:
        ValueError: no values, non-finite values, or ``level`` outside (0, 1).
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_ci got NaN or infinite values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(data.mean()), float(low), float(high)


def bootstrap_statistic(
    n: int,
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of a summary computed over ``n`` units (images): the units are
    resampled with replacement ``resamples`` times and ``statistic(indices)`` recomputed on each;
    returns ``{key: (low, high)}`` for each key of the statistic.

    Use it for summaries that are not a plain mean over images (mIoU from a summed confusion matrix,
    mAP, a mean over classes of per-class means): resampling images and recomputing keeps the
    dependence between the pairs or pixels of one image. Deterministic for a seed.

    Args:
        n: the number of units.
        statistic: the summary of the units at ``indices`` (an ``(n,)`` int array with repeats), as
            ``{key: value}``; a resample on which a value is undefined may give NaN (left out of that
            key's quantiles) or raise ``ValueError`` (the resample is left out).
    Raises:
        ValueError: ``n < 1``, ``resamples < 1`` or ``level`` outside (0, 1).
    """
    if n < 1:
        raise ValueError("bootstrap_statistic needs at least one unit")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(resamples):
        try:
            values = statistic(rng.integers(0, n, size=n))
        except ValueError:
            continue
        for key, value in values.items():
            draws[key].append(float(value))
    tail = (1.0 - level) / 2.0
    out = {}
    for key, values in draws.items():
        finite = np.asarray(values)[np.isfinite(values)]
        if finite.size:
            low, high = np.quantile(finite, [tail, 1.0 - tail])
            out[key] = (float(low), float(high))
    return out


def mask_iou(prediction: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> float:
    """Intersection over union of two ``(H, W)`` boolean masks (0 when both are empty)."""
    pred, true = (
        torch.as_tensor(np.asarray(prediction, dtype=bool)),
        torch.as_tensor(np.asarray(truth, dtype=bool)),
    )
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {tuple(pred.shape)} vs {tuple(true.shape)}")
    union = int((pred | true).sum())
    return int((pred & true).sum()) / union if union else 0.0


def masked_map_scores(heat: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> MapScores:
    """:func:`map_scores` on the ``valid`` pixels only (e.g. without a dataset's ignore pixels).

    Args:
        heat: ``(H, W)`` map in [0, 1]; mask, valid: ``(H, W)`` boolean.
    Raises:
        ValueError: when shapes differ, or the mask is empty or covers every valid pixel.
    """
    if valid.shape != mask.shape:
        raise ValueError(f"valid {tuple(valid.shape)} and mask {tuple(mask.shape)} must be the same (H, W)")
    if heat.shape != mask.shape or heat.ndim != 2:
        raise ValueError(f"map {tuple(heat.shape)} and mask {tuple(mask.shape)} must be the same (H, W)")
    valid = valid.bool()
    return map_scores(heat[valid].reshape(1, -1), mask.bool()[valid].reshape(1, -1))


# ---------------------------------------------------------------------------------------------------
# multi-label recognition


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Non-interpolated average precision per class over the ranked list of images.

    For each class, images are ranked by score (highest first);
    ``AP = Σ_k (R_k − R_{k−1}) · P_k`` over the distinct score thresholds ``k``, i.e. the mean of the
    precision at the rank of each positive, with tied scores counted as one threshold (so the result
    does not depend on the order of the images; this equals scikit-learn's
    ``average_precision_score``).

    Args:
        scores: ``(N, K)`` image-level scores.
        targets: ``(N, K)`` 1 positive, 0 negative, any negative value: not evaluated (left out).
    Returns:
        ``(K,)`` float64 AP in [0, 1]; NaN for classes without a positive.
    """
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must be (N, K)")
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for k in range(scores.shape[1]):
        keep = targets[:, k] >= 0
        s, t = scores[keep, k].double(), (targets[keep, k] > 0).double()
        positives = float(t.sum())
        if positives == 0:
            continue
        order = torch.argsort(s, descending=True, stable=True)
        s, t = s[order], t[order]
        tp, seen = torch.cumsum(t, 0), torch.arange(1, len(t) + 1, dtype=torch.float64)
        last = torch.ones(len(s), dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]  # the last image of each group of tied scores
        tp, seen = tp[last], seen[last]
        gained = torch.diff(tp, prepend=torch.zeros(1, dtype=torch.float64))
        out[k] = float((gained / positives * tp / seen).sum())
    return out


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[int]]:
    """mAP (%) over the classes that have at least one positive, and the classes left out.

    Args:
        scores, targets: ``(N, K)`` as in :func:`average_precision`.
    Returns:
        ``(mAP in %, indices of the classes without a positive)``.
    Raises:
        ValueError: when no class has a positive.
    """
    ap = average_precision(scores, targets)
    excluded = [int(k) for k in torch.nonzero(torch.isnan(ap)).flatten()]
    if len(excluded) == len(ap):
        raise ValueError("no class has a positive image: the mAP is undefined")
    return 100.0 * float(ap[~torch.isnan(ap)].mean()), excluded


def precision_recall_curve(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall of one class at each distinct score threshold, highest threshold first.

    The area under the steps ``Σ (R_k − R_{k−1}) · P_k`` is :func:`average_precision`.

    Args:
        scores: ``(N,)`` image-level scores; targets: ``(N,)`` 1 positive, 0 negative, < 0 left out.
    Returns:
        ``(precision, recall)``, each ``(M,)`` float64 with M the number of distinct scores.
    Raises:
        ValueError: shapes differ or there is no positive.
    """
    if scores.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must be (N,)")
    keep = targets >= 0
    s, t = scores[keep].double(), (targets[keep] > 0).double()
    if float(t.sum()) == 0:
        raise ValueError("no positive image: the precision-recall curve is undefined")
    order = torch.argsort(s, descending=True, stable=True)
    s, t = s[order], t[order]
    tp, seen = torch.cumsum(t, 0), torch.arange(1, len(t) + 1, dtype=torch.float64)
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    return tp[last] / seen[last], tp[last] / t.sum()
