"""Explainability metrics against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from surgery_lib.eval.metrics import (
    ExplainabilityMeter,
    average_precision,
    map_scores,
    masked_map_scores,
    mean_average_precision,
)


def _mask() -> torch.Tensor:
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True  # 4 of 16 pixels
    return mask


def test_perfect_map():
    s = map_scores(_mask().float(), _mask())
    assert s.iou == 1.0 and s.score_contrast == 100.0 and s.pointing_hit == 1.0


def test_inverted_map_is_opposite():
    s = map_scores(1.0 - _mask().float(), _mask())
    assert s.iou == 0.0 and s.score_contrast == -100.0 and s.pointing_hit == 0.0


def test_hand_computed_partial_map():
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0  # inside
    heat[3, 3] = 0.6  # outside, above threshold
    s = map_scores(heat, _mask())
    assert s.iou == pytest.approx(1 / 5)  # pred {(0,0),(3,3)}, mask 4 pixels: |∩|=1, |∪|=5
    assert s.score_contrast == pytest.approx((0.25 - 0.6 / 12) * 100)
    assert s.pointing_hit == 1.0


@pytest.mark.parametrize("mask", [torch.zeros(4, 4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool)])
def test_degenerate_masks_are_refused(mask):
    with pytest.raises(ValueError, match="undefined"):
        map_scores(torch.rand(4, 4), mask)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="same"):
        map_scores(torch.rand(4, 5), _mask())


def test_meter_averages_per_class_then_over_classes():
    meter = ExplainabilityMeter()
    meter.add("cat", _mask().float(), _mask())  # SC 100
    meter.add("cat", _mask().float(), _mask())  # SC 100
    meter.add("dog", 1.0 - _mask().float(), _mask())  # SC -100
    summary = meter.summary()
    assert summary["mSC"] == pytest.approx(0.0)  # per class: cat 100, dog -100
    assert summary["mIoU"] == pytest.approx(50.0)
    assert summary["opposite_rate"] == pytest.approx(100 / 3)
    assert summary["pairs"] == 3 and summary["classes"] == 2
    assert meter.per_class()["cat"]["count"] == 2
    with pytest.raises(ValueError, match="no scores"):
        ExplainabilityMeter().summary()


# ---------------------------------------------------------------------------------------------------
# additions: ignore pixels, multi-label AP / mAP


def test_masked_scores_equal_plain_scores_when_all_valid():
    heat = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    assert masked_map_scores(heat, _mask(), torch.ones(4, 4, dtype=torch.bool)) == map_scores(heat, _mask())


def test_masked_scores_leave_ignore_pixels_out():
    heat = _mask().float()
    heat[3, 3] = 1.0  # a false positive ...
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[3, 3] = False  # ... on an ignored pixel
    s = masked_map_scores(heat, _mask(), valid)
    assert s.iou == 1.0 and s.score_contrast == 100.0 and s.pointing_hit == 1.0
    inverted = masked_map_scores(1.0 - _mask().float(), _mask(), valid)
    assert inverted.iou == 0.0 and inverted.score_contrast == -100.0
    with pytest.raises(ValueError, match="undefined"):
        masked_map_scores(heat, torch.zeros(4, 4, dtype=torch.bool), valid)


def test_average_precision_hand_computed_ranking():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 1], [0, -1]])
    ap = average_precision(scores, targets)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)  # positives at ranks 1 and 3
    assert ap[1] == pytest.approx(1 / 1)  # image 3 ignored: the positive is ranked first
    perfect = average_precision(scores, torch.tensor([[1, 0], [1, 0], [0, 0], [0, 1]]))
    assert perfect[0] == 1.0 and perfect[1] == 1.0
    inverted = average_precision(-scores[:, :1], torch.tensor([[1], [0], [0], [0]]))
    assert inverted[0] == pytest.approx(1 / 4)


def test_average_precision_ties_do_not_depend_on_order():
    scores = torch.tensor([[0.5], [0.5], [0.2]])
    a = average_precision(scores, torch.tensor([[1], [0], [1]]))
    b = average_precision(scores, torch.tensor([[0], [1], [1]]))
    assert a[0] == b[0] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_mean_average_precision_excludes_classes_without_positives():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 1]])
    m, excluded = mean_average_precision(scores, targets)
    assert m == pytest.approx(100.0) and excluded == [1]
    assert torch.isnan(average_precision(scores, targets)[1])
    with pytest.raises(ValueError, match="undefined"):
        mean_average_precision(scores, torch.zeros(2, 3, dtype=torch.int64))
