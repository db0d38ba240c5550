"""A method's own forward (``SurgeryConfig.forward``): registered by name, run by the engine in place of its
block loop, refused clearly when unknown or asked for what it does not report."""

from __future__ import annotations

import pytest
import torch
from conftest import make_rn, make_vit, random_images

from surgery_lib import encode_image_tokens
from surgery_lib.config import SurgeryConfig
from surgery_lib.model import SurgeryError, UnsupportedModelError, dense_forward
from surgery_lib.model.engine import register_forward


def _doubled_vanilla(model, images, config):
    tokens, grid = dense_forward(model, images, SurgeryConfig.off())
    return 2 * tokens, grid


register_forward("test-doubled", _doubled_vanilla)


def test_a_registered_forward_replaces_the_engines() -> None:
    model = make_vit(layers=2)
    x = random_images(model)
    with torch.no_grad():
        vanilla, grid = dense_forward(model, x, SurgeryConfig.off())
        own, own_grid = dense_forward(model, x, SurgeryConfig.off().replace(forward="test-doubled"))
        normalised, _ = encode_image_tokens(model, x, SurgeryConfig.off().replace(forward="test-doubled"))
    assert own_grid == grid and torch.equal(own, 2 * vanilla)
    assert torch.allclose(normalised, torch.nn.functional.normalize(vanilla.float(), dim=-1), atol=1e-6)


def test_unknown_forwards_and_hooks_are_refused_by_name() -> None:
    model = make_vit(layers=2)
    x = random_images(model)
    with pytest.raises(SurgeryError, match=r"no forward is registered as 'nope'.*test-doubled"):
        dense_forward(model, x, SurgeryConfig(depth=1, forward="nope"))
    with pytest.raises(SurgeryError, match="reports no hook points"):
        dense_forward(model, x, SurgeryConfig(depth=1, forward="test-doubled"), hook=lambda n, v: None)
    with pytest.raises(UnsupportedModelError, match="forward='test-doubled'"):
        dense_forward(make_rn(), random_images(make_rn()), SurgeryConfig(depth=1, forward="test-doubled"))
    with pytest.raises(ValueError, match="registered forward's name"):
        SurgeryConfig(forward="two words")
    with pytest.raises(ValueError, match="already registered"):
        register_forward("test-doubled", lambda m, i, c: None)
