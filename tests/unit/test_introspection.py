"""Introspection: traced residual streams, attention maps per kind, residual contributions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, make_rn, make_vit, random_images, snapshot

from surgery_lib import (
    SurgeryConfig,
    SurgeryError,
    attention_maps,
    encode_image_tokens,
    residual_contributions,
    trace_forward,
)


def test_trace_of_vanilla_forward(vit_model):
    images = random_images(vit_model)
    trace = trace_forward(vit_model, images)
    visual = vit_model.visual
    assert len(trace.block_inputs) == len(trace.attention) == len(trace.ffn) == 8
    for i in range(7):
        torch.testing.assert_close(
            trace.block_inputs[i + 1], trace.block_inputs[i] + trace.attention[i] + trace.ffn[i]
        )
    expected = visual.transformer(visual._embeds(images))
    torch.testing.assert_close(trace.final, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        SurgeryConfig.off(),
        SurgeryConfig.paper(),
        SurgeryConfig(skip_ffn=False, depth=3),
        SurgeryConfig(dual_path=False, depth=2),
    ],
)
def test_contributions_add_up_to_the_tokens(vit_model, config):
    images = random_images(vit_model)
    parts = residual_contributions(vit_model, images, config)
    total = parts.embedding + parts.attention.sum(0) + parts.ffn.sum(0) + parts.bias
    torch.testing.assert_close(total, parts.tokens, atol=1e-4, rtol=1e-4)
    expected, _ = encode_image_tokens(vit_model, images, config)
    torch.testing.assert_close(F.normalize(parts.tokens, dim=-1), expected, atol=1e-5, rtol=1e-5)


def test_similarity_parts_add_up_to_cosine_similarity():
    model = make_vit()
    images = random_images(model)
    parts = residual_contributions(model, images, SurgeryConfig.paper())
    text = F.normalize(torch.randn(3, 32), dim=-1)
    shares = parts.similarity_parts(text)
    total = shares["embedding"] + shares["attention"].sum(0) + shares["ffn"].sum(0) + shares["bias"]
    tokens, _ = encode_image_tokens(model, images, SurgeryConfig.paper())
    torch.testing.assert_close(total, tokens @ text.t(), atol=1e-4, rtol=1e-4)
    assert shares["attention"].shape == (8, 2, 17, 3)


def test_skipped_ffn_contributes_nothing_to_patches():
    model = make_vit()
    parts = residual_contributions(model, random_images(model), SurgeryConfig.paper())
    assert parts.ffn[-6:, :, 1:].abs().max() == 0
    assert parts.ffn[-6:, :, :1].abs().max() > 0  # the class token keeps the original path's FFN
    assert parts.ffn[:2].abs().max() > 0


@pytest.mark.parametrize("block", [0, 3, -1])
def test_attention_maps(vit_model, block):
    images = random_images(vit_model)
    maps, grid = attention_maps(
        vit_model, images, block=block, query=5, kinds=("qk", "qq", "kk", "vv", "identity")
    )
    n = 1 + grid[0] * grid[1]
    for kind, m in maps.items():
        assert m.shape == (2, 2, n), kind
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 2))
    assert maps["identity"][:, :, 5].eq(1).all()
    # v-v attention of block b from the block's input, by hand
    trace = trace_forward(vit_model, images)
    blk = vit_model.visual.transformer.resblocks[block]
    a = blk.ln_1(trace.block_inputs[block])
    v = F.linear(a, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, -1)[2]
    v = v.reshape(2, n, 2, -1).transpose(1, 2)
    want = torch.softmax(v @ v.transpose(-1, -2) / v.shape[-1] ** 0.5, -1)[:, :, 5]
    torch.testing.assert_close(maps["vv"], want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(maps["vv"], maps["qk"])


def test_attention_maps_resnet_pool():
    model = make_rn()
    maps, grid = attention_maps(model, random_images(model), block=0, query=0)
    assert grid == (2, 2) and maps["vv"].shape[-1] == 5
    with pytest.raises(IndexError, match="one attention layer"):
        attention_maps(model, random_images(model), block=1, query=0)


def test_introspection_errors_and_no_side_effects():
    model = make_vit()
    before = snapshot(model)
    images = random_images(model)
    with pytest.raises(IndexError, match="block 8 out of range"):
        attention_maps(model, images, block=8, query=0)
    with pytest.raises(IndexError, match="query token 99"):
        attention_maps(model, images, block=0, query=99)
    with pytest.raises(ValueError, match="unknown attention kind"):
        attention_maps(model, images, block=0, query=0, kinds=("xy",))
    with pytest.raises(SurgeryError, match="ViT"):
        residual_contributions(make_rn(), random_images(make_rn()))
    assert_unchanged(model, before)
