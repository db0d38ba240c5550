"""The Python face of the evaluation (what notebooks 07-09 use) and the precision-recall curve."""

from __future__ import annotations

import pytest
import torch

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.datasets import load_dataset
from surgery_lib.eval import experiments
from surgery_lib.eval import runner as ev
from surgery_lib.eval.metrics import average_precision, precision_recall_curve
from surgery_lib.eval.segmentation import ConfusionMatrix, Protocol, segment_samples
from surgery_lib.model.loading import load_clip


def test_dataset_specs():
    assert set(experiments.dataset_specs("")) == {"composites-seen", "composites-new", "real"}
    assert all(root.is_dir() for _, root in experiments.dataset_specs().values())
    specs = experiments.dataset_specs("voc=/data/VOCdevkit, ade20k=~/ade")
    assert specs["voc"][0] == "voc" and str(specs["voc"][1]) == "/data/VOCdevkit"
    assert "~" not in str(specs["ade20k"][1])
    with pytest.raises(ValueError, match="bad dataset entry 'imagenet=/x'"):
        experiments.dataset_specs("imagenet=/x")
    with pytest.raises(ValueError, match="NAME=ROOT"):
        experiments.dataset_specs("voc")


def test_evaluation_table_runs_every_combination_and_resumes(tmp_path, capfd):
    datasets = {"composites-seen": experiments.dataset_specs()["composites-seen"]}
    rows = experiments.evaluation_table("explain", ["toy-vit"], datasets, tmp_path, limit=4, batch_size=2)
    out, err = capfd.readouterr()
    assert not out  # no summary printed ...
    assert "explain composites surgery: 100%" in err and "4/4" in err  # ... but a progress bar per run
    assert [(r["backbone"], r["dataset"], r["method"]) for r in rows] == [
        ("toy-vit", "composites-seen", "raw"),
        ("toy-vit", "composites-seen", "surgery"),
    ]
    assert all(r["mIoU"] >= 0 and r["s_per_image"] > 0 for r in rows)
    records = ev.image_records(rows[0]["out"])
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    again = experiments.evaluation_table("explain", ["toy-vit"], datasets, tmp_path, limit=4, batch_size=2)
    assert [r["mIoU"] for r in again] == [r["mIoU"] for r in rows]
    assert all(r["s_per_image"] is None for r in again)  # nothing recomputed
    with pytest.raises(FileNotFoundError, match="no evaluation records"):
        ev.image_records(tmp_path / "nothing")


def test_segment_samples_match_the_command_line(tmp_path):
    root = experiments.dataset_specs()["real"][1]
    result = ev.evaluate("segment", "real", root, tmp_path / "seg", limit=3, batch_size=2, quiet=True)
    dataset = load_dataset("real", root)
    samples = [dataset[i] for i in range(3)]
    preds = segment_samples(load_clip(), dataset, samples, SurgeryConfig.paper(), Protocol())
    cm = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index)
    for pred, sample in zip(preds, samples, strict=True):
        assert pred.shape == sample.label.shape and pred.dtype == torch.int64
        assert set(pred.unique().tolist()) <= {dataset.background, *(sample.vocabulary or dataset.foreground)}
        cm.update(pred, sample.label)
    assert cm.miou() == pytest.approx(result["summary"]["mIoU"])


def test_precision_recall_curve_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.8, 0.3, 0.1, 0.5])
    targets = torch.tensor([1, 0, 1, 1, 0, -1])  # the last image is left out
    precision, recall = precision_recall_curve(scores, targets)
    # thresholds 0.9 | 0.8 (two tied images) | 0.3 | 0.1
    torch.testing.assert_close(precision, torch.tensor([1.0, 2 / 3, 3 / 4, 3 / 5], dtype=torch.float64))
    torch.testing.assert_close(recall, torch.tensor([1 / 3, 2 / 3, 1.0, 1.0], dtype=torch.float64))
    area = float((torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64)) * precision).sum())
    assert area == pytest.approx(float(average_precision(scores[:, None], targets[:, None])[0]))
    with pytest.raises(ValueError, match="no positive"):
        precision_recall_curve(scores, torch.zeros(6, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"must be \(N,\)"):
        precision_recall_curve(scores[:, None], targets[:, None])
