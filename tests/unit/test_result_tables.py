"""Result tables: intervals shown beside their means, bars with error bars."""

from __future__ import annotations

import pytest

from surgery_lib.eval.tables import metric_bars, with_intervals

VIT = {"backbone": "toy-vit", "dataset": "seen"}
ROWS = [
    {**VIT, "method": "raw", "mIoU": 10.04, "mIoU_low": 8.0, "mIoU_high": 12.5},
    {**VIT, "method": "surgery", "mIoU": 20.0, "mIoU_low": 15.26, "mIoU_high": 24.0},
    {**VIT, "method": "maskclip", "mIoU": 30.0},
    {"backbone": "toy-rn", "dataset": "seen", "method": "surgery", "mIoU": 5.0},
]


def test_with_intervals_formats_mean_and_limits_and_keeps_the_rows():
    shown = with_intervals(ROWS, ["mIoU"])
    assert [r["mIoU (95 % CI)"] for r in shown] == ["10.0 [8.0, 12.5]", "20.0 [15.3, 24.0]", "30.0", "5.0"]
    assert "mIoU (95 % CI)" not in ROWS[0]  # copies
    assert with_intervals(ROWS[:1], ["mIoU"], digits=2)[0]["mIoU (95 % CI)"] == "10.04 [8.00, 12.50]"
    with pytest.raises(KeyError, match="no 'mSC' in the table"):
        with_intervals(ROWS, ["mSC"])


def test_metric_bars_groups_by_backbone_and_dataset_with_error_limits():
    values, errors = metric_bars(ROWS, "mIoU")
    assert values == {"toy-vit\nseen": {"raw": 10.04, "surgery": 20.0}, "toy-rn\nseen": {"surgery": 5.0}}
    assert errors == {"toy-vit\nseen": {"raw": (8.0, 12.5), "surgery": (15.26, 24.0)}}
    values, _ = metric_bars(ROWS[:3], "mIoU", methods=("maskclip", "surgery"), group=("dataset",))
    assert values == {"seen": {"maskclip": 30.0, "surgery": 20.0}}  # the methods' order, not the rows'
    with pytest.raises(ValueError, match="two rows of method 'surgery' in group 'seen'"):
        metric_bars(ROWS, "mIoU", group=("dataset",))  # toy-vit and toy-rn would collide
    with pytest.raises(ValueError, match="no rows of the methods"):
        metric_bars(ROWS, "mIoU", methods=("gem",))
