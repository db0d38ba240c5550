"""Feature surgery, similarity maps, points, text features and the high-level explain()."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_rn, make_vit, random_images

from surgery_lib import (
    PROMPT_TEMPLATES,
    SurgeryConfig,
    clear_text_cache,
    cosine_similarity,
    empty_prompt_features,
    encode_image_tokens,
    explain,
    feature_surgery,
    similarity,
    similarity_map,
    similarity_to_points,
    text_features,
)
from surgery_lib.maps.features import feature_surgery_naive


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("t", [1, 2, 5, 20])
def test_feature_surgery_equals_naive_formula(t):
    f, txt = _unit(3, 50, 16), _unit(t, 16, seed=1)
    torch.testing.assert_close(feature_surgery(f, txt), feature_surgery_naive(f, txt), atol=1e-6, rtol=1e-5)


def test_feature_surgery_matches_definition():
    f, txt = _unit(2, 10, 8), _unit(4, 8, seed=2)
    p = torch.softmax(2 * f[:, 0] @ txt.t(), -1)
    w = p / p.mean(-1, keepdim=True)
    s = torch.einsum("bnc,tc->bnt", f, txt) * w[:, None, :]
    torch.testing.assert_close(feature_surgery(f, txt), s - s.mean(-1, keepdim=True))
    # the similarities of each token sum to zero over classes
    assert feature_surgery(f, txt).sum(-1).abs().max() < 1e-5


def test_feature_surgery_with_redundant_features():
    f, txt, r = _unit(2, 10, 8), _unit(3, 8, seed=1), _unit(1, 8, seed=2)
    torch.testing.assert_close(feature_surgery(f, txt, r), f @ (txt - r).t())
    torch.testing.assert_close(feature_surgery(f, txt, r[0]), f @ (txt - r).t())


def test_feature_surgery_does_not_modify_inputs():
    f, txt = _unit(2, 10, 8), _unit(3, 8, seed=1)
    f0, t0 = f.clone(), txt.clone()
    feature_surgery(f, txt)
    feature_surgery(f, txt, txt[:1])
    assert torch.equal(f, f0) and torch.equal(txt, t0)


def test_feature_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="feature sizes differ"):
        feature_surgery(_unit(1, 5, 8), _unit(2, 16))
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        cosine_similarity(_unit(1, 5, 8), torch.zeros(0, 8))


def test_similarity_map_shape_range_and_orientation():
    b, h, w, t = 2, 3, 5, 4
    sim = torch.zeros(b, h * w, t)
    sim[:, 0 * w + 4, :] = 1.0  # top-right cell hot
    maps = similarity_map(sim, (30, 50), grid=(h, w))
    assert maps.shape == (b, 30, 50, t)
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps[0, 0, -1, 0] > 0.9 and maps[0, -1, 0, 0] < 0.1


def test_similarity_map_constant_input_does_not_nan():
    maps = similarity_map(torch.ones(1, 4, 2), (8, 8))
    assert torch.isfinite(maps).all()


def test_similarity_map_grid_errors():
    with pytest.raises(ValueError, match="square grid"):
        similarity_map(torch.zeros(1, 6, 1), (8, 8))
    with pytest.raises(ValueError, match="cells"):
        similarity_map(torch.zeros(1, 6, 1), (8, 8), grid=(2, 2))


def test_points_positives_on_hot_region_and_bounds():
    h, w = 8, 12
    sim = torch.zeros(h, w)
    sim[:4, 6:] = 1.0  # top-right quadrant
    points, labels = similarity_to_points(sim.flatten(), (80, 120), grid=(h, w))
    k = len(labels) // 2
    assert k > 0 and torch.equal(labels, torch.cat([torch.ones(k), torch.zeros(k)]).long())
    pos, neg = points[:k], points[k:]
    assert (pos[:, 0] >= 60).all() and (pos[:, 1] < 40).all()  # x right half, y top half
    assert not ((neg[:, 0] >= 60) & (neg[:, 1] < 40)).any()
    assert (points[:, 0] <= 119).all() and (points[:, 1] <= 79).all() and (points >= 0).all()


def test_points_count_is_capped_at_half_the_cells():
    _, labels = similarity_to_points(torch.arange(16.0), (32, 32), threshold=0.0)
    assert len(labels) == 2 * (4 // 2)  # 4x4 grid -> 2x2 cells after downsampling


def test_prompt_templates():
    assert len(PROMPT_TEMPLATES) == 85 and len(set(PROMPT_TEMPLATES)) == 85
    assert all(t.count("{}") == 1 for t in PROMPT_TEMPLATES)
    assert PROMPT_TEMPLATES[-1] == "this is one {} in the scene."


def test_text_features_are_normalised_ensembles(tokenizer):
    model = make_vit()
    feats = text_features(model, tokenizer, ["cat", "dog"], use_cache=False)
    assert feats.shape == (2, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))
    prompts = tokenizer([t.format("cat") for t in PROMPT_TEMPLATES])
    each = F.normalize(model.encode_text(prompts), dim=-1).mean(0)
    torch.testing.assert_close(feats[0], each / each.norm(), atol=1e-6, rtol=1e-5)


def test_text_cache_is_used_and_clearable(tokenizer, monkeypatch):
    model = make_vit()
    clear_text_cache()
    calls = []
    original = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    a = text_features(model, tokenizer, ["cat"])
    b = text_features(model, tokenizer, ["cat"])
    assert len(calls) == 1 and torch.equal(a, b)
    text_features(model, tokenizer, ["cat", "dog"])
    assert len(calls) == 2  # only "dog" is new
    clear_text_cache(model)
    text_features(model, tokenizer, ["cat"])
    assert len(calls) == 3


def test_similarity_dispatch(tokenizer):
    f, txt, r = _unit(1, 5, 8), _unit(3, 8, seed=1), _unit(1, 8, seed=2)
    torch.testing.assert_close(similarity(f, txt, SurgeryConfig.off()), f @ txt.t())
    torch.testing.assert_close(similarity(f, txt, SurgeryConfig.paper()), feature_surgery(f, txt))
    cfg = SurgeryConfig(redundant_features="empty_prompt")
    torch.testing.assert_close(similarity(f, txt, cfg, r), f @ (txt - r).t())
    with pytest.raises(ValueError, match="empty prompt"):
        similarity(f, txt[:1], SurgeryConfig.paper())


@pytest.mark.parametrize("make", [make_vit, make_rn])
def test_explain_end_to_end(make, tokenizer):
    model = make()
    images = random_images(model)
    out = explain(model, tokenizer, images, ["cat", "dog", "sky"], size=(20, 30))
    assert out.maps.shape == (2, 20, 30, 3)
    assert out.similarity.shape == (2, 1 + out.grid[0] * out.grid[1], 3)
    torch.testing.assert_close(out.image_scores.sum(-1), torch.ones(2))
    pts, lab = out.points("dog", image=1)
    assert pts.shape == (len(lab), 2)
    single = explain(model, tokenizer, images, ["cat"])  # single label: empty prompt as redundancy
    empty = empty_prompt_features(model, tokenizer)
    texts = text_features(model, tokenizer, ["cat"])
    assert single.maps.shape[-1] == 1
    raw = explain(model, tokenizer, images, ["cat"], method=SurgeryConfig.off())
    assert not torch.allclose(raw.similarity, single.similarity)
    assert empty.shape == texts.shape == (1, 32)


def test_two_labels_alone_are_complements_but_not_with_a_vocabulary(tokenizer):
    """Feature surgery subtracts the mean over the labels passed: two labels alone give S₂ = −S₁ (the
    pitfall of a figure that shows two labels); over a larger vocabulary the two maps are no longer
    complements, and they equal the vocabulary run's columns."""
    model = make_vit()
    images = random_images(model)
    labels, vocabulary = ["cat", "dog"], ["sky", "cat", "car", "tree", "dog", "boat"]
    alone = explain(model, tokenizer, images, labels)
    torch.testing.assert_close(alone.similarity[..., 1], -alone.similarity[..., 0])
    torch.testing.assert_close(alone.maps[..., 1], 1 - alone.maps[..., 0], atol=1e-5, rtol=0)
    wide = explain(model, tokenizer, images, labels, vocabulary=vocabulary)
    assert wide.labels == labels and wide.maps.shape[-1] == 2
    assert (wide.similarity[..., 1] + wide.similarity[..., 0]).abs().max() > 1e-3
    assert (wide.maps[..., 1] - (1 - wide.maps[..., 0])).abs().max() > 1e-2
    everything = explain(model, tokenizer, images, ["cat", "dog", "sky", "car", "tree", "boat"])
    torch.testing.assert_close(wide.similarity, everything.similarity[..., :2])
    # image-level probabilities run over the whole vocabulary
    torch.testing.assert_close(wide.image_scores, everything.image_scores[:, :2])
    assert (wide.image_scores.sum(-1) < 1).all()
    # a single label with a vocabulary uses the multi-class form, not the empty prompt
    one = explain(model, tokenizer, images, ["cat"], vocabulary=vocabulary)
    torch.testing.assert_close(one.similarity[..., 0], wide.similarity[..., 0])
    with pytest.raises(TypeError, match="vocabulary"):
        explain(model, tokenizer, images, labels, vocabulary="cat")


def test_explanation_keeps_the_cosine_and_the_empty_prompt_similarity(tokenizer):
    model = make_vit()
    images = random_images(model)
    out = explain(model, tokenizer, images, ["cat", "dog", "sky"])
    tokens, _ = encode_image_tokens(model, images)
    torch.testing.assert_close(
        out.cosine, tokens @ text_features(model, tokenizer, ["cat", "dog", "sky"]).t()
    )
    torch.testing.assert_close(
        out.empty_similarity, (tokens @ empty_prompt_features(model, tokenizer).t())[..., 0]
    )
