"""ProxyCLIP (Lan et al., ECCV 2024): proxy attention from a vision foundation model's features applied
to CLIP's values in the last block.

Its forward (``proxyclip_segmentor.py`` ``forward_feature`` and the vendored open_clip's ``custom_attn``
of mc-lan/ProxyCLIP, ``vfm_model='dino'``, β = 1.2, γ = 3.0):

* VFM input: CLIP's normalisation undone, the VFM's applied, ``I_v = (I·σ_clip + μ_clip − μ_in)/σ_in``;
  ``G`` = the VFM's patch features (DINO: ``get_intermediate_layers(I_v)[0]``, last block after the final
  norm) on its grid ``I×J`` (``H/8 × W/8`` for DINO/8);
* proxy attention ``A = softmax(M)``, ``M = γ·(S − β·mean S)`` with ``S = cos(G)`` (``IJ×IJ``, the mean
  over all its entries, per image) and ``M = −∞`` where ``M < 0``; the same for every head;
* CLIP: blocks ``0 … L−2`` standard; in the last block the per-head values of ``LN1(x)`` (bias included),
  their patch part resized bilinearly (``align_corners=False``) from CLIP's ``h×w`` grid to ``I×J``;
  ``o = proj(A v)``, no residual, no FFN; every row through ``ln_post`` and the projection.

The patch tokens are therefore on the **VFM's grid** (the forward returns ``(I, J)``), twice CLIP's per
side for DINO/8. Token 0, the image embedding, is vanilla CLIP's (the standard last block), so
image-level predictions are CLIP's own. The official code assumes batch 1 (its mean of ``S`` spans the
batch); here every image gets its own. ViT towers only; CLIP's positional embedding is resampled as DINO
does (``bicubic-dino``), as the vendored open_clip does.

The VFM is a second model: the forward needs CLIP and its VFM paired,
``surgery_lib.model.vfm.with_vfm(model, "dino_vitb8")`` (:class:`~surgery_lib.model.vfm.CLIPWithVFM`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method
from surgery_lib.model.adapters import UnsupportedModelError, adapter_for
from surgery_lib.model.engine import check_config, register_forward
from surgery_lib.model.preprocess import image_normalisation
from surgery_lib.model.vfm import CLIPWithVFM, vfm_patch_features

FORWARD = "proxyclip"
"""The name its forward is registered under (``SurgeryConfig.forward``)."""

BETA = 1.2
"""β: the share of the mean similarity subtracted before the threshold at 0."""
GAMMA = 3.0
"""γ: the sharpness of the proxy attention."""

CONFIG = SurgeryConfig(
    attention="identity",
    dual_path=False,
    depth=1,
    keep_residual=False,
    feature_surgery=False,
    pos_embed_interp="bicubic-dino",
    forward=FORWARD,
)
"""ProxyCLIP's preset: the last block only, on a single path, no residual, no FFN (its own forward puts the
proxy attention where the identity would be)."""


def _pair(model: nn.Module) -> CLIPWithVFM:
    if not isinstance(model, CLIPWithVFM):
        raise UnsupportedModelError(
            "method 'proxyclip' needs a vision foundation model beside CLIP: pair them with "
            "surgery_lib.model.vfm.with_vfm(model, 'dino_vitb8') (or with_vfm(model, vfm_module))"
        )
    return model


def proxy_attention(features: torch.Tensor, beta: float = BETA, gamma: float = GAMMA) -> torch.Tensor:
    """ProxyCLIP's attention from VFM features.

    Args:
        features: ``(B, I·J, C)`` the VFM's patch features.
    Returns:
        ``(B, I·J, I·J)``: ``softmax(M)`` row-wise, ``M = γ·(S − β·mean S)``, ``−∞`` where ``M < 0``,
        ``S`` the cosine matrix of the rows (the mean over all ``(I·J)²`` entries of each image).
    """
    unit = F.normalize(features, dim=-1)
    s = unit @ unit.transpose(-1, -2)
    m = (s - s.mean(dim=(-2, -1), keepdim=True) * beta) * gamma
    return torch.softmax(m.masked_fill(m < 0, float("-inf")), dim=-1)


def _vfm_input(model: CLIPWithVFM, images: torch.Tensor) -> torch.Tensor:
    """``(I·σ_clip + μ_clip − μ_in)/σ_in`` per channel: ``(B, 3, H, W)``."""

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)

    mean, std = image_normalisation(model.clip)
    pixels = images * column(std) + column(mean)
    return (pixels - column(model.vfm_mean)) / column(model.vfm_std)


def proxyclip_forward(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """ProxyCLIP's tokens (the registered forward of its preset).

    Args:
        model: a CLIP paired with its VFM (:class:`~surgery_lib.model.vfm.CLIPWithVFM`).
        images: ``(B, 3, H, W)`` normalised for CLIP.
        config: the preset (:data:`CONFIG`); its ``pos_embed_interp`` resamples CLIP's positional embedding.
    Returns:
        projected tokens ``(B, 1 + I·J, D)`` (vanilla CLIP's image embedding first, not normalised) and the
        VFM's grid ``(I, J)``.
    """
    adapter = adapter_for(model)
    check_config(adapter, config)  # a ModifiedResNet: UnsupportedModelError naming 'proxyclip'
    pair = _pair(model)
    features, vfm_grid = vfm_patch_features(pair.vfm, _vfm_input(pair, images))
    attention = proxy_attention(features.float())[:, None]  # (B, 1, IJ, IJ): every head

    last, p = adapter.num_blocks - 1, adapter.prefix
    x, (h, w) = adapter.embed(images, config.pos_embed_interp)
    for i in range(last):
        x = adapter.run_block(i, x)
    original = adapter.run_block(last, x)  # vanilla CLIP's last block: the image embedding
    _, _, v = adapter.qkv(last, adapter.ln_1(last, x))
    b, heads, _, d = v.shape
    grid_v = v[:, :, p:].reshape(b * heads, h, w, d).permute(0, 3, 1, 2)
    grid_v = F.interpolate(grid_v, size=vfm_grid, mode="bilinear", align_corners=False)
    v_proxy = grid_v.permute(0, 2, 3, 1).reshape(b, heads, vfm_grid[0] * vfm_grid[1], d)
    out = adapter.attention_residual(last, attention.to(v_proxy.dtype) @ v_proxy)  # (B, IJ, C)
    final = torch.cat([original[:, :p], out], dim=1)
    return adapter.output(final, original), vfm_grid


register_forward(FORWARD, proxyclip_forward)

METHODS = (
    Method(
        name="proxyclip",
        title="ProxyCLIP",
        color="#31A354",
        config=CONFIG,
        reference=(
            "Lan et al., ProxyCLIP: Proxy Attention Improves CLIP for Open-Vocabulary Segmentation, "
            "ECCV 2024; github.com/mc-lan/ProxyCLIP"
        ),
        position=80,
        towers=("vit",),
        needs_vfm=True,
    ),
)
