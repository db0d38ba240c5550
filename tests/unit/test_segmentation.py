"""Confusion matrix / mIoU on hand-computed cases, and the two segmentation protocols on a tiny ViT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_vit
from PIL import Image

from surgery_lib.config import SurgeryConfig
from surgery_lib.eval.segmentation import (
    ConfusionMatrix,
    Protocol,
    class_similarity,
    predict_paper,
    predict_sliding,
    to_dataset_classes,
    window_boxes,
)
from surgery_lib.maps.explain import explain
from surgery_lib.maps.images import reference_transform
from surgery_lib.maps.text import text_features


def _target() -> torch.Tensor:
    t = torch.zeros(4, 4, dtype=torch.int64)
    t[:2, :2] = 1
    return t


def test_perfect_prediction():
    cm = ConfusionMatrix(2)
    cm.update(_target(), _target())
    assert cm.miou() == 100.0 and cm.pixel_accuracy() == 100.0
    assert cm.iou_per_class().tolist() == [1.0, 1.0]


def test_inverted_prediction():
    cm = ConfusionMatrix(2)
    cm.update(1 - _target(), _target())
    assert cm.miou() == 0.0 and cm.pixel_accuracy() == 0.0


def test_hand_computed_with_ignore_pixels():
    target = _target()
    target[3, 3] = 255  # ignored, whatever is predicted there
    pred = torch.zeros(4, 4, dtype=torch.int64)
    pred[0, 0] = pred[3, 3] = 1
    cm = ConfusionMatrix(3)
    cm.update(pred.numpy(), target.numpy())
    # class 1: tp 1, fn 3, fp 0 -> 1/4; class 0: tp 11, fp 3, fn 0 -> 11/14; class 2: absent -> NaN
    iou = cm.iou_per_class()
    assert iou[0] == pytest.approx(11 / 14) and iou[1] == pytest.approx(1 / 4) and math.isnan(iou[2])
    assert cm.miou() == pytest.approx(100 * (11 / 14 + 1 / 4) / 2)
    assert int(cm.matrix.sum()) == 15


def test_empty_mask_class_predicted_counts_as_zero():
    cm = ConfusionMatrix(3)
    pred = _target() * 2  # class 2 predicted where class 1 is: class 1 and 2 get IoU 0
    cm.update(pred, _target())
    assert cm.iou_per_class().tolist() == [1.0, 0.0, 0.0]


def test_merge_state_and_sparse_equal_one_matrix():
    rng = np.random.default_rng(0)
    preds, targets = rng.integers(0, 4, (3, 6, 5)), rng.integers(0, 4, (3, 6, 5))
    targets[0, 0] = 255
    whole = ConfusionMatrix(4)
    whole.update(preds, targets)
    parts = [ConfusionMatrix(4) for _ in range(3)]
    for cm, p, t in zip(parts, preds, targets, strict=True):
        cm.update(p, t)
    merged = ConfusionMatrix(4)
    merged.merge(parts[0])
    merged.merge(parts[1].state())
    merged.add_sparse(parts[2].sparse())
    assert torch.equal(merged.matrix, whole.matrix)
    with pytest.raises(ValueError, match="outside"):
        whole.update(np.array([4]), np.array([0]))
    with pytest.raises(ValueError, match="merge"):
        whole.merge(torch.zeros(3, 3))


def test_window_boxes_cover_and_end_at_the_border():
    boxes = window_boxes(336, 500, 224, 112)
    assert (0, 224, 0, 224) in boxes and (112, 336, 276, 500) in boxes
    assert all(y1 - y0 == 224 and x1 - x0 == 224 for y0, y1, x0, x1 in boxes)
    assert len(boxes) == 2 * 4
    assert window_boxes(100, 300, 224, 112) == [(0, 100, 0, 224), (0, 100, 76, 300)]


def test_to_dataset_classes():
    positions = torch.tensor([[-1, 0], [1, 2]])
    assert to_dataset_classes(positions, [3, 5, 7], background=0).tolist() == [[0, 3], [5, 7]]
    with pytest.raises(ValueError, match="background"):
        to_dataset_classes(positions, [3, 5, 7], background=None)


@pytest.fixture(scope="module")
def vit():
    return make_vit()


@pytest.fixture(scope="module")
def texts(vit, tokenizer):
    tok = tokenizer
    return tok, text_features(vit, tok, ["cat", "dog", "car"])


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(30, 40), (50, 20)]]


@pytest.mark.parametrize("config", [SurgeryConfig.off(), SurgeryConfig.paper()])
def test_class_similarity_is_the_library_similarity(vit, texts, config):
    tok, feats = texts
    images = torch.stack([reference_transform(32)(im) for im in _images()])
    sim = class_similarity(vit, tok, images, feats, config)
    ex = explain(vit, tok, images, ["cat", "dog", "car"], config)
    assert sim.shape == (2, 3, 4, 4)
    assert torch.allclose(sim.flatten(2).transpose(1, 2), ex.similarity[:, 1:], atol=1e-6)


def test_paper_protocol(vit, texts):
    tok, feats = texts
    images = _images()
    config = SurgeryConfig.paper()
    preds = predict_paper(vit, tok, images, feats, config, Protocol("paper"), 32, background=False)
    assert [p.shape for p in preds] == [(30, 40), (50, 20)]
    assert all(p.min() >= 0 and p.max() <= 2 for p in preds)
    with_bg = predict_paper(vit, tok, images, feats, config, Protocol("paper"), 32, background=True)
    assert any((p == -1).any() for p in with_bg)  # min-max maps: some pixels fall below 0.5
    assert all(torch.equal(p[q >= 0], q[q >= 0]) for p, q in zip(preds, with_bg, strict=True))
    one = predict_paper(vit, tok, images[1:], feats, config, Protocol("paper"), 32, background=False)
    assert torch.equal(one[0], preds[1])


def test_sliding_protocol(vit, texts):
    tok, feats = texts
    images = _images()
    protocol = Protocol.for_dataset("sliding", "voc", short_side=40, window=32, stride=16)
    assert protocol.short_side == 40 and Protocol.for_dataset("sliding", "cityscapes").short_side == 560
    config = SurgeryConfig.paper()
    preds = predict_sliding(vit, tok, images, feats, config, protocol, background=False, batch_size=3)
    assert [p.shape for p in preds] == [(30, 40), (50, 20)]
    assert all(p.min() >= 0 for p in preds)
    all_bg = predict_sliding(
        vit,
        tok,
        images,
        feats,
        config,
        protocol.__class__("sliding", short_side=40, window=32, stride=16, background_threshold=1.01),
        background=True,
    )
    assert all((p == -1).all() for p in all_bg)


# --- the official protocols (SCLIP, NACLIP, ClearCLIP): known answers; exactness: the golden test ---


def test_centred_padding_and_official_crops():
    from surgery_lib.eval.segmentation import OfficialProtocol, centred_padding, official_crops

    assert centred_padding(200, 300) == (2, 2, 4, 4)  # ClearCLIP: r = 4 (width), 8 (height)
    assert centred_padding(224, 224) == (0, 0, 0, 0)
    assert centred_padding(100, 99, patch=16) == (6, 7, 6, 6)
    clear = official_crops(200, 300, OfficialProtocol("clearclip", window=224, stride=224, logit_scale=50))
    assert [c.box for c in clear] == [(0, 200, 0, 224), (0, 200, 76, 300)]
    assert [c.pad for c in clear] == [(0, 0, 4, 4)] * 2 and clear[0].padded_size == (208, 224)
    sclip = official_crops(200, 300, OfficialProtocol("sclip", window=100, stride=60))
    assert len(sclip) == 15 and sclip[4].box == (0, 100, 200, 300) and sclip[-1].box == (100, 200, 200, 300)
    assert all(c.pad == (0, 0, 0, 0) for c in sclip)  # SCLIP / NACLIP never pad
    whole = official_crops(200, 300, OfficialProtocol("clearclip", window=0))
    assert [(c.box, c.pad) for c in whole] == [((0, 200, 0, 300), (0, 0, 0, 0))]


def test_official_protocol_rules_and_errors():
    from surgery_lib.eval.segmentation import OfficialProtocol

    assert OfficialProtocol("sclip", pamr_steps=10).pamr_applied
    assert not OfficialProtocol("sclip", window=0, pamr_steps=10).pamr_applied  # only in forward_slide
    assert OfficialProtocol("naclip", window=0, pamr_steps=10).pamr_applied
    with pytest.raises(ValueError, match="area_threshold is SCLIP's"):
        OfficialProtocol("naclip", area_threshold=0.1)
    with pytest.raises(ValueError, match="no PAMR"):
        OfficialProtocol("clearclip", pamr_steps=2)
    with pytest.raises(ValueError, match="unknown segmentor"):
        OfficialProtocol("surgery")  # type: ignore[arg-type]


def test_official_postprocess_known_answer():
    from surgery_lib.eval.segmentation import OfficialProtocol, class_queries, official_postprocess

    names, idx = class_queries("sky, cloud\ncat\ndog\n")
    assert (names, idx) == (["sky", "cloud", "cat", "dog"], [0, 0, 1, 2])
    assert class_queries("a,b\nc\n", ",")[0] == ["a", "b", "c"]
    # 4 queries over 1 x 5 pixels: probabilities chosen through the log (logit_scale 1)
    probs = torch.tensor(
        [
            [0.1, 0.5, 0.1, 0.2, 0.30],  # sky
            [0.5, 0.1, 0.1, 0.2, 0.30],  # cloud
            [0.3, 0.2, 0.7, 0.3, 0.35],  # cat
            [0.1, 0.2, 0.1, 0.3, 0.05],  # dog
        ]
    )[:, None, :]
    logits = probs.log()
    plain = official_postprocess(logits, idx, OfficialProtocol("sclip", logit_scale=1.0))
    assert torch.allclose(plain["probs_class"][0], probs.amax(0).new_tensor([[0.5, 0.5, 0.1, 0.2, 0.3]]))
    assert plain["pred_argmax"].tolist() == [[0, 0, 1, 1, 1]]  # ties (0.3 vs 0.3): the first index
    # prob_thd 0.32 (strict): the pixel whose maximum is 0.3 becomes background, 0.35 stays
    thd = official_postprocess(logits, idx, OfficialProtocol("sclip", logit_scale=1.0, prob_threshold=0.32))
    assert thd["pred"].tolist() == [[0, 0, 1, 0, 1]]
    # area_thd 0.5: foreground areas cat 3, dog 0 -> dog dropped (0 > 1.5 is false); cat kept (3 > 1.5)
    area = official_postprocess(logits, idx, OfficialProtocol("sclip", logit_scale=1.0, area_threshold=0.5))
    assert area["area_keep"].tolist() == [1.0, 0.0] and (area["probs_area"][2] == 0).all()
    assert area["pred"].tolist() == [[0, 0, 1, 1, 1]]
    naclip = official_postprocess(logits, idx, OfficialProtocol("naclip", logit_scale=1.0))
    assert torch.allclose(naclip["final_seg_logits"].sum(0), torch.ones(1, 5))  # renormalised
    with pytest.raises(ValueError, match="one class per query"):
        official_postprocess(logits, [0, 1], OfficialProtocol("sclip"))


def test_official_segment_and_segment_image(vit, tokenizer):
    from surgery_lib.eval.segmentation import (
        OfficialProtocol,
        official_segment,
        preset_values,
        segment_image,
    )
    from surgery_lib.methods import METHODS
    from surgery_lib.model import LoadedCLIP

    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, 40, 52, generator=g)
    queries = torch.nn.functional.normalize(torch.randn(4, vit.text_projection.shape[1], generator=g), dim=-1)
    protocol = OfficialProtocol("naclip", window=24, stride=16, pamr_steps=2, pamr_dilations=(1, 2))
    steps = official_segment(vit, image, queries, [0, 0, 1, 2], METHODS["naclip"], protocol, (30, 35))
    assert steps["pred"].shape == (30, 35) and steps["final_seg_logits"].shape == (3, 30, 35)
    assert steps["count_mat"].min() >= 1 and len(steps["crop_logits"]) == 6
    one = official_segment(
        vit, image, queries, [0, 0, 1, 2], METHODS["naclip"], protocol, (30, 35), batch_size=1
    )
    assert torch.allclose(one["pamr_logits"], steps["pamr_logits"], atol=1e-5)  # batch = per window
    assert preset_values("sclip", "voc", official=True)["area_thd"] == 0.1
    assert (
        "area_thd" not in preset_values("sclip", "voc")
        and preset_values("naclip", "voc", True)["window"] == 0
    )

    loaded = LoadedCLIP(vit, tokenizer, None, None, "toy", "none", 32)  # type: ignore[arg-type]
    pil = _images()[0]
    labels, probs = segment_image(
        loaded, pil, ["background", ["cat", "kitten"], "car"], "sclip", dataset="voc"
    )
    assert labels.shape == (30, 40) and probs.shape == (3, 30, 40) and labels.max() <= 2
    common_labels, common_probs = segment_image(loaded, pil, ["cat", "car"], "sclip", protocol="common")
    assert torch.equal(common_labels, common_probs.argmax(0))
    with pytest.raises(ValueError, match="no official segmentor"):
        segment_image(loaded, pil, ["cat", "car"], "maskclip")
