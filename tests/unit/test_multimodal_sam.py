"""Per-word maps and word importance; text -> SAM points (combined targets, gate, quantile); SAM plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_vit, random_images

from surgery_lib import SurgeryConfig, empty_prompt_features, encode_image_tokens, similarity_to_points
from surgery_lib.maps.explain import Explanation
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.multimodal import caption_tokens, word_importance, word_similarity
from surgery_lib.maps.sam import SamSegmenter, SamUnavailableError, parse_target, text_points

# ---- multimodal ---------------------------------------------------------------------------------


def test_caption_tokens_exclude_special_tokens_and_keep_order(tokenizer):
    model = make_vit()
    cap = caption_tokens(model, tokenizer, "A dog chases a red ball")
    assert cap.words == ["a", "dog", "chases", "a", "red", "ball"]
    assert cap.positions == [1, 2, 3, 4, 5, 6]
    assert cap.features.shape == (6, 32)
    torch.testing.assert_close(cap.features.norm(dim=-1), torch.ones(6))
    # the same token in another position has another (contextual) feature
    assert not torch.allclose(cap.features[0], cap.features[3])


def test_caption_errors(tokenizer):
    model = make_vit()
    with pytest.raises(ValueError, match="empty"):
        caption_tokens(model, tokenizer, "   ")
    with pytest.raises(ValueError, match="too long"):
        caption_tokens(model, tokenizer, "word " * 100)


@pytest.mark.parametrize("redundancy", ["empty_prompt", "word_mean", "none"])
def test_word_similarity_and_importance(tokenizer, redundancy):
    model = make_vit()
    images = random_images(model)
    tokens, grid = encode_image_tokens(model, images, SurgeryConfig.paper())
    cap = caption_tokens(model, tokenizer, "a cat on a mat")
    empty = empty_prompt_features(model, tokenizer)
    sim = word_similarity(tokens, cap, redundancy, empty)
    assert sim.shape == (2, 1 + grid[0] * grid[1], 5)
    r = {"empty_prompt": empty, "word_mean": cap.features.mean(0, keepdim=True), "none": 0 * empty}[
        redundancy
    ]
    torch.testing.assert_close(sim, tokens @ (cap.features - r).t())
    imp = word_importance(sim)
    assert imp.shape == (2, 5) and imp.min() == 0 and imp.max() == 1
    assert similarity_map(sim[:, 1:], (16, 16), grid).shape == (2, 16, 16, 5)


def test_word_mean_redundancy_sums_to_zero_over_words(tokenizer):
    model = make_vit()
    tokens, _ = encode_image_tokens(model, random_images(model))
    sim = word_similarity(tokens, caption_tokens(model, tokenizer, "two birds on a wire"), "word_mean")
    assert sim.sum(-1).abs().max() < 1e-5


def test_empty_prompt_redundancy_needs_features(tokenizer):
    model = make_vit()
    tokens, _ = encode_image_tokens(model, random_images(model))
    with pytest.raises(ValueError, match="empty_features"):
        word_similarity(tokens, caption_tokens(model, tokenizer, "a cat"), "empty_prompt")


# ---- text -> points -------------------------------------------------------------------------------


def _explanation(h: int = 8, w: int = 8) -> Explanation:
    """Two labels on a constructed grid: 'cat' hot top-left, 'bench' hot bottom-right, 'sky' flat-ish."""
    sim = torch.zeros(1, 1 + h * w, 3)
    grid = torch.zeros(h, w, 3)
    grid[: h // 2, : w // 2, 0] = 1.0
    grid[h // 2 :, w // 2 :, 1] = 1.0
    grid[:, :, 2] = torch.linspace(0, 0.1, h * w).reshape(h, w)
    sim[0, 1:] = grid.reshape(h * w, 3)
    maps = similarity_map(sim[:, 1:], (80, 80), (h, w))
    scores = torch.tensor([[0.7, 0.25, 0.05]])
    return Explanation(["cat", "bench", "sky"], sim, maps, (h, w), scores)


def test_single_target_is_the_reference_rule():
    ex = _explanation()
    points, labels = text_points(ex, "cat")
    want_p, want_l = similarity_to_points(ex.similarity[0, 1:, 0], (80, 80), grid=(8, 8))
    assert torch.equal(points, want_p) and torch.equal(labels, want_l)
    pos = points[labels == 1]
    assert (pos < 40).all()  # top-left quadrant: x < 40 and y < 40


def test_combined_target_positives_from_each_map_negatives_from_the_mean():
    ex = _explanation()
    points, labels = text_points(ex, "cat+bench")
    pos, neg = points[labels == 1], points[labels == 0]
    top_left = (pos[:, 0] < 40) & (pos[:, 1] < 40)
    bottom_right = (pos[:, 0] >= 40) & (pos[:, 1] >= 40)
    assert top_left.any() and bottom_right.any() and (top_left | bottom_right).all()
    assert len(neg) == len(pos)
    # negatives lie where neither class is: top-right or bottom-left
    assert (((neg[:, 0] >= 40) & (neg[:, 1] < 40)) | ((neg[:, 0] < 40) & (neg[:, 1] >= 40))).all()


def test_combined_target_never_puts_a_negative_on_a_positive():
    """'cat' is hot where 'bench' is very cold: the mean map is lowest on cat's positives."""
    h = w = 8
    sim = torch.zeros(1, 1 + h * w, 2)
    grid = torch.zeros(h, w, 2)
    grid[:2, :2, 0] = 1.0  # cat: top-left
    grid[:2, :2, 1] = -3.0  # bench: very cold exactly there...
    grid[6:, 6:, 1] = 1.0  # ...and hot bottom-right
    sim[0, 1:] = grid.reshape(h * w, 2)
    ex = Explanation(
        ["cat", "bench"], sim, similarity_map(sim[:, 1:], (80, 80), (h, w)), (h, w), torch.ones(1, 2)
    )
    points, labels = text_points(ex, "cat+bench")
    pos = {tuple(p) for p in points[labels == 1].tolist()}
    neg = {tuple(p) for p in points[labels == 0].tolist()}
    assert pos and neg and not pos & neg
    assert len(pos) == int((labels == 1).sum())  # no positive twice
    assert int((labels == 0).sum()) == len(neg) <= len(pos)


