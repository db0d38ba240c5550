"""Explainability metrics against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from surgery_lib.metrics import ExplainabilityMeter, map_scores


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
