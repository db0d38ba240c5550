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


def _clamped(x: torch.Tensor, y: int, xx: int) -> torch.Tensor:
    """``x[..., y, xx]`` with the indices clamped to the image (replicate padding)."""
    h, w = x.shape[-2:]
    return x[..., min(max(y, 0), h - 1), min(max(xx, 0), w - 1)]


def test_one_pixel_by_hand_official_rules():
    """PAMR as SCLIP / NACLIP run it, one step at a border pixel, written out pixel by pixel: σ over the
    9 taps of every dilation (centre once per dilation, unbiased), kernel -|ΔI| / (1e-8 + 0.1 σ)
    averaged over the channels, one softmax over the 16 neighbours, no centre term."""
    g = torch.Generator().manual_seed(3)
    image, masks = torch.rand(1, 3, 9, 11, generator=g), torch.rand(1, 2, 9, 11, generator=g)
    dilations, (y, x) = (1, 3), (0, 2)
    taps = [(a * d, b * d) for d in dilations for a in (-1, 0, 1) for b in (-1, 0, 1)]
    near = [t for t in taps if t != (0, 0)]
    values = torch.stack([_clamped(image[0], y + dy, x + dx) for dy, dx in taps])  # (18, 3)
    sigma = values.double().std(dim=0)  # unbiased, divisor 17
    centre = image[0, :, y, x].double()
    kernel = torch.stack(
        [
            (-(centre - _clamped(image[0], y + dy, x + dx).double()).abs() / (1e-8 + 0.1 * sigma)).mean()
            for dy, dx in near
        ]
    )
    weights = torch.softmax(kernel, dim=0)
    expected = sum(
        w * _clamped(masks[0], y + dy, x + dx).double() for w, (dy, dx) in zip(weights, near, strict=True)
    )
    got = pamr(image, masks, steps=1, dilations=dilations)[0, :, y, x]
    assert torch.allclose(got.double(), expected, atol=1e-6)