def test_combined_target_counts_a_shared_positive_once():
    ex = _explanation()
    points, labels = text_points(ex, "cat+cat")
    single, single_labels = text_points(ex, "cat")
    assert int((labels == 1).sum()) == int((single_labels == 1).sum())
    assert torch.equal(points[labels == 1], single[single_labels == 1])


def test_presence_gate():
    ex = _explanation()
    points, labels = text_points(ex, "sky", min_probability=0.1)
    assert points.shape == (0, 2) and labels.shape == (0,)
    points, _ = text_points(ex, "cat", min_probability=0.1)
    assert len(points) > 0
    points, _ = text_points(ex, "sky+cat", min_probability=0.1)  # one present label is enough
    assert len(points) > 0


def test_quantile_threshold():
    ex = _explanation()
    _, fixed = text_points(ex, "sky")
    _, quant = text_points(ex, "sky", quantile=0.9)
    assert len(quant) < len(fixed)
    with pytest.raises(ValueError, match="quantile"):
        text_points(ex, "sky", quantile=1.5)


def test_parse_target_errors():
    assert parse_target("cat + bench", ["cat", "bench"]) == [0, 1]
    for bad in ("dog", "cat+", "", "cat+dog"):
        with pytest.raises(ValueError, match="not explained"):
            parse_target(bad, ["cat", "bench"])


# ---- SAM plumbing -------------------------------------------------------------------------------------


