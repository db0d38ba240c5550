"""SC-CLIP (Bai et al., 2025, "Self-Calibrated CLIP for Training-Free Open-Vocabulary Segmentation";
github.com/SuleBai/SC-CLIP): CLIP's anomaly tokens found by a local-outlier test and in-filled from their
grid neighbours, the last block's attention steered by the similarity of intermediate features, and a
multi-level feature fusion branch.

Its forward is not one the engine's fields can say, so this file registers its own
(:func:`scclip_forward`, ``SurgeryConfig(forward="scclip")``). With ``x⁽ʲ⁾`` the output of standard block
``j`` (all tokens, class token first), ``P(·)`` its patch rows, ``L`` the tower's blocks and the ViT-B/16
indices (:func:`scclip_settings`):

1. outliers: :func:`local_outlier_factor` on ``X = P(x⁽ᴸ⁻²⁾)`` (the last block's input), the patches whose
   LOF score is above the 0.95 quantile of the image's scores;
2. in-filling (:func:`fill_outliers`): each outlier becomes the mean of its non-outlier grid 8-neighbours;
3. ``S8 = cos(fill(P(x⁽⁸⁾)))`` (the same outliers), ``S3 = cos(P(x⁽³⁾))``; ``thr(S)`` keeps the entries
   ``≥ 0.4``; ``agg(Z, W) = (W / (rowsum W + 1e-6)) Z``;
4. the last block's attention over the patch tokens only, ``A = ½ (softmax(M) + softmax(s k kᵀ))`` with
   ``M = 3 (S8 − mean S8)``, ``−∞`` where negative; ``att(Z) = proj(A v)``, no residual, no FFN;
5. ``y₁ = agg(att(agg(fill(X), thr(S8))) + 0.3 c, thr(S3))``, ``c`` the class token of ``x⁽ᴸ⁻²⁾``;
6. ``R = Σ_{j=3..9} x⁽ʲ⁾``, ``y₂ = agg(att(P(R)) + 0.3 R_cls, thr(S3))``;
7. the patch tokens are ``ln_post(y₁ + y₂) W_proj``.

The official code assumes one image per call (its LOF squeezes the batch axis, ``mean(S8)`` spans the
batch); here every step is per image, at any batch size. Its outlier positions are ``(p // h, p % h)``,
right on the square crops it sees; here they are ``(p // w, p % w)``, so non-square grids are in-filled
from their true neighbours. The output's token 0 is the tower's own image embedding (vanilla CLIP's last
block on the class token): SC-CLIP returns no class row. The official protocol's area threshold (VOC21:
0.1) has no field in the protocol presets and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method
from surgery_lib.model.adapters import UnsupportedModelError, adapter_for
from surgery_lib.model.attention import attend
from surgery_lib.model.engine import SurgeryError, register_forward

NAME = "scclip"
"""The registry name and the name of the registered forward."""

N_NEIGHBORS = 30
"""The LOF's neighbours (the official ``n_neighbors``)."""

CONTAMINATION = 0.05
"""The share of outliers the LOF threshold aims at: the ``1 − 0.05`` quantile of the scores."""

SIMILARITY_THRESHOLD = 0.4
"""``thr``: similarities below it are zeroed (the official ``beta``)."""

ATTENTION_SCALE = 3.0
"""The multiplier of the centred similarity logits ``M`` of the last block's attention."""


@dataclass(frozen=True)
class SCCLIPSettings:
    """Which blocks SC-CLIP reads (0-based block indices; ``x⁽ʲ⁾`` the output of block ``j``).

    Attributes:
        pre_adjust: the block whose in-filled patch tokens give ``S8`` (ViT-B/16: 8).
        post_adjust: the block whose patch tokens give ``S3`` (ViT-B/16: 3).
        multi_start, multi_end: the multi-level branch sums ``x⁽ʲ⁾`` for ``j`` in ``[start, end]``
            (inclusive; ViT-B/16: 3..9, the official ``range(3, 10)``).
        res_cls: the weight of the class-token term (ViT-B/16: 0.3).
    """

    pre_adjust: int
    post_adjust: int
    multi_start: int
    multi_end: int
    res_cls: float


_OFFICIAL = {
    12: SCCLIPSettings(8, 3, 3, 9, 0.3),  # ViT-B/16: the official defaults
    24: SCCLIPSettings(16, 6, 8, 18, 0.1),  # ViT-L/14: the authors' settings (SC-CLIP issue #5)
}


