"""What code outside the model layer may ask about a tower: its capability flags and token layout."""

from __future__ import annotations

import pytest
import torch
from conftest import make_rn, make_vit, random_images

from surgery_lib.config import SurgeryConfig
from surgery_lib.model.adapters import (
    Tower,
    UnsupportedModelError,
    adapter_for,
    class_token,
    patch_tokens,
    tower_info,
)
from surgery_lib.model.engine import Trace, dense_forward


def test_a_vit_and_a_resnet_describe_themselves():
    vit, rn = tower_info(make_vit()), tower_info(make_rn())
    assert (vit.kind, vit.residual_stream, vit.class_token, vit.fused_qkv, vit.rotary) == (
        "vit", True, "learned", True, False,
    )  # fmt: skip
    assert vit.num_blocks == len(make_vit().visual.transformer.resblocks)
    assert vit.stride == tuple(make_vit().visual.conv1.kernel_size)
    assert (rn.kind, rn.num_blocks, rn.residual_stream, rn.class_token, rn.stride) == (
        "rn",
        1,
        False,
        "mean",
        (32, 32),
    )
    assert "ModifiedResNet" in rn.name and "VisionTransformer" in vit.name
    assert all(isinstance(adapter_for(m), Tower) for m in (make_vit(), make_rn()))
    with pytest.raises(UnsupportedModelError, match="not a CLIP model"):
        tower_info(torch.nn.Linear(2, 2))


def test_the_token_layout_helpers_split_the_engines_output():
    model = make_vit()
    tokens, grid = dense_forward(model, random_images(model), SurgeryConfig.off())
    assert class_token(tokens).shape == (tokens.shape[0], tokens.shape[-1])
    assert patch_tokens(tokens).shape == (tokens.shape[0], grid[0] * grid[1], tokens.shape[-1])
    torch.testing.assert_close(torch.cat([class_token(tokens)[:, None], patch_tokens(tokens)], 1), tokens)


def test_the_linearised_readout_adds_up_to_the_projected_tokens():
    model = make_vit()
    trace = Trace()
    dense_forward(model, random_images(model), SurgeryConfig.paper(), trace)
    adapter = adapter_for(model)
    part, bias = adapter.linearised_readout(trace.final)
    pieces = part(trace.embedding) + sum(part(a) for a in trace.attention) + sum(part(f) for f in trace.ffn)
    torch.testing.assert_close(pieces + bias, adapter.project(trace.final).float(), atol=1e-4, rtol=1e-4)


def test_zero_shot_probabilities_are_clips_softmax_at_scale_100():
    from surgery_lib.maps.features import ZERO_SHOT_SCALE, zero_shot_probabilities

    images = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    probs = zero_shot_probabilities(images, texts)
    torch.testing.assert_close(probs, torch.softmax(100.0 * images @ texts.t(), dim=-1))
    assert ZERO_SHOT_SCALE == 100.0
    with pytest.raises(ValueError, match=r"expected \(B, D\) image and \(T, D\) text features"):
        zero_shot_probabilities(images, texts[:, :4])
