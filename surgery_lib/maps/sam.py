"""Text -> SAM: point prompts from similarity maps, and the Segment Anything Model behind them.

* :func:`text_points`: points for one label or a combined target ``"person+bench"`` (positives from
  each class's map, negatives from the mean of the targets' min-max normalised maps, each label
  explained as a single text as the reference demo does), with an optional presence gate: a label
  whose image-level probability is below ``min_probability`` gets no points at all.
* :class:`SamSegmenter`: ``segment_anything``'s ``SamPredictor`` on a local checkpoint
  (``vit_h`` / ``vit_l`` / ``vit_b``), returning the best of its multimask outputs. The checkpoint is
  read here with ``weights_only=True`` (:func:`read_sam_state_dict`), never by ``segment_anything``.
  The default model type is ``vit_b``; the reference demo uses ``vit_h``.
* Measures (this project's): :func:`point_precision` and its chance level :func:`mask_area_shares` (a
  random point falls in a mask with probability = its share of the image); the presence gate's rates
  (:func:`gate_rates`), chosen on one half of the pairs and judged on the other (:func:`split_halves`,
  :func:`choose_gate`, :func:`held_out_gate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from surgery_lib.config import SurgeryConfig
from surgery_lib.maps.explain import Explanation
from surgery_lib.maps.features import similarity_map, similarity_to_points
from surgery_lib.model.loading import read_state_dict

SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")

Combine = Literal["reference", "mean"]
"""How a combined target ``"a+b"`` merges its labels' maps:

* ``"reference"`` (default; the reference demo's "person+bench"): each label is explained as a single
  text — under feature surgery its redundancy is the empty prompt's features, ``f·(t_j − r)``, not the
  mean over the explained labels — and the labels' maps are min-max normalised before they are averaged;
* ``"mean"``: the explanation's own similarities of the labels (e.g. feature surgery over all the
  explained classes), averaged without normalisation (this library's earlier rule).
"""

COMBINES: tuple[str, ...] = get_args(Combine)


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


def _check_combine(combine: str) -> None:
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; expected one of {COMBINES}")


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """Min-max over the first axis (the patches), per column."""
    lo, hi = x.amin(dim=0, keepdim=True), x.amax(dim=0, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)


def label_similarities(
    explanation: Explanation, indices: list[int], image: int = 0, combine: Combine = "reference"
) -> torch.Tensor:
    """The patch similarities ``(N, k)`` of the labels ``indices`` that a combined target uses.

    ``"reference"``: each label as a single text under the explanation's method (feature surgery
    against the empty prompt, ``cosine − empty_similarity``; the plain cosine without feature surgery).
    An explanation without :attr:`~surgery_lib.maps.explain.Explanation.cosine` (built by hand, or a
    gradient method) gives its own similarities, as ``"mean"`` does.
    """
    _check_combine(combine)
    own = explanation.similarity[image, 1:][:, indices]
    method = explanation.method
    if combine == "mean" or explanation.cosine is None or not isinstance(method, SurgeryConfig):
        return own
    cosine = explanation.cosine[image, 1:][:, indices]
    if not method.feature_surgery or explanation.empty_similarity is None:
        return cosine
    return cosine - explanation.empty_similarity[image, 1:, None]


def target_map(
    explanation: Explanation, target: str, image: int = 0, combine: Combine = "reference"
) -> torch.Tensor:
    """The map of ``"a"`` or ``"a+b"``, ``(H, W)``: what :func:`text_points` draws its points from, for
    figures. One label: its map. Several: the mean of their min-max normalised maps, from
    :func:`label_similarities` (``"reference"``) or the explanation's own maps (``"mean"``; its points
    use the un-normalised mean, which this picture only approximates)."""
    _check_combine(combine)
    indices = parse_target(target, explanation.labels)
    if len(indices) == 1 or combine == "mean":
        return explanation.maps[image][:, :, indices].mean(dim=-1)
    sims = label_similarities(explanation, indices, image, combine)
    size = tuple(explanation.maps.shape[1:3])
    return similarity_map(sims[None], size, explanation.grid)[0].mean(dim=-1)


def text_points(
    explanation: Explanation,
    target: str,
    image: int = 0,
    threshold: float = 0.8,
    quantile: float | None = None,
    min_probability: float | None = None,
    combine: Combine = "reference",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM point prompts ``([x, y] (K, 2) int64, labels (K,) int64)`` for ``target`` on one image.

    A single label gives exactly :func:`~surgery_lib.maps.features.similarity_to_points`. For
    ``"a+b"``, the labels' similarities come from :func:`label_similarities` (``combine``); positives
    are each label's positive points (a cell positive for both counts once) and negatives the lowest
    cells of the targets' mean map that are not positives, as many as there are positives (from the
    lower half of the cells). The mean map averages the min-max normalised maps (``"reference"``) or
    the raw similarities (``"mean"``). Where this differs from the reference demo: a shared positive
    counts once, negatives never fall on a positive, and their number follows the positives (the
    reference takes the mean map's own count above the threshold). With ``min_probability``, a target
    none of whose labels reaches that image-level probability (``explanation.image_scores``) yields no
    points.
    """
    _check_combine(combine)
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
    per_label = label_similarities(explanation, indices, image, combine)
    positives = []
    for j in range(len(indices)):
        points, labels = similarity_to_points(per_label[:, j], size, **kwargs)
        positives.append(points[labels == 1])
    pos = _unique_rows(torch.cat(positives))
    mean_map = (_normalised(per_label) if combine == "reference" else per_label).mean(dim=1)
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


