"""The nulls of notebook 05: the shared fraction over random words, the unrelated-text control, and the
token norms beside the empty prompt's map (the CAM bridge)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery_lib.data.shipped import example_images
from surgery_lib.eval import analysis
from surgery_lib.maps.text import text_features


@pytest.fixture(scope="module")
def data():
    classes, items = example_images("composites", limit=2)
    return classes, [it for it in items if it.masks]


def test_shared_fraction_is_one_over_t_for_orthogonal_texts_and_larger_in_a_cone():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(20, 64, generator=gen)
    for t in (2, 5, 16):
        axes = torch.eye(64)[:t]  # orthogonal texts along different axes: disjoint products
        assert torch.allclose(analysis.shared_fraction(tokens, axes), torch.full((20,), 1 / t), atol=1e-6)
    common = torch.nn.functional.normalize(torch.randn(64, generator=gen), dim=0)
    spread = torch.randn(8, 64, generator=gen)
    cone = torch.nn.functional.normalize(common + 0.2 * spread / 8, dim=-1)  # a narrow cone (rows ~0.2 off)
    wide = torch.nn.functional.normalize(spread, dim=-1)
    in_cone, random = analysis.shared_fraction(tokens, cone), analysis.shared_fraction(tokens, wide)
    assert (in_cone > 0.8).all() and (random < 0.4).all()
    same = analysis.shared_fraction(tokens, common.expand(8, 64))
    assert torch.allclose(same, torch.ones(20), atol=1e-5)  # every text the same: all shared
    with pytest.raises(ValueError, match="share D"):
        analysis.shared_fraction(tokens, axes[:, :10])


def test_random_text_shared_fraction_gives_the_classes_beside_random_words(toy_vit, data):
    classes, items = data
    records = analysis.random_text_shared_fraction(toy_vit, items, classes, draws=3)
    assert len(records) == len(items) * 4
    assert {r["texts"] for r in records} == {"classes", "random words"}
    assert all(0 < r["shared_fraction"] <= 1 + 1e-6 for r in records)
    assert records == analysis.random_text_shared_fraction(toy_vit, items, classes, draws=3)  # seeded
    with pytest.raises(ValueError, match="not class names"):
        analysis.random_text_shared_fraction(toy_vit, items, classes, words=classes[:3])


def test_unrelated_text_controls_are_prompt_ensembles_of_non_class_words(toy_vit, data):
    classes, _ = data
    controls = analysis.unrelated_text_controls(toy_vit, [*classes, "chair"], count=3)
    assert list(controls) == ["unrelated text: window", "unrelated text: bottle", "unrelated text: cloud"]
    expected = text_features(toy_vit.model, toy_vit.tokenizer, ["window"]).float()
    assert torch.allclose(controls["unrelated text: window"], expected)
    assert all(v.shape == (1, expected.shape[1]) for v in controls.values())


def test_token_norms_and_empty_map_are_per_position(toy_vit, data):
    from surgery_lib.config import SurgeryConfig
    from surgery_lib.maps.explain import encode_image_tokens
    from surgery_lib.maps.features import cosine_similarity
    from surgery_lib.maps.text import empty_prompt_features

    _, items = data
    out = analysis.token_norms_and_empty_map(toy_vit, items)
    h, w = out["grid"]
    assert out["norms"].shape == out["empty"].shape == (len(items), h * w)
    assert (out["norms"] > 0).all()
    tokens, _ = encode_image_tokens(
        toy_vit.model, toy_vit.reference_preprocess(items[0].image)[None], SurgeryConfig.off()
    )
    empty = cosine_similarity(tokens, empty_prompt_features(toy_vit.model, toy_vit.tokenizer))[0, 1:, 0]
    assert torch.allclose(out["empty"][0], empty, atol=1e-5)  # the empty prompt's map at token resolution
    with pytest.raises(ValueError, match="at least one"):
        analysis.token_norms_and_empty_map(toy_vit, [])
    assert np.isfinite(out["norms"].numpy()).all()
