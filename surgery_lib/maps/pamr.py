"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), exactly as SCLIP and NACLIP run it.

Written from the paper and the description of the official module (``../shared/golden/protocols/FORMAT.md``
§4). For dilations ``D`` (SCLIP / NACLIP: 8 and 16) the neighbourhood of a pixel ``p`` is the 3×3 grid at
each dilation: ``O_d = {(a·d, b·d) : a, b ∈ {-1, 0, 1}}`` (row-major over ``(a, b)``); the neighbours
``N`` are the 8 non-centre offsets of every dilation (16 for two dilations, dilation by dilation). Pixels
outside the image read the nearest border pixel (replicate padding).

* ``σ_k(p)``: the standard deviation of channel ``k`` over the ``9·|D|`` values of all the grids (the
  centre counted once per dilation), unbiased (divisor ``9·|D| − 1``);
* ``w_o(p) = softmax_{o ∈ N} mean_k [ −|I_k(p) − I_k(p + o)| / (1e-8 + 0.1 σ_k(p)) ]``: one softmax over
  all ``8·|D|`` neighbours;
* one step: ``M_c(p) ← Σ_{o ∈ N} w_o(p) M_c(p + o)`` (no centre term), iterated ``steps`` times.

The update is a convex combination with the same weights for all classes, so it is linear in the
masks: a distribution over classes stays one, a constant mask stays constant, and a per-class affine
change of the maps commutes with it. The neighbour sum is ``torch.sum`` over the stacked neighbours, as
the official module computes it (a sequential sum differs by an ulp).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_GRID: tuple[tuple[int, int], ...] = tuple((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1))
"""The 3×3 offsets in units of the dilation, row-major; the centre is ``(0, 0)`` (index 4)."""

_EPS = 1e-8
_SIGMA_SCALE = 0.1


def _taps(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> torch.Tensor:
    """``(B, K, P, H, W)``: ``x`` (``(B, K, H, W)``) read at every offset of every dilation (replicated
    borders), dilation by dilation, row-major within a dilation; ``P = 9·|D|`` with ``centre``, else
    ``8·|D|``."""
    h, w = x.shape[-2:]
    shifts = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for a, b in _GRID:
            if (a, b) == (0, 0) and not centre:
                continue
            y0, x0 = d * (1 + a), d * (1 + b)
            shifts.append(padded[..., y0 : y0 + h, x0 : x0 + w])
    return torch.stack(shifts, dim=2)


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = (8, 16)) -> torch.Tensor:
    """The affinities ``(B, 1, 8·|D|, H, W)`` of every pixel to its neighbours (they sum to 1 over the
    neighbours), from an image ``(B, C, H, W)``."""
    x = image.float()
    sigma = _taps(x, dilations, centre=True).std(dim=2, keepdim=True)  # (B, C, 1, H, W), unbiased
    diff = (x[:, :, None] - _taps(x, dilations, centre=False)).abs()  # (B, C, 8|D|, H, W)
    kernel = (-diff / (_EPS + _SIGMA_SCALE * sigma)).mean(dim=1, keepdim=True)
    return torch.softmax(kernel, dim=2)


def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    steps: int = 10,
    dilations: Sequence[int] = (8, 16),
) -> torch.Tensor:
    """Refine per-class maps by the image's local colour affinities (see the module doc).

    Args:
        image: ``(B, C, H, W)`` float, the guide (SCLIP / NACLIP: the normalised network input resized
            bilinearly to the maps' size; any per-channel affine normalisation gives the same
            affinities up to the small epsilon).
        masks: ``(B, K, H, W)`` maps (SCLIP / NACLIP: the cosine logits) at the image's size.
        steps: refinement iterations (0 returns ``masks`` unchanged).
        dilations: neighbourhood dilations in pixels.
    Returns:
        ``(B, K, H, W)`` refined maps (computed in float32), in ``masks``' dtype.
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
    weights = pamr_affinity(image, dilations)  # (B, 1, P, H, W)
    x = masks.float()
    for _ in range(steps):
        x = (_taps(x, dilations, centre=False) * weights).sum(dim=2)
    return x.to(masks.dtype)
