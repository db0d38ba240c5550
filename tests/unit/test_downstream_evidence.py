"""Evidence for the downstream notebooks (08-11): the authors' argmax protocol and paired mIoU
intervals, feature surgery's order on the class token, chance levels of word pointing and SAM point
precision, and the presence gate chosen on one half of the pairs and judged on the other."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_vit
from PIL import Image

from surgery_lib import SurgeryConfig
from surgery_lib.eval.downstream import (
    _class_word_position,
    held_out_gate,
    mask_area_shares,
    word_pointing_records,
)
from surgery_lib.eval.segmentation import (
    ARGMAX,
    ConfusionMatrix,
    _decide,
    class_miou,
    paired_miou,
    records_confusion,
)
from surgery_lib.maps.features import feature_surgery
from surgery_lib.maps.sam import choose_gate, split_halves

# ---- segmentation: the authors' protocol ----------------------------------------------------------


def test_argmax_threshold_never_predicts_background():
    best = torch.rand(6, 7)  # a min-max normalised map lies in [0, 1]
    best[0, 0] = 0.0
    winner = torch.randint(0, 3, (6, 7))
    assert (_decide(best, winner, ARGMAX) >= 0).all()
    assert (_decide(best, winner, 0.5) == -1).any()  # the project's rule does make background


def test_records_confusion_and_class_miou_leave_out_the_background():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[1, 1], [2, 2]]), torch.tensor([[0, 1], [2, 2]]))
    records = [{"confusion": cm.sparse()}]
    stack = records_confusion(records, 3)
    assert stack.shape == (1, 3, 3)
    np.testing.assert_array_equal(stack[0], cm.matrix.numpy())
    # IoU: background 0 (its pixel is called class 1), class 1: 1/2, class 2: 1
    assert class_miou(stack[0]) == pytest.approx(100 * (0 + 0.5 + 1) / 3)
    assert class_miou(stack[0], exclude=[0]) == pytest.approx(100 * 0.75)
    with pytest.raises(ValueError, match="outside"):
        records_confusion([{"confusion": [[5, 0, 1]]}], 3)


def _diagonal_images(n: int, correct: float) -> np.ndarray:
    """n images of 100 pixels of class 1, ``correct`` of them predicted right (the rest as class 0)."""
    stack = np.zeros((n, 2, 2), dtype=np.int64)
    stack[:, 1, 1] = round(100 * correct)
    stack[:, 1, 0] = 100 - round(100 * correct)
    return stack


def test_paired_miou_intervals_and_differences():
    a = _diagonal_images(10, 0.5)
    b = a.copy()
    b[::2] = _diagonal_images(5, 0.9)  # better on half the images
    out = paired_miou({"a": a, "b": b, "same": a.copy()}, exclude=[0], reference="a")
    assert out["a"]["mIoU"] == pytest.approx(50.0)
    assert "diff" not in out["a"]
    assert out["same"]["diff"] == out["same"]["diff_low"] == out["same"]["diff_high"] == 0.0
    assert out["b"]["diff"] == pytest.approx(20.0)
    assert 0 < out["b"]["diff_low"] <= 20.0 <= out["b"]["diff_high"]
    assert out["b"]["low"] <= out["b"]["mIoU"] <= out["b"]["high"]
    with pytest.raises(ValueError, match="same images"):
        paired_miou({"a": a, "b": b[:5]})
    with pytest.raises(ValueError, match="reference"):
        paired_miou({"a": a}, reference="c")


# ---- multi-label: feature surgery on the class token ---------------------------------------------


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_feature_surgery_keeps_the_within_image_order_of_class_token_scores():
    g = torch.Generator().manual_seed(0)
    tokens = _unit(torch.randn(20, 5, 64, generator=g))  # 20 images, class token + 4 patches
    texts = _unit(torch.randn(12, 64, generator=g))
    cosine = tokens[:, 0] @ texts.t()
    assert (cosine > -0.5).all()  # w·s is increasing in s above −1/2, where every CLIP cosine lies
    surgery = feature_surgery(tokens, texts)[:, 0]
    for b in range(20):
        assert torch.equal(torch.argsort(cosine[b]), torch.argsort(surgery[b]))


def test_feature_surgery_can_change_the_across_image_order_of_one_class():
    # orthonormal texts; image A is equally close to all three classes, image B close to class 0 only
    texts = torch.eye(4)[:3]
    a = torch.tensor([0.55, 0.55, 0.55, (1 - 3 * 0.55**2) ** 0.5])
    b = torch.tensor([0.5, 0.0, 0.0, 0.75**0.5])
    tokens = torch.stack([a, b])[:, None].repeat(1, 2, 1)  # (2 images, class token + 1 patch, 4)
    cosine = tokens[:, 0] @ texts.t()
    surgery = feature_surgery(tokens, texts)[:, 0]
    assert cosine[0, 0] > cosine[1, 0]  # raw CLIP ranks class 0 higher in A
    assert surgery[0, 0] < surgery[1, 0]  # feature surgery ranks it higher in B: calibration across images


# ---- multimodal: word pointing -------------------------------------------------------------------


def test_class_word_position_matches_a_word_of_the_class_name():
    assert _class_word_position(["a", "photo", "of", "a", "cat"], "big cat") == 4
    assert _class_word_position(["a", "dog"], "cat") is None


def test_word_pointing_records_hit_and_area_chance(tokenizer):
    model = make_vit()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    full = np.ones((40, 48), dtype=bool)
    none = np.zeros((40, 48), dtype=bool)
    quarter = np.zeros((40, 48), dtype=bool)
    quarter[:20, :24] = True
    item = SimpleNamespace(image=image, masks={"dog": full, "ball": none, "cat": quarter})
    records = word_pointing_records(
        model, tokenizer, [item], ["a dog and a ball"], 32, {"raw": SurgeryConfig.off()}
    )
    by_class = {r["class"]: r for r in records}
    assert set(by_class) == {"dog", "ball"}  # the caption does not name the cat
    assert by_class["dog"]["hit"] == 1.0 and by_class["dog"]["chance"] == 1.0
    assert by_class["ball"]["hit"] == 0.0 and by_class["ball"]["chance"] == 0.0
    with pytest.raises(ValueError, match="captions"):
        word_pointing_records(model, tokenizer, [item], [], 32, {"raw": SurgeryConfig.off()})


# ---- SAM: chance of point precision and the presence gate ----------------------------------------


def test_mask_area_shares_is_the_mask_share_of_the_image():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:5, :2] = True
    items = [SimpleNamespace(masks={"cat": mask})]
    assert mask_area_shares([{"image": 0, "class": "cat"}], items) == [pytest.approx(10.0)]


def test_split_halves_is_deterministic_and_keeps_groups_together():
    groups = [i // 3 for i in range(30)]  # 10 images, 3 pairs each
    first = split_halves(groups, seed=0)
    np.testing.assert_array_equal(first, split_halves(groups, seed=0))
    assert first.sum() == 15  # 5 of the 10 groups
    for g in range(10):
        assert len(set(first[np.array(groups) == g])) == 1
    with pytest.raises(ValueError, match="two groups"):
        split_halves([0, 0, 0])


def test_choose_gate_and_held_out_gate_on_separable_pairs():
    present = np.array([True, False] * 20)
    probs = np.where(present, 0.3, 1e-4)
    assert choose_gate(probs, present, [0.0, 1e-3, 0.5]) == 1e-3
    out = held_out_gate(probs, present, [i // 2 for i in range(40)], [0.0, 1e-3, 0.5])
    assert out["threshold"] == 1e-3
    assert out["recall"] == 100.0 and out["false_positive"] == 0.0
    assert out["tuning_pairs"] + out["held_out_pairs"] == 40
    # a gate chosen on noise is judged at chance on the other half
    rng = np.random.default_rng(0)
    noisy = held_out_gate(rng.random(400), rng.random(400) < 0.5, list(range(400)), [0.0, 0.25, 0.5, 0.75])
    assert abs(noisy["recall"] - noisy["false_positive"]) < 15
