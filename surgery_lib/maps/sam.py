"""Text -> SAM: point prompts from similarity maps, and the Segment Anything Model behind them.

* :func:`text_points`: points for one label or a combined target ``"person+bench"`` (positives from
  each class's map, negatives from the mean map of the targets), with an optional presence gate: a
  label whose image-level probability is below ``min_probability`` gets no points at all.
* :class:`SamSegmenter`: ``segment_anything``'s ``SamPredictor`` on a local checkpoint
  (``vit_h`` / ``vit_l`` / ``vit_b``), returning the best of its multimask outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from surgery_lib.maps.explain import Explanation
from surgery_lib.maps.features import similarity_to_points

SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")


class SamUnavailableError(RuntimeError):
    """SAM cannot be used: the package or the checkpoint is missing; the message says what to do."""


def parse_target(target: str, labels: list[str]) -> list[int]:
    """Indices of the labels of ``"a"`` or ``"a+b"`` in ``labels``; unknown names raise ``ValueError``."""
    names = [t.strip() for t in target.split("+")]
    missing = [n for n in names if n not in labels]
    if not target.strip() or "" in names or missing:
        raise ValueError(
            f"target {target!r} names labels that were not explained: {missing or names}; known: {labels}"
        )
    return [labels.index(n) for n in names]


def target_map(explanation: Explanation, target: str, image: int = 0) -> torch.Tensor:
    """The map of ``"a"`` or ``"a+b"`` (the mean of the targets' maps), ``(H, W)``: what
    :func:`text_points` draws its points from, for figures."""
    indices = parse_target(target, explanation.labels)
    return explanation.maps[image][:, :, indices].mean(dim=-1)


def text_points(
    explanation: Explanation,
    target: str,
    image: int = 0,
    threshold: float = 0.8,
    quantile: float | None = None,
    min_probability: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM point prompts ``([x, y] (K, 2) int64, labels (K,) int64)`` for ``target`` on one image.

    A single label gives exactly :func:`~surgery_lib.maps.features.similarity_to_points`. For
    ``"a+b"``, positives are each class's positive points (a cell positive for both counts once) and
    negatives the lowest cells of the targets' mean map that are not positives, as many as there are
    positives (from the lower half of the cells). With
    ``min_probability``, a target none of whose labels reaches that image-level probability
    (``explanation.image_scores``) yields no points.
    """
    indices = parse_target(target, explanation.labels)
    size = tuple(explanation.maps.shape[1:3])
    if min_probability is not None:
        probs = explanation.image_scores[image, indices]
        if float(probs.max()) < min_probability:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty.reshape(0, 2), empty
    sims = explanation.similarity[image, 1:]
    kwargs = {"grid": explanation.grid, "threshold": threshold, "quantile": quantile}
    if len(indices) == 1:
        return similarity_to_points(sims[:, indices[0]], size, **kwargs)
    positives = []
    for j in indices:
        points, labels = similarity_to_points(sims[:, j], size, **kwargs)
        positives.append(points[labels == 1])
    pos = _unique_rows(torch.cat(positives))
    mean_map = sims[:, indices].mean(dim=1)
    mean_points, mean_labels = similarity_to_points(mean_map, size, grid=explanation.grid, threshold=0.0)
    lowest = mean_points[mean_labels == 0]  # the lowest cells of the mean map, lowest first
    taken = {tuple(p) for p in pos.tolist()}
    neg = lowest[[tuple(p) not in taken for p in lowest.tolist()]][: len(pos)]  # never on a positive
    labels = torch.cat([torch.ones(len(pos), dtype=torch.int64), torch.zeros(len(neg), dtype=torch.int64)])
    return torch.cat([pos, neg]), labels


def _unique_rows(points: torch.Tensor) -> torch.Tensor:
    """``points`` ``(K, 2)`` without repeated rows, first occurrences in their order."""
    seen: set[tuple[int, ...]] = set()
    keep = []
    for row in points.tolist():
        keep.append(tuple(row) not in seen)
        seen.add(tuple(row))
    return points[torch.tensor(keep, dtype=torch.bool)] if len(points) else points


class SamSegmenter:
    """SAM's predictor on one image at a time; the best of the multimask outputs is returned.

    Args:
        checkpoint: a local SAM checkpoint (e.g. ``sam_vit_b_01ec64.pth``); required unless ``sam``
            (an already built ``segment_anything`` ``Sam`` model) is given.
        model_type: ``vit_h``, ``vit_l`` or ``vit_b``, matching the checkpoint.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model_type: str = "vit_b",
        device: str = "cpu",
        sam: torch.nn.Module | None = None,
    ) -> None:
        try:
            from segment_anything import SamPredictor, sam_model_registry
        except ImportError as err:
            raise SamUnavailableError(
                "SAM needs the package segment-anything: pip install segment-anything"
            ) from err
        if sam is None:
            if model_type not in SAM_MODEL_TYPES:
                raise ValueError(f"unknown SAM model type {model_type!r}; expected one of {SAM_MODEL_TYPES}")
            if checkpoint is None or not Path(checkpoint).is_file():
                raise SamUnavailableError(
                    f"no SAM checkpoint at {checkpoint!r}: download one (e.g. sam_vit_b_01ec64.pth for "
                    "vit_b) on a machine with internet and pass its path; the point prompts work without SAM"
                )
            sam = sam_model_registry[model_type](checkpoint=str(checkpoint))
        self.predictor = SamPredictor(sam.to(device).eval())

    @torch.no_grad()
    def segment(
        self, image: np.ndarray, points: torch.Tensor, labels: torch.Tensor
    ) -> tuple[np.ndarray, float]:
        """The best mask for the prompts.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            points: ``(K, 2)`` pixel coordinates ``[x, y]``; labels: ``(K,)`` 1 = object, 0 = background.
        Returns:
            ``(H, W)`` boolean mask and SAM's predicted IoU for it.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"SAM needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        if len(points) == 0:
            raise ValueError("no point prompts: the target was gated out or the map is flat")
        self.predictor.set_image(image)
        masks, scores, _ = self.predictor.predict(
            point_coords=points.cpu().numpy().astype(np.float32),
            point_labels=labels.cpu().numpy().astype(np.int64),
            multimask_output=True,
        )
        best = int(np.argmax(scores))
        return masks[best].astype(bool), float(scores[best])


def point_precision(
    points: torch.Tensor, labels: torch.Tensor, mask: np.ndarray | torch.Tensor
) -> float | None:
    """Share of the positive points (label 1) that fall inside ``mask``; None when there is none.

    Args:
        points: ``(K, 2)`` pixel coordinates ``[x, y]``; labels: ``(K,)`` 1 = object, 0 = background.
        mask: ``(H, W)`` bool, in the points' frame.
    """
    mask_t = torch.as_tensor(np.asarray(mask, dtype=bool))
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    positives = points[labels == 1].long()
    if not len(positives):
        return None
    x, y = positives[:, 0], positives[:, 1]
    h, w = mask_t.shape
    if (x < 0).any() or (y < 0).any() or (x >= w).any() or (y >= h).any():
        raise ValueError(f"points fall outside the (H, W) = {(h, w)} mask")
    return float(mask_t[y, x].float().mean())


def gate_rates(
    probabilities: torch.Tensor | np.ndarray | list[float],
    present: torch.Tensor | np.ndarray | list[bool],
    thresholds: list[float],
) -> list[dict]:
    """The presence gate of :func:`text_points` at each threshold, over (image, label) pairs.

    A pair passes the gate when its image-level probability is ``>= threshold`` (as
    ``min_probability`` does).

    Args:
        probabilities: ``(P,)`` image-level probability of each pair's label.
        present: ``(P,)`` whether the label is really in the image.
    Returns:
        one record per threshold: ``{"threshold", "false_positive" (% of absent pairs that pass),
        "recall" (% of present pairs that pass), "absent", "present"}`` (rates are NaN without pairs).
    """
    probs = np.asarray(probabilities, dtype=float).reshape(-1)
    there = np.asarray(present, dtype=bool).reshape(-1)
    if probs.shape != there.shape:
        raise ValueError(f"{probs.shape[0]} probabilities but {there.shape[0]} presence flags")

    def rate(passed: np.ndarray) -> float:
        return 100.0 * float(passed.mean()) if passed.size else float("nan")

    records = []
    for threshold in thresholds:
        passes = probs >= threshold
        records.append(
            {
                "threshold": float(threshold),
                "false_positive": rate(passes[~there]),
                "recall": rate(passes[there]),
                "absent": int((~there).sum()),
                "present": int(there.sum()),
            }
        )
    return records