def scclip_settings(num_blocks: int) -> SCCLIPSettings:
    """SC-CLIP's block indices for a tower of ``num_blocks`` blocks.

    12 blocks (ViT-B/16) give the official defaults (8, 3, 3..9, 0.3); 24 blocks (ViT-L/14) the authors'
    ViT-L settings (16, 6, 8..18, 0.1). Other depths scale the ViT-B/16 indices by ``num_blocks / 12``
    (rounded, at most ``L − 2``: only the blocks before the last are read) with ``res_cls`` 0.3.

    Raises:
        UnsupportedModelError: fewer than 2 blocks.
    """
    if num_blocks < 2:
        raise UnsupportedModelError(f"method {NAME!r} needs at least 2 blocks, the tower has {num_blocks}")
    if num_blocks in _OFFICIAL:
        return _OFFICIAL[num_blocks]
    base = _OFFICIAL[12]

    def scaled(index: int) -> int:
        return min(round(index * num_blocks / 12), num_blocks - 2)

    start, end = scaled(base.multi_start), scaled(base.multi_end)
    return SCCLIPSettings(scaled(base.pre_adjust), scaled(base.post_adjust), start, end, base.res_cls)


def local_outlier_factor(
    x: torch.Tensor, n_neighbors: int = N_NEIGHBORS, contamination: float = CONTAMINATION
) -> tuple[torch.Tensor, torch.Tensor]:
    """SC-CLIP's local-outlier test, per image (not sklearn's: see below).

    ``d(p, o) = ‖x_p − x_o‖²`` (squared); ``𝒩_p`` the ``n_neighbors`` nearest other points;
    ``kd(p) = max_{o∈𝒩_p} d(p, o)``. The official reach distance ``max(d(p, o), kd(p))`` uses ``p``'s own
    k-distance, so it is ``kd(p)``: ``LRD(p) = n / kd(p)`` and ``LOF(p) = mean_{o∈𝒩_p} LRD(o) / LRD(p)``.
    Outliers: ``LOF(p) > q``, ``q`` the ``1 − contamination`` quantile of the image's scores (linear
    interpolation).

    Args:
        x: ``(B, N, C)`` points (SC-CLIP: the patch tokens entering the last block), ``N > n_neighbors``.
    Returns:
        outliers ``(B, N)`` bool and the LOF scores ``(B, N)``.
    Raises:
        SurgeryError: ``N <= n_neighbors`` (the test needs ``n_neighbors`` neighbours besides the point).
    """
    if x.dim() != 3:
        raise ValueError(f"local_outlier_factor expects (B, N, C) points, got shape {tuple(x.shape)}")
    n = x.shape[1]
    if n <= n_neighbors:
        raise SurgeryError(
            f"SC-CLIP's local-outlier test needs at least {n_neighbors + 1} patch tokens ({n_neighbors} "
            f"neighbours besides each patch), got {n}: use a larger input"
        )
    # the difference form (not |a|² + |b|² − 2ab): the official distances, without their cancellation
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (B, N, N)
    knn_dist, knn_index = torch.topk(dist, k=n_neighbors + 1, dim=-1, largest=False)
    knn_dist, knn_index = knn_dist[..., 1:], knn_index[..., 1:]  # the nearest is the point itself
    k_dist = knn_dist[..., -1:].expand_as(knn_dist)
    reach = torch.maximum(knn_dist, k_dist)  # = kd(p): the point's own k-distance
    lrd = n_neighbors / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)  # (B, N)
    neighbour_lrd = torch.gather(lrd[:, None, :].expand(-1, n, -1), 2, knn_index)  # (B, N, k)
    scores = (neighbour_lrd / lrd[..., None]).mean(dim=-1)
    threshold = torch.quantile(scores.float(), 1 - contamination, dim=-1, keepdim=True)
    return scores > threshold, scores


