"""The evaluation-set reader and the evaluation functions, on a tiny hand-made set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_vit
from PIL import Image

from surgery_lib.data.shipped import read_composite_set as read_set
from surgery_lib.eval.sets import main, point_scores, raw_vs_surgery_scores

CLASSES = ["cat", "dog", "sky"]


@pytest.fixture
def eval_set(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{i:05d}.jpg"
        )
        mask = np.zeros((48, 40), np.uint8)
        mask[5:20, 5:20] = 1
        mask[25:40, 10:30] = 2
        Image.fromarray(mask).save(tmp_path / "masks" / f"{i:05d}.png")
        objects = [{"index": 1, "label": "cat"}, {"index": 2, "label": "dog" if i else "cat"}]
        entries.append({"file": f"{i:05d}.jpg", "mask": f"{i:05d}.png", "objects": objects})
    (tmp_path / "labels.json").write_text(json.dumps({"classes": CLASSES, "images": entries}))
    return tmp_path


def test_read_set_merges_instances_per_class(eval_set):
    classes, items = read_set(eval_set)
    assert classes == CLASSES and len(items) == 3
    assert set(items[0].masks) == {"cat"} and items[0].masks["cat"].sum() == 15 * 15 + 15 * 20
    assert set(items[1].masks) == {"cat", "dog"}
    assert len(read_set(eval_set, limit=2)[1]) == 2


def test_read_set_names_the_missing_file(eval_set):
    (eval_set / "masks" / "00001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"00001\.png"):
        read_set(eval_set)
    with pytest.raises(FileNotFoundError, match=r"labels\.json"):
        read_set(eval_set / "images")


def test_evaluate_and_point_scores(eval_set, tokenizer):
    model = make_vit()
    classes, items = read_set(eval_set)
    result = raw_vs_surgery_scores(model, tokenizer, classes, items, image_size=32)
    assert result["images"] == 3 and 0 <= result["zero_shot_top1"] <= 100
    for method in ("raw", "surgery"):
        assert result[method]["pairs"] == 5 and result[method]["classes"] == 2
        assert 0 <= result[method]["mIoU"] <= 100
    points = point_scores(model, tokenizer, classes, items, image_size=32, min_probability=0.0)
    assert points["gate_false_positive"] == 100.0 and points["gate_recall"] == 100.0  # nothing gated at 0
    assert 0 <= points["surgery"]["point_precision"] <= 100


def test_cli_writes_json(eval_set, tmp_path):
    out = tmp_path / "r.json"
    assert main(["--set", str(eval_set), "--limit", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())[str(eval_set)]["images"] == 2
