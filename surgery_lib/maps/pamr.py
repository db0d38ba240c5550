"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), as SCLIP and NACLIP apply it.

Written from the paper's description. For every pixel ``i`` and each of its 8 neighbours ``j`` on a
3×3 grid with dilation ``d``, the kernel is ``-mean_c |I_c(i) - I_c(j)| / σ_c(i)``, where ``σ_c(i)`` is
the standard deviation of channel ``c`` over the pixel and those 8 neighbours (the local colour
statistics); a softmax over the 8 neighbours gives the affinities of dilation ``d``, and the affinities
of all dilations are averaged (each pixel's weights sum to 1). One step replaces every pixel's mask
values by the affinity-weighted mean of its neighbours' values; ``steps`` steps are iterated. Borders
are padded by replication.

The update is a convex combination with the same weights for all classes, so it is linear in the
masks: a distribution over classes stays one, a constant mask stays constant, and a per-class affine
change of the maps (scaling logits, min-max normalising) commutes with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_OFFSETS: tuple[tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)

_EPS = 1e-8


def _neighbours(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """``(B, 8, C, H, W)``: the 8 neighbours of every pixel at ``dilation`` (replicated borders)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    shifts = []
    for dy, dx in _OFFSETS:
        y0, x0 = dilation * (1 + dy), dilation * (1 + dx)
        shifts.append(padded[..., y0 : y0 + h, x0 : x0 + w])
    return torch.stack(shifts, dim=1)


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = (8, 16)) -> list[torch.Tensor]:
    """Per dilation, the affinities ``(B, 8, H, W)`` to the 8 neighbours, each already divided by the
    number of dilations (so the weights of a pixel sum to 1 over all dilations and neighbours)."""
    x = image.float()
    out = []
    for d in dilations:
        near = _neighbours(x, d)  # (B, 8, C, H, W)
        local = torch.cat([near, x[:, None]], dim=1)
        sigma = local.std(dim=1, unbiased=False)  # (B, C, H, W)
        kernel = -((near - x[:, None]).abs() / (sigma[:, None] + _EPS)).mean(dim=2)  # (B, 8, H, W)
        out.append(torch.softmax(kernel, dim=1) / len(dilations))
    return out


def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    steps: int = 10,
    dilations: Sequence[int] = (8, 16),
) -> torch.Tensor:
    """Refine per-class maps by the image's local colour affinities (see the module doc).

    Args:
        image: ``(B, C, H, W)`` float (typically ``C = 3``; any per-channel affine normalisation gives
            the same affinities up to the small epsilon).
        masks: ``(B, K, H, W)`` maps (logits, similarities or probabilities) at the image's size.
        steps: refinement iterations (0 returns ``masks`` unchanged).
        dilations: neighbourhood dilations in pixels.
    Returns:
        ``(B, K, H, W)`` refined maps, in ``masks``' dtype.
    """
    if image.ndim != 4 or masks.ndim != 4:
        raise ValueError(
            f"pamr needs an image (B, C, H, W) and masks (B, K, H, W), got image {tuple(image.shape)} and "
            f"masks {tuple(masks.shape)}"
        )
    if image.shape[0] != masks.shape[0] or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and masks {tuple(masks.shape)} differ in batch or spatial size"
        )
    if not image.is_floating_point():
        raise TypeError(f"the image must be a float tensor, got {image.dtype}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    dilations = tuple(dilations)
    if not dilations or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
        raise ValueError(f"dilations must be a non-empty list of ints >= 1, got {dilations!r}")
    if steps == 0:
        return masks
    affinities = pamr_affinity(image, dilations)
    x = masks.float()
    for _ in range(steps):
        refined = torch.zeros_like(x)
        for d, weights in zip(dilations, affinities, strict=True):
            near = _neighbours(x, d)  # (B, 8, K, H, W)
            refined += (near * weights[:, :, None]).sum(dim=1)
        x = refined
    return x.to(masks.dtype)
