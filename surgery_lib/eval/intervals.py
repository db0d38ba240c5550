"""95 % bootstrap intervals of an evaluation's summary, resampling images (pairs and pixels of one image stay
together).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from surgery_lib.eval.metrics import (
    ExplainabilityMeter,
    MapScores,
    bootstrap_statistic,
    mean_average_precision,
)
from surgery_lib.eval.segmentation import ConfusionMatrix

# ---------------------------------------------------------------------------------------------------
# summaries


INTERVAL_LEVEL = 0.95
INTERVAL_RESAMPLES = 1000
"""The confidence intervals every ``results.json`` carries: a percentile bootstrap over images
(:func:`~surgery_lib.eval.metrics.bootstrap_statistic`, seed 0) of each summary number."""

_INTERVAL_KEYS = {
    "explain": ("mIoU", "mSC", "pointing_game", "opposite_rate"),
    "segment": ("mIoU", "pixel_accuracy"),
    "multilabel": ("mAP",),
}


def _explain_meter(records: Sequence[dict]) -> ExplainabilityMeter:
    """The explainability scores of the records' (image, class) pairs."""
    meter = ExplainabilityMeter()
    for record in records:
        for p in record["pairs"]:
            meter.add_scores(p["class"], MapScores(p["iou"], p["sc"], p["hit"]))
    return meter


def _interval_statistic(task: str, records: Sequence[dict], num_classes: int, ignore_index: int):
    """The task's summary numbers of the records at given indices (repeats allowed), computed by the
    same code as the summary itself, for the bootstrap."""
    keys = _INTERVAL_KEYS[task]
    if task == "explain":

        def explain(idx: np.ndarray) -> dict[str, float]:
            summary = _explain_meter([records[i] for i in idx]).summary()  # no pairs: ValueError
            return {k: summary[k] for k in keys}

        return explain
    if task == "segment":
        owner = np.concatenate([np.full(len(r["confusion"]), i) for i, r in enumerate(records)] + [[]])
        entries = np.array([e for r in records for e in r["confusion"]], dtype=np.int64).reshape(-1, 3)
        cells = torch.from_numpy(entries[:, 0] * num_classes + entries[:, 1])
        counts = entries[:, 2]

        def segment(idx: np.ndarray) -> dict[str, float]:
            weights = np.bincount(idx, minlength=len(records))[owner.astype(np.int64)]
            flat = torch.zeros(num_classes * num_classes, dtype=torch.int64)
            flat.index_add_(0, cells, torch.from_numpy(counts * weights))
            confusion = ConfusionMatrix(num_classes, ignore_index)
            confusion.matrix = flat.reshape(num_classes, num_classes)
            return {"mIoU": confusion.miou(), "pixel_accuracy": confusion.pixel_accuracy()}

        return segment
    scores = torch.tensor(
        [[0.0 if s is None else s for s in r["scores"]] for r in records], dtype=torch.float64
    )
    targets = torch.tensor([r["targets"] for r in records], dtype=torch.int64)

    def multilabel(idx: np.ndarray) -> dict[str, float]:
        index = torch.from_numpy(idx)
        return {"mAP": mean_average_precision(scores[index], targets[index])[0]}

    return multilabel


def summary_intervals(
    task: str,
    records: Sequence[dict],
    num_classes: int,
    ignore_index: int = 255,
    level: float = INTERVAL_LEVEL,
    resamples: int = INTERVAL_RESAMPLES,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Bootstrap confidence intervals over images of the task's summary numbers (``explain``: mIoU,
    mSC, pointing game, opposite rate; ``segment``: mIoU, pixel accuracy; ``multilabel``: mAP):
    ``{metric: [low, high]}``. The images are resampled with replacement and the summary recomputed
    as the run computes it (mIoU from the summed confusion matrix, mAP over classes with positives, the
    explainability means per class then over classes).

    Args:
        records: the per-image records of a run (:func:`image_records`).
        num_classes, ignore_index: the dataset's (``segment`` needs them).
    """
    if task not in _INTERVAL_KEYS:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(_INTERVAL_KEYS)}")
    if not records:
        return {}
    statistic = _interval_statistic(task, records, num_classes, ignore_index)
    found = bootstrap_statistic(len(records), statistic, level, resamples, seed)
    return {k: [round(low, 6), round(high, 6)] for k, (low, high) in found.items()}