def fill_outliers(tokens: torch.Tensor, outliers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Each outlier patch replaced by the mean of its grid 8-neighbours that are inside the grid and not
    outliers (kept as is when it has none).

    Args:
        tokens: ``(B, h·w, C)`` patch tokens (row-major); outliers: ``(B, h·w)`` bool.
    Returns:
        ``(B, h·w, C)``, a new tensor.
    """
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w or outliers.shape != (b, n):
        raise ValueError(
            f"fill_outliers: {tuple(tokens.shape)} tokens and {tuple(outliers.shape)} outliers do not "
            f"match the {h}×{w} grid"
        )
    keep = (~outliers).to(tokens.dtype).reshape(b, h, w, 1)
    values = F.pad((tokens.reshape(b, h, w, c) * keep), (0, 0, 1, 1, 1, 1))  # zero border, (B, h+2, w+2, C)
    counts = F.pad(keep, (0, 0, 1, 1, 1, 1))
    total = torch.zeros(b, h, w, c, dtype=tokens.dtype, device=tokens.device)
    count = torch.zeros(b, h, w, 1, dtype=tokens.dtype, device=tokens.device)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if (dy, dx) != (1, 1):
                total = total + values[:, dy : dy + h, dx : dx + w]
                count = count + counts[:, dy : dy + h, dx : dx + w]
    mean = total / count.clamp(min=1)
    update = outliers.reshape(b, h, w, 1) & (count > 0)
    return torch.where(update, mean, tokens.reshape(b, h, w, c)).reshape(b, n, c)


def _cosine(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, N, C)`` -> the cosine matrix of the rows ``(B, N, N)``."""
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    return unit @ unit.transpose(1, 2)


def _threshold(similarity: torch.Tensor) -> torch.Tensor:
    """``thr(S)``: ``S`` where ``S ≥ 0.4``, else 0."""
    return similarity.masked_fill(similarity < SIMILARITY_THRESHOLD, 0.0)


def _aggregate(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``agg(Z, W) = (W / (rowsum W + 1e-6)) Z``: ``(B, N, C)``, ``(B, N, N)`` -> ``(B, N, C)``."""
    return (weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)) @ tokens


def _similarity_attention(s8: torch.Tensor) -> torch.Tensor:
    """``softmax(M)``, ``M = 3 (S8 − mean S8)`` (mean over the image's ``N²`` entries), ``−∞`` where
    ``M < 0``: ``(B, N, N)`` -> ``(B, 1, N, N)``, the same for every head."""
    logits = (s8 - s8.mean(dim=(-2, -1), keepdim=True)) * ATTENTION_SCALE
    logits = logits.masked_fill(logits < 0, float("-inf"))
    return torch.softmax(logits, dim=-1)[:, None]


def _patch_attention(
    adapter, x_cls: torch.Tensor, patches: torch.Tensor, similarity_attention: torch.Tensor
) -> torch.Tensor:
    """``att(Z)``: the last block's attention over the patch tokens ``Z`` only, ``½ (softmax(M) +
    softmax(s k kᵀ))``, out-projected; no residual, no FFN.

    ``x_cls`` ``(B, 1, C)`` is put before the patches only so that the adapter sees a stream of its own
    layout (a rotary embedding counts positions after the class token); its row is dropped from q, k
    and v (each token's projections depend on that token alone).

    Returns:
        ``(B, N, C)``.
    """
    i = adapter.num_blocks - 1
    z = adapter.ln_1(i, torch.cat([x_cls, patches], dim=1))
    _, k, v = (t[:, :, 1:] for t in adapter.qkv(i, z))  # (B, heads, N, d)
    scale = k.shape[-1] ** -0.5
    key_attention = torch.softmax((k @ k.transpose(-2, -1)) * scale, dim=-1)
    probs = (similarity_attention + key_attention) / 2
    return adapter.attention_residual(i, probs @ v)


def _image_embedding(adapter, x: torch.Tensor) -> torch.Tensor:
    """The tower's own image embedding ``(B, D)`` from the last block's input ``x`` ``(B, 1+N, C)``: the
    last block as vanilla CLIP runs it (only the class token's query where that is what is read)."""
    i = adapter.num_blocks - 1
    if adapter.info.class_token != "learned":
        final = adapter.run_block(i, x)
        return adapter.output(final, final)[:, 0]
    q, k, v = adapter.qkv(i, adapter.ln_1(i, x))
    cls = x[:, :1] + adapter.attention_residual(i, attend("qk", q[:, :, :1], k, v))
    cls = cls + adapter.ffn_residual(i, cls)
    return adapter.project(cls)[:, 0]


def _check_tower(adapter) -> None:
    """SC-CLIP reads a class token in the residual stream (its 0.3·CLS term)."""
    info = adapter.info
    if info.kind != "vit" or getattr(adapter, "prefix", 0) != 1 or not info.residual_stream:
        raise UnsupportedModelError(
            f"method {NAME!r} has no variant for the image tower {info.name}: it needs a ViT whose "
            "residual stream holds a class token (its 0.3·CLS term)"
        )


def scclip_run(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig
) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, torch.Tensor]:
    """SC-CLIP's forward with its outlier test (see the module doc).

    Args:
        images: preprocessed ``(B, 3, H, W)``; the grid needs more than 30 patches.
        config: its preset (``pos_embed_interp``: how the positional embedding is resampled).
    Returns:
        tokens ``(B, 1 + h·w, D)`` (the tower's image embedding first; not normalised), the grid
        ``(h, w)``, the outliers ``(B, h·w)`` bool and the LOF scores ``(B, h·w)``.
    Raises:
        UnsupportedModelError: a tower without a class token in its stream (a ModifiedResNet, SigLIP).
        SurgeryError: a grid of 30 patches or fewer.
    """
    adapter = adapter_for(model)
    _check_tower(adapter)
    settings = scclip_settings(adapter.num_blocks)
    last = adapter.num_blocks - 1
    x, grid = adapter.embed(images, config.pos_embed_interp)
    if grid[0] * grid[1] <= N_NEIGHBORS:
        raise SurgeryError(
            f"method {NAME!r}: its local-outlier test needs at least {N_NEIGHBORS + 1} patch tokens, "
            f"the {grid[0]}×{grid[1]} grid of a {tuple(images.shape[-2:])} input has {grid[0] * grid[1]}"
        )
    outputs: list[torch.Tensor] = []  # x⁽ʲ⁾, j = 0 .. L-2
    for i in range(last):
        x = adapter.run_block(i, x)
        outputs.append(x)
    cls, patches = x[:, :1], x[:, 1:]
    outliers, scores = local_outlier_factor(patches)
    s8 = _cosine(fill_outliers(outputs[settings.pre_adjust][:, 1:], outliers, grid))
    s3_weights = _threshold(_cosine(outputs[settings.post_adjust][:, 1:]))
    similarity_attention = _similarity_attention(s8)

    filled = _aggregate(fill_outliers(patches, outliers, grid), _threshold(s8))
    y1 = _patch_attention(adapter, cls, filled, similarity_attention) + settings.res_cls * cls
    y1 = _aggregate(y1, s3_weights)

    multi = torch.zeros_like(outputs[0])
    for j in range(settings.multi_start, settings.multi_end + 1):
        multi = multi + outputs[j]
    y2 = _patch_attention(adapter, multi[:, :1], multi[:, 1:], similarity_attention)
    y2 = _aggregate(y2 + settings.res_cls * multi[:, :1], s3_weights)

    tokens = torch.cat([_image_embedding(adapter, x)[:, None], adapter.project(y1 + y2)], dim=1)
    return tokens, grid, outliers, scores


def scclip_forward(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """SC-CLIP's forward as the engine runs it (``SurgeryConfig(forward="scclip")``): tokens
    ``(B, 1 + h·w, D)`` (image embedding first, not normalised) and the grid; see :func:`scclip_run`."""
    tokens, grid, _, _ = scclip_run(model, images, config)
    return tokens, grid


register_forward(NAME, scclip_forward)

METHODS = (
    Method(
        name=NAME,
        title="SC-CLIP",
        color="#9467BD",
        config=SurgeryConfig(
            attention="kk",
            dual_path=False,
            depth=1,
            keep_residual=False,
            feature_surgery=False,
            pos_embed_interp="bicubic-dino",
            forward=NAME,
        ),
        reference=(
            "Bai et al., Self-Calibrated CLIP for Training-Free Open-Vocabulary Segmentation, "
            "arXiv 2411.15869 (2025); github.com/SuleBai/SC-CLIP"
        ),
        position=70,
        towers=("vit",),
        protocol={
            "protocol": "sliding",
            "image_size": 336,
            "window": 224,
            "stride": 112,
            "templates": "openai80",
            "logit_scale": {"voc": 50.0, "coco_object": 55.0, None: 40.0},
            "bg_threshold": {"voc": 0.15, "context": 0.15, "coco_object": 0.35, None: 0.0},
            "pamr_steps": 0,
        },
    ),
)
