"""Feature surgery, similarity maps and text -> point prompts (plain functions over tensors)."""

from __future__ import annotations

import numbers
import operator

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.model.adapters import class_token


def _check_features(image_tokens: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_tokens.ndim != 3:
        raise ValueError(f"image tokens must be (B, 1+N, D), got shape {tuple(image_tokens.shape)}")
    if text_features.ndim != 2 or text_features.shape[0] == 0:
        raise ValueError(f"text features must be (T, D) with T >= 1, got shape {tuple(text_features.shape)}")
    if image_tokens.shape[-1] != text_features.shape[-1]:
        raise ValueError(
            f"feature sizes differ: image tokens have D={image_tokens.shape[-1]}, "
            f"text features D={text_features.shape[-1]}"
        )


def cosine_similarity(image_tokens: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Raw CLIP similarity of normalised tokens and text features.

    Args:
        image_tokens: ``(B, 1+N, D)``; text_features: ``(T, D)``.
    Returns:
        ``(B, 1+N, T)``.
    """
    _check_features(image_tokens, text_features)
    return image_tokens @ text_features.to(image_tokens.dtype).t()


ZERO_SHOT_SCALE = 100.0
"""The logit scale of CLIP's zero-shot probabilities everywhere in the toolkit: OpenAI CLIP's learned
``logit_scale.exp()`` (100, the clamp open_clip trains to). The gradient explainers' targets use the
model's own ``logit_scale.exp()`` instead (they explain CLIP's ``logits_per_image``)."""


def zero_shot_probabilities(
    class_features: torch.Tensor, text_features: torch.Tensor, model: nn.Module | None = None
) -> torch.Tensor:
    """CLIP's zero-shot probabilities ``softmax(100 · f_cls · textᵀ)`` over the texts; for a model with a
    ``logit_bias`` (SigLIP), its own sigmoid probabilities ``σ(logit_scale.exp() · cos + logit_bias)``, one
    per text (they need not sum to 1: SigLIP scores each image-text pair on its own).

    Args:
        class_features: ``(B, D)`` unit-norm image embeddings (token 0 of the engine's output).
        text_features: ``(T, D)`` unit-norm text features.
        model: the model they come from (only SigLIP-style models change the result).
    Returns:
        ``(B, T)``.
    """
    if (
        class_features.ndim != 2
        or text_features.ndim != 2
        or class_features.shape[1] != text_features.shape[1]
    ):
        raise ValueError(
            f"expected (B, D) image and (T, D) text features, got {tuple(class_features.shape)} and "
            f"{tuple(text_features.shape)}"
        )
    cosine = class_features @ text_features.to(class_features).t()
    bias = getattr(model, "logit_bias", None) if model is not None else None
    if isinstance(bias, torch.Tensor):
        scale = model.logit_scale.detach().exp().to(cosine)
        return torch.sigmoid(scale * cosine + bias.detach().to(cosine))
    return torch.softmax(ZERO_SHOT_SCALE * cosine, dim=-1)


def class_weights(
    image_tokens: torch.Tensor, text_features: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """Feature surgery's class weights ``w = p / mean(p)``, ``p = softmax(t · f_cls · textᵀ)``.

    Returns:
        ``(B, T)``.
    """
    p = torch.softmax(
        temperature * (class_token(image_tokens) @ text_features.to(image_tokens.dtype).t()), dim=-1
    )
    return p / p.mean(dim=-1, keepdim=True)


def feature_surgery(
    image_tokens: torch.Tensor,
    text_features: torch.Tensor,
    redundant_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Similarity with the redundant features removed.

    Multi-class form (``redundant_features is None``)::

        S[b, n, j] = w_j (f_n · t_j) − mean_j' (w_j' (f_n · t_j'))

    computed in O(B·N·T) without the B×N×T×D product. With ``redundant_features`` ``r`` (``(1, D)``
    or ``(D,)``, e.g. the empty prompt's features): ``S = f · (t − r)ᵀ``.

    Args:
        image_tokens: normalised ``(B, 1+N, D)``, class token first.
        text_features: normalised ``(T, D)``.
    Returns:
        ``(B, 1+N, T)``.
    """
    _check_features(image_tokens, text_features)
    t = text_features.to(image_tokens.dtype)
    if redundant_features is not None:
        return image_tokens @ (t - redundant_features.to(t.dtype).reshape(1, -1)).t()
    weighted = (image_tokens @ t.t()) * class_weights(image_tokens, t).unsqueeze(1)
    return weighted - weighted.mean(dim=-1, keepdim=True)


def feature_surgery_naive(image_tokens: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """The reference formulation that materialises the ``(B, 1+N, T, D)`` product.

    Kept only to test and benchmark :func:`feature_surgery` against; needs O(B·N·T·D) memory.
    """
    _check_features(image_tokens, text_features)
    t = text_features.to(image_tokens.dtype)
    w = class_weights(image_tokens, t)
    feats = image_tokens.unsqueeze(2) * t.reshape(1, 1, *t.shape)
    feats = feats * w.reshape(w.shape[0], 1, -1, 1)
    feats = feats - feats.mean(dim=2, keepdim=True)
    return feats.sum(-1)


def _grid_for(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is None:
        side = round(n**0.5)
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid: pass grid=(h, w)")
        return side, side
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} cells but there are {n} patch tokens")
    return int(grid[0]), int(grid[1])


def _min_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)


def _map_size(size: object) -> tuple[int, int]:
    """``size`` as ``(H, W)`` positive ints (NumPy integers accepted), or a ``ValueError``."""
    message = f"the map size must be (H, W) with two positive integers, got {size!r}"
    try:
        items = tuple(size)  # type: ignore[arg-type]
        h, w = (operator.index(s) for s in items)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if any(isinstance(s, bool) for s in items) or min(h, w) < 1:
        raise ValueError(message)
    return h, w


def similarity_map(
    patch_similarity: torch.Tensor,
    size: tuple[int, int],
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Per-class maps: min-max normalised over tokens, upsampled bilinearly to ``size``.

    Args:
        patch_similarity: ``(B, N, T)`` similarities of the patch tokens (class token dropped).
        size: output ``(H, W)``.
        grid: token grid ``(h, w)`` with ``h·w = N``; square when omitted.
    Returns:
        ``(B, H, W, T)`` in [0, 1].
    """
    if patch_similarity.ndim != 3:
        raise ValueError(f"patch similarity must be (B, N, T), got shape {tuple(patch_similarity.shape)}")
    b, n, t = patch_similarity.shape
    size = _map_size(size)
    h, w = _grid_for(n, grid)
    sm = _min_max(patch_similarity.float(), dim=1)
    sm = sm.reshape(b, h, w, t).permute(0, 3, 1, 2)
    sm = F.interpolate(sm, size=tuple(size), mode="bilinear", align_corners=False)
    return sm.permute(0, 2, 3, 1)


def similarity_to_points(
    patch_similarity: torch.Tensor,
    image_size: tuple[int, int],
    grid: tuple[int, int] | None = None,
    threshold: float = 0.8,
    downsample: int = 2,
    quantile: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point prompts for SAM from one class's patch similarities.

    The map is downsampled bilinearly to ``(h // downsample, w // downsample)``, min-max normalised
    and sorted; ``num = min(#(>= threshold), cells // 2)``, where ``quantile`` (if given) replaces the
    fixed threshold by that quantile of the normalised cells; positives are the ``num`` highest cells
    (in ascending order), negatives the ``num`` lowest. A cell ``(r, c)`` maps to pixel
    ``x = min((c + 0.5)·W/w', W−1)``, ``y = min((r + 0.5)·H/h', H−1)``, truncated to int.

    Args:
        patch_similarity: ``(N,)`` similarities of one class over the patch tokens.
        image_size: ``(H, W)`` of the image the points are for.
    Returns:
        points ``(2·num, 2)`` int64 as ``[x, y]`` and labels ``(2·num,)`` int64 (1 then 0).
    """
    if patch_similarity.ndim != 1:
        raise ValueError(
            f"patch similarity must be (N,) for one class, got shape {tuple(patch_similarity.shape)}"
        )
    if quantile is None and not (isinstance(threshold, numbers.Real) and 0.0 <= threshold <= 1.0):
        raise ValueError(  # NaN fails the comparison too: it would silently give no points
            f"threshold must be a number in [0, 1] (the cells are min-max normalised), got {threshold!r}"
        )
    h, w = _grid_for(patch_similarity.shape[0], grid)
    dh, dw = h // downsample, w // downsample
    if dh < 1 or dw < 1:
        raise ValueError(f"token grid {(h, w)} is too small to downsample by {downsample}")
    sm = patch_similarity.float().reshape(1, 1, h, w)
    sm = F.interpolate(sm, size=(dh, dw), mode="bilinear", align_corners=False).reshape(-1)
    sm = _min_max(sm, dim=0)
    rank = torch.sort(sm, dim=0).indices
    if quantile is not None:
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        threshold = float(torch.quantile(sm, quantile))
    num = min(int((sm >= threshold).sum()), sm.shape[0] // 2)
    chosen = torch.cat([rank[sm.shape[0] - num :], rank[:num]])
    big_h, big_w = image_size
    xs = torch.clamp((chosen % dw + 0.5) * (float(big_w) / dw), max=big_w - 1)
    ys = torch.clamp((chosen // dw + 0.5) * (float(big_h) / dh), max=big_h - 1)
    points = torch.stack([xs, ys], dim=1).to(torch.int64)
    labels = torch.cat([torch.ones(num, dtype=torch.int64), torch.zeros(num, dtype=torch.int64)])
    return points, labels
