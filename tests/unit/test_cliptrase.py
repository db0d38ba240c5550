"""CLIPtrase (``surgery_lib.methods.cliptrase``): its forward and cluster affinity against a reference
written from the official lines on open_clip's own modules, per image at any batch size, the model
untouched, ModifiedResNet refused by name, and the typical mistakes of FORMAT.md told apart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, make_rn, make_vit, random_images, snapshot

from surgery_lib import encode_image_tokens
from surgery_lib.methods import METHODS, get_method
from surgery_lib.methods.cliptrase import CONFIG, cluster_affinity
from surgery_lib.model import UnsupportedModelError, dense_forward

ATOL = 1e-5


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _reference(model, images, mistake: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised patch tokens ``(B, N, D)`` and the affinity ``(B, N, N)`` as the official code computes
    them (native grid; ``mistake`` one of FORMAT.md's: ``qk``, ``mean``, ``no_residual``)."""
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    blocks = visual.transformer.resblocks
    affinity = None
    for i, block in enumerate(blocks):
        attn = block.attn
        heads = attn.num_heads
        z = block.ln_1(x)
        q, k, v = (_heads(t, heads) for t in F.linear(z, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
        if i == len(blocks) - 2:  # the weights it returns: mean_heads of the three cosine matrices / 3
            cos = [torch.cosine_similarity(u.unsqueeze(-2), u.unsqueeze(-3), dim=-1) for u in (q, k, v)]
            w = (sum(cos) / 3.0).mean(dim=1)
            affinity = torch.relu(w[:, 1:, 1:] - w[:, :1, 1:])
        if i < len(blocks) - 1:
            x = block(x)
            continue
        s = q.shape[-1] ** -0.5
        if mistake == "qk":
            a = torch.softmax(s * q @ k.transpose(-1, -2), -1)
        else:
            a = sum(torch.softmax(s * u @ u.transpose(-1, -2), -1) for u in (q, k, v))
            a = a / 3 if mistake == "mean" else a
        o = attn.out_proj((a @ v).transpose(1, 2).reshape(x.shape))
        x = o if mistake == "no_residual" else x + o
        if mistake != "no_residual":
            x = x + block.mlp(block.ln_2(x))
    tokens = F.normalize(visual.ln_post(x) @ visual.proj, dim=-1)
    return tokens[:, 1:], affinity


@pytest.fixture(scope="module")
def model():
    return make_vit(layers=4)


def test_the_preset_is_registered_and_runs_on_vit_only() -> None:
    method = get_method("cliptrase")
    assert METHODS["cliptrase"] is CONFIG and CONFIG.forward == "cliptrase"
    assert method.towers == ("vit",) and not CONFIG.feature_surgery


def test_tokens_and_affinity_match_the_official_lines(model) -> None:
    images = random_images(model, batch=2)
    with torch.no_grad():
        tokens, grid = encode_image_tokens(model, images, CONFIG)
        affinity = cluster_affinity(model, images)
        want_tokens, want_affinity = _reference(model, images)
    assert grid == (4, 4)
    assert tokens.shape == (2, 17, 32) and affinity.shape == (2, 16, 16)
    assert (tokens[:, 1:] - want_tokens).abs().max() <= ATOL
    assert (affinity - want_affinity).abs().max() <= ATOL
    assert (affinity >= 0).all() and (affinity > 0).any()


def test_typical_mistakes_move_the_tokens_beyond_the_tolerance(model) -> None:
    images = random_images(model, batch=2)
    with torch.no_grad():
        tokens, _ = encode_image_tokens(model, images, CONFIG)
        for mistake in ("qk", "mean", "no_residual"):
            wrong, _ = _reference(model, images, mistake)
            assert (tokens[:, 1:] - wrong).abs().max() > 100 * ATOL, mistake
        sclip, _ = encode_image_tokens(model, images, METHODS["sclip"])  # q-q + k-k without v-v
    assert (tokens - sclip).abs().max() > 100 * ATOL


def test_each_image_gets_its_own_result_at_any_batch_size(model) -> None:
    images = random_images(model, batch=3, hw=(40, 24))  # a non-native, non-square grid too
    with torch.no_grad():
        tokens, grid = dense_forward(model, images, CONFIG)
        affinity = cluster_affinity(model, images)
        for i in range(3):
            alone, _ = dense_forward(model, images[i : i + 1], CONFIG)
            assert torch.allclose(tokens[i : i + 1], alone, atol=ATOL)
            assert torch.allclose(affinity[i : i + 1], cluster_affinity(model, images[i : i + 1]), atol=ATOL)
    assert grid == (5, 3) and affinity.shape == (3, 15, 15)


def test_the_model_is_unchanged_after_a_run_and_after_an_error(model) -> None:
    before = snapshot(model)
    images = random_images(model, batch=2)
    dense_forward(model, images, CONFIG)
    cluster_affinity(model, images)
    assert_unchanged(model, before)
    with pytest.raises(RuntimeError):
        dense_forward(model, images[:, :2], CONFIG)  # two channels: the patch embedding refuses
    with pytest.raises(RuntimeError):
        cluster_affinity(model, images[:, :2])
    assert_unchanged(model, before)


def test_modified_resnet_and_one_block_towers_are_refused_by_name() -> None:
    rn = make_rn()
    images = random_images(rn, batch=1)
    with pytest.raises(UnsupportedModelError, match=r"'cliptrase'.*ModifiedResNet"):
        dense_forward(rn, images, CONFIG)
    with pytest.raises(UnsupportedModelError, match=r"'cliptrase'.*ModifiedResNet"):
        cluster_affinity(rn, images)
    one = make_vit(layers=1)
    with pytest.raises(UnsupportedModelError, match="at least 2 blocks"):
        cluster_affinity(one, random_images(one, batch=1))
