"""CLIPtrase (Shao et al., ECCV 2024): self-correlation recalibration of the patch tokens.

Its forward (``clip_utils/model.py`` + ``attn2.py`` of leaves162/CLIPtrase, ``clip_self_correlation.py``):

* blocks ``0 … L−2`` run as CLIP runs them;
* the last block's attention is the SUM of the three self-correlations
  ``A = softmax(s·qqᵀ) + softmax(s·kkᵀ) + softmax(s·vvᵀ)`` (``s = d_head^-1/2``, per head, rows sum to
  3), with the residual and the FFN kept: ``x′ = x + proj(A v)``, ``x″ = x′ + MLP(LN2(x′))``; every
  token goes through ``ln_post`` and the projection.

Its clustering input, :func:`cluster_affinity`: the "global patch denoise" of the official script on
block ``L−2``'s self-correlation ``W = mean_heads (cos(q) + cos(k) + cos(v)) / 3`` (block ``L−2`` itself
unchanged): ``max(0, W[patch, patch] − W[CLS, patch])``, the affinity DBSCAN clusters (eps 0.7 /
min 3 at 224 px; the clustering and its vote are post-processing, not part of this file).

Block indices are relative to the tower's depth: on ViT-B/16 (12 blocks) ``L−2`` and ``L−1`` are the
official code's hard-coded ``idx == 11`` and ``idx == 12`` (1-based). The official code reads batch
element 0 only; here every image of a batch gets its own result. ViT towers only; the positional
embedding is resampled as DINO does (``bicubic-dino``), as the official ``interpolate_pos_encoding``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method
from surgery_lib.model.adapters import UnsupportedModelError, adapter_for
from surgery_lib.model.attention import attend
from surgery_lib.model.engine import check_config, register_forward

FORWARD = "cliptrase"
"""The name its forward is registered under (``SurgeryConfig.forward``)."""

CONFIG = SurgeryConfig(
    attention="qq+kk",
    dual_path=False,
    depth=1,
    skip_ffn=False,
    feature_surgery=False,
    pos_embed_interp="bicubic-dino",
    forward=FORWARD,
)
"""CLIPtrase's preset: the last block only, on a single path, residual and FFN kept (its own forward adds
the v-v term to SCLIP's q-q + k-k)."""


def _check_vit(model: nn.Module, what: str):
    """The tower adapter of ``model`` (a ViT with at least 2 blocks), else a clear error."""
    adapter = adapter_for(model)
    check_config(adapter, CONFIG)  # a ModifiedResNet: UnsupportedModelError naming 'cliptrase'
    if adapter.num_blocks < 2:
        raise UnsupportedModelError(f"CLIPtrase's {what} needs at least 2 blocks, the tower has 1")
    return adapter


def _self_correlation_sum(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(softmax(s·qqᵀ) + softmax(s·kkᵀ) + softmax(s·vvᵀ)) v``, per head: ``(B, heads, N, d)``."""
    return attend("qq", q, k, v) + attend("kk", q, k, v) + attend("vv", q, k, v)


def _cosine(u: torch.Tensor) -> torch.Tensor:
    """Cosine matrix of the rows of ``u`` ``(B, heads, N, d)`` -> ``(B, heads, N, N)``."""
    unit = F.normalize(u, dim=-1, eps=1e-8)
    return unit @ unit.transpose(-1, -2)


def cliptrase_forward(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """CLIPtrase's tokens (the registered forward of its preset).

    Args:
        images: preprocessed ``(B, 3, H, W)``.
        config: the preset (:data:`CONFIG`); its ``pos_embed_interp`` resamples the positional embedding.
    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (image embedding first, not normalised) and the grid ``(h, w)``.
    """
    adapter = _check_vit(model, "forward")
    last = adapter.num_blocks - 1
    x, grid = adapter.embed(images, config.pos_embed_interp)
    for i in range(last):
        x = adapter.run_block(i, x)
    q, k, v = adapter.qkv(last, adapter.ln_1(last, x))
    x = x + adapter.attention_residual(last, _self_correlation_sum(q, k, v))
    x = x + adapter.ffn_residual(last, x)
    return adapter.output(x, x), grid


def cluster_affinity(model: nn.Module, images: torch.Tensor, config: SurgeryConfig = CONFIG) -> torch.Tensor:
    """CLIPtrase's recalibrated patch affinity, the input of its DBSCAN clustering.

    ``W = mean_heads (cos(q, q) + cos(k, k) + cos(v, v)) / 3`` of block ``L−2`` (per-head q, k, v of its
    ``LN1`` input, biases included; the block itself is unchanged), then every patch row minus the
    class token's row, clamped at 0: ``max(0, W[1:, 1:] − W[0, 1:])``.

    Args:
        images: preprocessed ``(B, 3, H, W)``.
        config: gives the positional-embedding resampling (default: CLIPtrase's preset).
    Returns:
        ``(B, h·w, h·w)``, patches in row-major order.
    Raises:
        UnsupportedModelError: a ModifiedResNet, a one-block tower, or a tower without a class token.
    """
    adapter = _check_vit(model, "cluster affinity")
    if adapter.prefix != 1:
        raise UnsupportedModelError(
            "CLIPtrase's cluster affinity subtracts the class token's row; this tower has "
            f"{adapter.prefix} prefix tokens (e.g. SigLIP has no class token)"
        )
    block = adapter.num_blocks - 2
    x, _ = adapter.embed(images, config.pos_embed_interp)
    for i in range(block):
        x = adapter.run_block(i, x)
    q, k, v = adapter.qkv(block, adapter.ln_1(block, x))
    weights = ((_cosine(q) + _cosine(k) + _cosine(v)) / 3.0).mean(dim=1)  # (B, 1+N, 1+N)
    return (weights[:, 1:, 1:] - weights[:, :1, 1:]).clamp_min(0)


register_forward(FORWARD, cliptrase_forward)

METHODS = (
    Method(
        name="cliptrase",
        title="CLIPtrase",
        color="#7B4173",
        config=CONFIG,
        reference=(
            "Shao et al., Explore the Potential of CLIP for Training-Free Open Vocabulary Semantic "
            "Segmentation, ECCV 2024 (CLIPtrase); github.com/leaves162/CLIPtrase"
        ),
        position=75,
        towers=("vit",),
    ),
)
