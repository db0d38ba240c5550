"""PAMR (pixel-adaptive mask refinement) on synthetic images."""

from __future__ import annotations

import pytest
import torch

from surgery_lib.maps.pamr import pamr


def _edge_image() -> torch.Tensor:
    """(1, 3, 24, 24): dark left half, bright right half (a sharp vertical edge at column 12)."""
    image = torch.zeros(1, 3, 24, 24)
    image[..., 12:] = 1.0
    return image + 0.01 * torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))


def test_constant_image_keeps_constant_mask_constant():
    image = torch.full((2, 3, 16, 20), 0.3)
    masks = torch.full((2, 4, 16, 20), 0.7)
    out = pamr(image, masks, steps=5, dilations=(1, 2))
    assert out.shape == masks.shape
    assert torch.allclose(out, masks)


def test_distribution_stays_a_distribution():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 20, 18, generator=g)
    masks = torch.softmax(torch.randn(2, 5, 20, 18, generator=g), dim=1)
    out = pamr(image, masks, steps=10, dilations=(1, 3))
    assert torch.allclose(out.sum(1), torch.ones(2, 20, 18), atol=1e-5)
    assert out.min() >= 0
    assert not torch.allclose(out, masks)  # it did refine


def test_mask_moves_toward_the_colour_edge():
    image = _edge_image()
    masks = torch.zeros(1, 2, 24, 24)
    masks[:, 0, :, :16] = 1.0  # the mask's boundary (column 16) is 4 pixels right of the edge
    masks[:, 1, :, 16:] = 1.0
    truth = torch.zeros(24, 24, dtype=torch.int64)
    truth[:, 12:] = 1
    before = (masks[0].argmax(0) != truth).sum()
    out = pamr(image, masks, steps=10, dilations=(1, 2))
    after = (out[0].argmax(0) != truth).sum()
    assert after < before
    # a smooth (edge-blind) image would not move the boundary toward the edge as much
    flat = pamr(torch.zeros_like(image), masks, steps=10, dilations=(1, 2))
    assert after < (flat[0].argmax(0) != truth).sum()


def test_defaults_and_zero_steps():
    image, masks = _edge_image(), torch.rand(1, 3, 24, 24)
    assert pamr(image, masks, steps=0) is masks
    out = pamr(image, masks.double())  # 10 steps, dilations (8, 16); dtype kept
    assert out.dtype == torch.float64 and out.shape == masks.shape


def test_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"image \(3, 8, 8\).*masks \(1, 2, 8, 8\)"):
        pamr(torch.zeros(3, 8, 8), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"image \(1, 3, 8, 9\) and masks \(1, 2, 8, 8\)"):
        pamr(torch.zeros(1, 3, 8, 9), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"image \(2, 3, 8, 8\) and masks \(1, 2, 8, 8\)"):
        pamr(torch.zeros(2, 3, 8, 8), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="steps"):
        pamr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 8), steps=-1)
    with pytest.raises(ValueError, match="dilations"):
        pamr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 8), dilations=(0,))
    with pytest.raises(TypeError, match="float"):
        pamr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 2, 8, 8))