def read_sam_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A SAM checkpoint's state dict, read as any weights file of this library is
    (:func:`~surgery_lib.model.loading.read_state_dict`): ``torch.load(..., weights_only=True)`` or
    safetensors, by the file's bytes, so no pickled code runs, also when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    is set (``segment_anything``'s own loader calls ``torch.load`` without ``weights_only``).

    Raises:
        ValueError: naming the file, for a file that is not a plain state dict of tensors.
        FileNotFoundError: no such file.
    """
    return read_state_dict(path)


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
            state_dict = read_sam_state_dict(checkpoint)  # before building: a refused file costs nothing
            sam = sam_model_registry[model_type](checkpoint=None)  # segment_anything never opens the file
            try:
                sam.load_state_dict(state_dict, strict=True)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[:2]
                raise ValueError(
                    f"{checkpoint} is not a SAM {model_type} checkpoint (its parameters do not fit: "
                    f"{' '.join(line.strip() for line in first)[:300]}…); pass the model_type it was "
                    f"saved for ({', '.join(SAM_MODEL_TYPES)})"
                ) from err
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


def split_halves(groups: Sequence[object], seed: int = 0) -> np.ndarray:
    """A deterministic split of items into two halves by group (e.g. pairs by their image, so the pairs
    of one image stay on one side): the distinct groups, in sorted order, are shuffled with ``seed`` and
    the first ``ceil(G / 2)`` form half A.

    Args:
        groups: ``(P,)`` the group of each item (sortable, hashable values).
    Returns:
        ``(P,)`` bool: True for the items of half A (e.g. where a threshold is chosen), False for half B
        (where it is judged).
    Raises:
        ValueError: fewer than two groups.
    """
    keys = list(groups)
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise ValueError(f"split_halves needs at least two groups, got {len(distinct)}")
    order = np.random.default_rng(seed).permutation(len(distinct))
    first = {distinct[i] for i in order[: (len(distinct) + 1) // 2]}
    return np.array([k in first for k in keys], dtype=bool)


def choose_gate(
    probabilities: torch.Tensor | np.ndarray | list[float],
    present: torch.Tensor | np.ndarray | list[bool],
    thresholds: list[float],
) -> float:
    """The threshold of ``thresholds`` with the highest recall − false-positive rate
    (:func:`gate_rates`) on the given pairs; the smallest such threshold on a tie."""
    if not thresholds:
        raise ValueError("choose_gate needs at least one threshold")
    rates = gate_rates(probabilities, present, sorted(thresholds))
    gains = [r["recall"] - r["false_positive"] for r in rates]
    if all(np.isnan(g) for g in gains):
        raise ValueError("choose_gate needs both present and absent pairs")
    return float(rates[int(np.nanargmax(gains))]["threshold"])