def _tiny_sam():
    """A randomly initialised SAM small enough for CPU tests (256 px input, width 32)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=32)
    prompt = PromptEncoder(
        embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=8
    )
    decoder = MaskDecoder(
        transformer_dim=32,
        transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
        num_multimask_outputs=3,
        iou_head_hidden_dim=32,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)


def test_sam_plumbing_with_random_sam(monkeypatch):
    segmenter = SamSegmenter(sam=_tiny_sam())
    image = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    points = torch.tensor([[80, 10], [5, 50]])  # [x, y]: x up to W=90, y up to H=60
    labels = torch.tensor([1, 0])
    seen = {}
    original = segmenter.predictor.predict

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(segmenter.predictor, "predict", spy)
    mask, score = segmenter.segment(image, points, labels)
    assert mask.shape == (60, 90) and mask.dtype == bool and np.isfinite(score)
    np.testing.assert_array_equal(seen["point_coords"], points.numpy().astype(np.float32))
    np.testing.assert_array_equal(seen["point_labels"], [1, 0])
    assert seen["multimask_output"] is True
    # the predictor scales [x, y] by the long side: x=80 of 90 maps to 80 * 256 / 90
    scaled = segmenter.predictor.transform.apply_coords(seen["point_coords"], (60, 90))
    assert scaled[0, 0] == pytest.approx(80 * 256 / 90, rel=1e-4)


def test_sam_errors(tmp_path):
    with pytest.raises(SamUnavailableError, match="no SAM checkpoint"):
        SamSegmenter(checkpoint=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown SAM model type"):
        SamSegmenter(checkpoint=tmp_path / "x.pth", model_type="vit_z")
    segmenter = SamSegmenter(sam=_tiny_sam())
    with pytest.raises(ValueError, match="no point prompts"):
        segmenter.segment(np.zeros((32, 32, 3), np.uint8), torch.zeros(0, 2), torch.zeros(0))
    with pytest.raises(ValueError, match="uint8 RGB"):
        segmenter.segment(np.zeros((32, 32), np.uint8), torch.ones(1, 2), torch.ones(1))


# ---- issue 14: special tokens, combined targets as the reference demo ------------------------------


def test_caption_tokens_with_the_start_and_end_tokens(tokenizer):
    from surgery_lib.maps.multimodal import END, START
    from surgery_lib.model.adapters import text_token_features

    model = make_vit()
    plain = caption_tokens(model, tokenizer, "A dog chases a red ball")
    full = caption_tokens(model, tokenizer, "A dog chases a red ball", special_tokens=True)
    assert full.words == [START, *plain.words, END]
    assert full.positions == [0, *plain.positions, 7]
    torch.testing.assert_close(full.features[1:-1], plain.features)
    # the end token's feature is CLIP's text embedding (the argmax position), normalised
    tokens = tokenizer(["A dog chases a red ball"])
    pooled = model.encode_text(tokens, normalize=True)[0]
    torch.testing.assert_close(full.features[-1], pooled, atol=1e-5, rtol=1e-5)
    raw = text_token_features(model, tokens)[0, 7]
    torch.testing.assert_close(full.features[-1], raw / raw.norm(), atol=1e-5, rtol=1e-5)


def _feature_explanation(model, tokenizer, labels):
    from surgery_lib.maps.explain import explain

    return explain(model, tokenizer, random_images(model, batch=1), labels, size=(64, 64))


def test_combined_target_reference_rule_is_each_label_as_a_single_text(tokenizer):
    """The default "a+b" rule follows the reference demo: each label's similarity is single-text feature
    surgery against the empty prompt (not the mean over the explained classes), and the maps are min-max
    normalised before they are averaged; combine="mean" keeps the explanation's own similarities."""
    from surgery_lib.maps.explain import explain
    from surgery_lib.maps.sam import label_similarities, target_map

    model = make_vit()
    images = random_images(model, batch=1)
    labels = ["cat", "dog", "sky", "car"]
    ex = explain(model, tokenizer, images, labels, size=(64, 64))
    sims = label_similarities(ex, [0, 1])
    for j, label in enumerate(["cat", "dog"]):
        single = explain(model, tokenizer, images, [label], size=(64, 64))  # empty prompt as redundancy
        torch.testing.assert_close(sims[:, j], single.similarity[0, 1:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sims, ex.similarity[0, 1:, :2], atol=1e-4)
    torch.testing.assert_close(label_similarities(ex, [0, 1], combine="mean"), ex.similarity[0, 1:, :2])
    # the target map: the mean of the per-label min-max normalised maps
    per_label = similarity_map(sims[None], (64, 64), ex.grid)[0]
    torch.testing.assert_close(target_map(ex, "cat+dog"), per_label.mean(-1))
    torch.testing.assert_close(target_map(ex, "cat+dog", combine="mean"), ex.maps[0, :, :, :2].mean(-1))
    torch.testing.assert_close(target_map(ex, "cat"), ex.maps[0, :, :, 0])  # one label: its own map
    # positives are each single-text map's own positives
    points, point_labels = text_points(ex, "cat+dog")
    want = set()
    for j in range(2):
        p, lab = similarity_to_points(sims[:, j], (64, 64), grid=ex.grid)
        want |= {tuple(x) for x in p[lab == 1].tolist()}
    assert {tuple(x) for x in points[point_labels == 1].tolist()} == want
    with pytest.raises(ValueError, match="combine"):
        text_points(ex, "cat+dog", combine="sum")


def test_combined_target_negatives_come_from_the_normalised_mean():
    """A map with a large range beside one with a small range: averaged raw, the large one decides where
    the negatives go; min-max normalised first (the reference), both count. Columns of the half-size
    grid the points are drawn on (8 × 8, 20 px per cell at 160 px)."""
    cat = torch.tensor([100.0, 0, 0, 5, 5, -10, -10, 5])  # positives: column 0
    bench = torch.tensor([0.0, -1, -1, 0, 0, 0.5, 0.5, 1])  # positives: column 7
    sim = torch.zeros(1, 1 + 16 * 16, 2)
    for j, column in enumerate((cat, bench)):
        sim[0, 1:, j] = column.repeat_interleave(2).repeat(16)  # 16 × 16 tokens, rows identical
    ex = Explanation(
        ["cat", "bench"], sim, similarity_map(sim[:, 1:], (160, 160), (16, 16)), (16, 16), torch.ones(1, 2)
    )
    ref_points, ref_labels = text_points(ex, "cat+bench")  # no cosine stored: the own similarities
    mean_points, mean_labels = text_points(ex, "cat+bench", combine="mean")
    assert torch.equal(ref_points[ref_labels == 1], mean_points[mean_labels == 1])
    columns = {
        "reference": ref_points[ref_labels == 0, 0] // 20,
        "mean": mean_points[mean_labels == 0, 0] // 20,
    }
    assert set(columns["reference"].tolist()) == {1, 2}  # low in both normalised maps
    assert set(columns["mean"].tolist()) == {5, 6}  # where the large-range map alone is lowest
