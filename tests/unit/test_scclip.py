"""SC-CLIP (``surgery_lib.methods.scclip``): its local-outlier test and in-filling against their
definitions, per-image results at any batch size, the model left as it was, the towers and grids it
refuses by name, and the typical mistakes of ``FORMAT.md`` moving the output beyond the golden tolerance."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_unchanged, make_rn, make_vit, random_images, snapshot

from surgery_lib import encode_image_tokens
from surgery_lib.config import SurgeryConfig
from surgery_lib.methods import METHODS, get_method
from surgery_lib.methods import scclip as sc
from surgery_lib.model import SurgeryError, UnsupportedModelError, dense_forward, tiny_siglip

PRESET = METHODS["scclip"]
TOLERANCE = 1e-5
"""The golden files' tolerance on the unit-norm patch tokens (FORMAT.md)."""


@pytest.fixture(scope="module")
def vit():
    """12 blocks (the official ViT-B/16 indices), patch 8, native 48 px: a 6×6 grid (36 patches). The
    biases are scaled by 0.1: at conftest's 0.5 they add one shared vector to every token, the patch
    tokens are nearly parallel and SC-CLIP's 0.4 thresholds never bite (FORMAT.md's 12-block weights
    avoid it the same way)."""
    model = make_vit(layers=12, image_size=48, seed=3)
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            if p.ndim == 1 and name != "class_embedding" and not ("ln" in name and name.endswith("weight")):
                p.mul_(0.1)
    return model


def _reference_lof(x: torch.Tensor, k: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """FORMAT.md's definition, point by point in float64: squared distances, ``kd(p)`` the distance to the
    k-th nearest other point, ``LOF(p) = mean_{o∈𝒩_p} kd(p) / kd(o)``, outliers above the linear 0.95
    quantile."""
    x = x.double()
    n = x.shape[0]
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    neighbours, kd = [], torch.empty(n, dtype=torch.float64)
    for p in range(n):
        others = sorted((o for o in range(n) if o != p), key=lambda o: d[p, o].item())[:k]
        neighbours.append(others)
        kd[p] = d[p, others[-1]]
    scores = torch.stack([(kd[p] / kd[neighbours[p]]).mean() for p in range(n)])
    ranked = scores.sort().values
    position = 0.95 * (n - 1)
    low = int(position)
    threshold = ranked[low] + (position - low) * (ranked[low + 1] - ranked[low])
    return scores > threshold, scores


def test_the_local_outlier_factor_is_the_codes_not_sklearns():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 36, 8, generator=gen) * torch.rand(3, 36, 1, generator=gen) * 3
    outliers, scores = sc.local_outlier_factor(x)
    for b in range(3):
        want_outliers, want_scores = _reference_lof(x[b])
        torch.testing.assert_close(scores[b].double(), want_scores, atol=1e-5, rtol=1e-5)
        assert torch.equal(outliers[b], want_outliers)
    assert outliers.sum(-1).tolist() == [2, 2, 2]  # 36 distinct scores: 2 above the 0.95 quantile


def test_a_far_point_is_an_outlier():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 40, 4, generator=gen) * 0.1
    x[0, 17] += 5.0
    outliers, scores = sc.local_outlier_factor(x)
    assert outliers[0, 17] and scores[0].argmax() == 17


def test_in_filling_takes_the_mean_of_the_non_outlier_grid_neighbours():
    h, w = 4, 5
    tokens = torch.arange(h * w, dtype=torch.float32).reshape(1, h * w, 1) ** 2  # not linear: means differ
    outliers = torch.zeros(1, h * w, dtype=torch.bool)
    outliers[0, [0, 7, 8]] = True  # a corner and two neighbours, at (1, 2) and (1, 3)
    filled = sc.fill_outliers(tokens, outliers, (h, w))[0, :, 0]
    t = tokens[0, :, 0]
    assert filled[0] == (t[1] + t[5] + t[6]) / 3  # (0, 0): (0, 1), (1, 0), (1, 1)
    assert filled[7] == t[[1, 2, 3, 6, 11, 12, 13]].mean()  # (1, 2): 8 neighbours less the outlier 8
    assert filled[8] == t[[2, 3, 4, 9, 12, 13, 14]].mean()  # (1, 3): less the outlier 7
    keep = torch.ones(h * w, dtype=torch.bool)
    keep[[0, 7, 8]] = False
    assert torch.equal(filled[keep], t[keep])
    alone = torch.ones(1, h * w, dtype=torch.bool)  # every neighbour an outlier: unchanged
    assert torch.equal(sc.fill_outliers(tokens, alone, (h, w)), tokens)


