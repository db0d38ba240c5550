"""Invariants of the architecture surgery on tiny random models of every supported tower."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, make_rn, make_vit, random_images, snapshot

from surgery_lib import (
    SurgeryConfig,
    SurgeryError,
    apply_surgery,
    dense_forward,
    encode_image_tokens,
    is_surgery_applied,
)
from surgery_lib.model.attention import attend


def _vanilla_image_features(model, images):
    return F.normalize(model.encode_image(images), dim=-1)


def _vanilla_vit_tokens(model, images):
    """Raw CLIP dense tokens through open_clip's own forward (output_tokens)."""
    visual = model.visual
    visual.output_tokens = True
    try:
        pooled, patches = visual(images)  # patches: ln_post(x)[:, 1:], not yet projected
    finally:
        visual.output_tokens = False
    patches = patches @ visual.proj
    return F.normalize(torch.cat([pooled[:, None], patches], dim=1), dim=-1)


def test_off_equals_vanilla_open_clip(any_model):
    kind, model = any_model
    images = random_images(model)
    tokens, grid = encode_image_tokens(model, images, SurgeryConfig.off())
    assert tokens.shape[1] == 1 + grid[0] * grid[1]
    # class token: vanilla CLIP's image feature
    torch.testing.assert_close(tokens[:, 0], _vanilla_image_features(model, images), atol=1e-5, rtol=1e-5)
    if kind.startswith("vit"):
        torch.testing.assert_close(tokens, _vanilla_vit_tokens(model, images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("attention", ["vv", "qk", "identity"])
def test_dual_path_class_token_is_vanilla(vit_model, depth, attention):
    images = random_images(vit_model)
    config = SurgeryConfig(attention=attention, depth=depth, dual_path=True)
    tokens, _ = encode_image_tokens(vit_model, images, config)
    torch.testing.assert_close(tokens[:, 0], _vanilla_image_features(vit_model, images), atol=1e-5, rtol=1e-5)


def test_single_path_changes_class_token(vit_model):
    images = random_images(vit_model)
    tokens, _ = encode_image_tokens(vit_model, images, SurgeryConfig(dual_path=False, depth=2))
    assert not torch.allclose(tokens[:, 0], _vanilla_image_features(vit_model, images), atol=1e-3)


def _manual_vit_surgery(model, images, config):
    """Straightforward re-statement of DESIGN §1 (full original path, no shortcuts)."""
    v = model.visual
    x = v.ln_pre(
        torch.cat(
            [v.class_embedding.expand(images.shape[0], 1, -1), v.conv1(images).flatten(2).transpose(1, 2)], 1
        )
        + v.positional_embedding
    )
    blocks = v.transformer.resblocks
    start = len(blocks) - config.depth
    y = None
    for i, blk in enumerate(blocks):
        if i < start:
            x = blk(x)
            continue
        a = blk.ln_1(x)
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        heads = blk.attn.num_heads
        qkv = [
            t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)
            for t in F.linear(a, w, b).chunk(3, -1)
        ]
        o = attend(config.attention, *qkv).transpose(1, 2).reshape(a.shape)
        upd = blk.ls_1(blk.attn.out_proj(o))
        y = (x if y is None else y) + upd
        if not config.skip_ffn:
            y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
        x = blk(x)
    out = torch.cat([x[:, :1], y[:, 1:]], 1)
    return F.normalize(v.ln_post(out) @ v.proj, dim=-1)


@pytest.mark.parametrize("skip_ffn", [True, False])
@pytest.mark.parametrize("attention", ["vv", "qq", "kk", "qk", "identity"])
def test_dual_path_matches_manual_statement(attention, skip_ffn):
    model = make_vit("default", ls_init_value=0.5)
    images = random_images(model)
    config = SurgeryConfig(attention=attention, skip_ffn=skip_ffn, depth=3)
    tokens, _ = encode_image_tokens(model, images, config)
    torch.testing.assert_close(tokens, _manual_vit_surgery(model, images, config), atol=1e-5, rtol=1e-5)


def test_block_types_agree():
    """The same weights in nn.MultiheadAttention and open_clip Attention blocks give the same tokens."""
    mha = make_vit("default", seed=3)
    custom = make_vit("custom", seed=3)
    custom.load_state_dict(mha.state_dict())
    images = random_images(mha)
    for config in (SurgeryConfig.paper().replace(depth=3), SurgeryConfig.off()):
        a, _ = encode_image_tokens(mha, images, config)
        b, _ = encode_image_tokens(custom, images, config)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_resnet_surgery_is_vv_pooling_for_every_token():
    model = make_rn()
    images = random_images(model)
    tokens, grid = encode_image_tokens(model, images, SurgeryConfig.paper())
    pool = model.visual.attnpool
    feats = model.visual.layer4(
        model.visual.layer3(model.visual.layer2(model.visual.layer1(model.visual.stem(images))))
    )
    t = feats.flatten(2).transpose(1, 2)
    t = torch.cat([t.mean(1, keepdim=True), t], 1) + pool.positional_embedding
    v = pool.v_proj(t).reshape(t.shape[0], t.shape[1], pool.num_heads, -1).transpose(1, 2)
    att = torch.softmax(v @ v.transpose(-1, -2) * v.shape[-1] ** -0.5, -1) @ v
    want = F.normalize(pool.c_proj(att.transpose(1, 2).reshape(t.shape[0], t.shape[1], -1)), dim=-1)
    torch.testing.assert_close(tokens, want, atol=1e-5, rtol=1e-5)
    assert grid == (2, 2)


@pytest.mark.parametrize("hw", [(40, 24), (48, 48), (24, 56)])
def test_non_square_and_other_sizes(any_model, hw):
    kind, model = any_model
    if kind == "rn":
        hw = (hw[0] * 4, hw[1] * 4)
    images = random_images(model, hw=hw)
    tokens, grid = encode_image_tokens(model, images, SurgeryConfig.paper())
    stride = 32 if kind == "rn" else 8
    assert grid == (hw[0] // stride, hw[1] // stride)
    assert tokens.shape == (2, 1 + grid[0] * grid[1], 32)
    assert torch.isfinite(tokens).all()


def test_native_size_interpolation_is_identity(vit_model):
    """At the native size no interpolation happens; at another size the grid is resampled."""
    images = random_images(vit_model, hw=(32, 32))
    a, _ = encode_image_tokens(vit_model, images, SurgeryConfig.paper())
    b, _ = encode_image_tokens(vit_model, images, SurgeryConfig.paper())
    assert torch.equal(a, b)


def test_batch_equals_one_by_one(any_model):
    _, model = any_model
    images = random_images(model, batch=3)
    batch, _ = encode_image_tokens(model, images, SurgeryConfig.paper())
    for i in range(3):
        single, _ = encode_image_tokens(model, images[i : i + 1], SurgeryConfig.paper())
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=1e-5)


def test_nothing_is_modified(any_model):
    _, model = any_model
    images = random_images(model)
    images_before = images.clone()
    before = snapshot(model)
    for config in (
        SurgeryConfig.paper(),
        SurgeryConfig.off(),
        SurgeryConfig(dual_path=False, skip_ffn=False),
    ):
        encode_image_tokens(model, images, config)
        with apply_surgery(model, config):
            model.encode_image(images)
    assert torch.equal(images, images_before)
    assert_unchanged(model, before)


def test_handle_routes_encode_image_and_is_reversible(any_model):
    _, model = any_model
    images = random_images(model)
    vanilla = model.encode_image(images)
    expected, _ = encode_image_tokens(model, images, SurgeryConfig.paper())
    with apply_surgery(model) as handle:
        assert is_surgery_applied(model) and handle.applied
        got = model.encode_image(images, normalize=True)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not is_surgery_applied(model)
    assert torch.equal(model.encode_image(images), vanilla)
    handle = apply_surgery(model)
    handle.remove()
    handle.remove()  # idempotent
    assert torch.equal(model.encode_image(images), vanilla)


def test_applying_twice_is_refused(any_model):
    _, model = any_model
    with apply_surgery(model), pytest.raises(SurgeryError, match="already applied"):
        apply_surgery(model)
    with apply_surgery(model):  # fine again after removal
        pass


def test_forward_that_raises_leaves_model_as_it_was(any_model):
    _, model = any_model
    before = snapshot(model)
    images = random_images(model)
    vanilla = model.encode_image(images)
    with pytest.raises(RuntimeError), apply_surgery(model):
        model.encode_image(torch.randn(2, 5, 32, 32))  # wrong channel count: conv raises inside
    assert not is_surgery_applied(model)
    assert_unchanged(model, before)
    assert torch.equal(model.encode_image(images), vanilla)


def test_training_mode_is_restored():
    model = make_rn()
    model.train()
    before = snapshot(model)
    images = random_images(model)
    with apply_surgery(model):
        model.encode_image(images)  # BatchNorm would update running stats in training mode
        assert not model.training
    assert model.training and model.visual.bn1.training
    assert_unchanged(model, before)


def test_depth_beyond_blocks_is_refused():
    model = make_vit(layers=4)
    with pytest.raises(SurgeryError, match="depth=5"):
        dense_forward(model, random_images(model), SurgeryConfig(depth=5))
    with pytest.raises(SurgeryError, match="depth=5"):
        apply_surgery(model, SurgeryConfig(depth=5))
    assert not is_surgery_applied(model)


def test_depth_zero_is_vanilla_whatever_the_flags(vit_model):
    images = random_images(vit_model)
    a, _ = encode_image_tokens(vit_model, images, SurgeryConfig(depth=0))
    b, _ = encode_image_tokens(vit_model, images, SurgeryConfig.off())
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_surgery_changes_patch_tokens(any_model):
    """Guards against a surgery that silently does nothing."""
    _, model = any_model
    images = random_images(model)
    raw, _ = encode_image_tokens(model, images, SurgeryConfig.off())
    sur, _ = encode_image_tokens(model, images, SurgeryConfig.paper())
    assert (raw[:, 1:] - sur[:, 1:]).abs().max() > 1e-3