def test_block_indices_follow_the_official_settings():
    assert sc.scclip_settings(12) == sc.SCCLIPSettings(8, 3, 3, 9, 0.3)  # ViT-B/16 defaults
    assert sc.scclip_settings(24) == sc.SCCLIPSettings(16, 6, 8, 18, 0.1)  # the authors' ViT-L/14
    assert sc.scclip_settings(7) == sc.SCCLIPSettings(5, 2, 2, 5, 0.3)  # scaled, at most L - 2
    with pytest.raises(UnsupportedModelError, match="at least 2 blocks"):
        sc.scclip_settings(1)


def test_each_image_gets_what_it_gets_alone(vit):
    for hw in ((48, 48), (48, 64)):  # the native grid and a non-square one (6×8)
        x = random_images(vit, batch=3, hw=hw, seed=5)
        with torch.no_grad():
            together, grid, outliers, scores = sc.scclip_run(vit, x, PRESET)
            for i in range(3):
                alone, _, out_i, scores_i = sc.scclip_run(vit, x[i : i + 1], PRESET)
                torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(scores[i : i + 1], scores_i, atol=1e-6, rtol=1e-6)
                assert torch.equal(outliers[i : i + 1], out_i)
        assert grid == (hw[0] // 8, hw[1] // 8) and together.shape == (3, 1 + grid[0] * grid[1], 32)


def test_the_engine_runs_it_and_token_0_is_the_towers_image_embedding(vit):
    x = random_images(vit, seed=2)
    before = snapshot(vit)
    with torch.no_grad():
        tokens, _ = encode_image_tokens(vit, x, PRESET)
        raw, _, _, _ = sc.scclip_run(vit, x, PRESET)
        vanilla, _ = dense_forward(vit, x, SurgeryConfig.off())
    torch.testing.assert_close(tokens, raw / raw.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(raw[:, 0], vanilla[:, 0], atol=1e-5, rtol=1e-5)
    assert (tokens[:, 1:] - vanilla[:, 1:] / vanilla[:, 1:].norm(dim=-1, keepdim=True)).abs().max() > 0.01
    assert_unchanged(vit, before)


def test_towers_and_grids_it_cannot_take_are_refused_by_name(vit):
    assert get_method("scclip").towers == ("vit",)
    rn = make_rn()
    before_rn = snapshot(rn)
    with pytest.raises(UnsupportedModelError, match=r"'scclip'.*ModifiedResNet"):
        dense_forward(rn, random_images(rn), PRESET)
    with pytest.raises(UnsupportedModelError, match=r"'scclip'.*ModifiedResNet"):
        sc.scclip_run(rn, random_images(rn), PRESET)
    assert_unchanged(rn, before_rn)
    siglip = tiny_siglip(seed=0)
    with pytest.raises(UnsupportedModelError, match=r"'scclip'.*TimmModel.*class token"):
        dense_forward(siglip, torch.randn(1, 3, 96, 96), PRESET)
    before = snapshot(vit)
    with pytest.raises(SurgeryError, match=r"at least 31 patch tokens.*5×6 grid"):
        dense_forward(vit, random_images(vit, hw=(40, 48)), PRESET)  # 30 patches
    with pytest.raises(SurgeryError, match="at least 31 patch tokens"):
        sc.local_outlier_factor(torch.randn(1, 30, 4))
    assert_unchanged(vit, before)


@pytest.mark.parametrize(
    "mistake",
    ["no in-filling", "no CLS term", "S8 from block 9", "S3 from block 4", "multi-level over 3..10"],
)
def test_a_typical_mistake_moves_the_tokens_beyond_the_tolerance(vit, monkeypatch, mistake):
    x = random_images(vit, seed=4)
    with torch.no_grad():
        right, _ = encode_image_tokens(vit, x, PRESET)
        settings = sc.scclip_settings(12)
        if mistake == "no in-filling":
            monkeypatch.setattr(sc, "fill_outliers", lambda tokens, outliers, grid: tokens)
        else:
            changes = {
                "no CLS term": {"res_cls": 0.0},
                "S8 from block 9": {"pre_adjust": 9},
                "S3 from block 4": {"post_adjust": 4},
                "multi-level over 3..10": {"multi_end": 10},
            }[mistake]
            wrong_settings = sc.SCCLIPSettings(**{**settings.__dict__, **changes})
            monkeypatch.setattr(sc, "scclip_settings", lambda n: wrong_settings)
        wrong, _ = encode_image_tokens(vit, x, PRESET)
    assert (wrong[:, 1:] - right[:, 1:]).abs().max() > 10 * TOLERANCE, mistake
