"""Attention kinds over per-head projections: q-k, v-v, q-q, k-k, identity, SCLIP's q-q + k-k and
GEM's self-self ensemble; NACLIP's spatial prior and GEM's adaptive temperature.

All functions take per-head tensors of shape ``(B, heads, N, d_head)`` and never write into them.
Options (keyword-only): ``temperature``, the multiplier of the logits (a float or a ``(B, 1, 1, 1)``
tensor; ``None``: ``d_head^-0.5``); ``bias``, an additive ``(N, N)`` logit bias applied after the scaling
(:func:`spatial_prior`); ``iters``, GEM's clustering iterations (``gem`` only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from surgery_lib.config import ATTENTION_KINDS


def _pair(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (query, key) pair that builds the attention matrix of ``kind``."""
    pairs = {"qk": (q, k), "vv": (v, v), "qq": (q, q), "kk": (k, k)}
    if kind not in pairs:
        raise ValueError(f"attention kind {kind!r} has no attention matrix; expected one of {tuple(pairs)}")
    return pairs[kind]


def spatial_prior(grid: tuple[int, int], sigma: float, like: torch.Tensor, prefix: int = 1) -> torch.Tensor:
    """NACLIP's neighbourhood prior over ``[prefix tokens, patches]``: ``(p + h·w, p + h·w)``.

    ``Ω_ij = exp(-((r_i − r_j)² + (c_i − c_j)²) / 2σ²)`` over the patches' (row, col) on the ``h×w``
    grid (untruncated, peak 1, the same for every head); 0 on the prefix tokens' rows and columns (the
    class token; ``prefix=0`` for a tower without one). ``like``: a tensor whose dtype and device the
    result takes.
    """
    h, w = grid
    rows = torch.arange(h, dtype=torch.float64, device=like.device)
    cols = torch.arange(w, dtype=torch.float64, device=like.device)
    gr = torch.exp(-((rows[:, None] - rows[None, :]) ** 2) / (2.0 * sigma**2))  # (h, h)
    gc = torch.exp(-((cols[:, None] - cols[None, :]) ** 2) / (2.0 * sigma**2))  # (w, w)
    omega = torch.zeros(prefix + h * w, prefix + h * w, dtype=torch.float64, device=like.device)
    omega[prefix:, prefix:] = (gr[:, None, :, None] * gc[None, :, None, :]).reshape(h * w, h * w)
    return omega.to(like.dtype)


def with_spatial_prior(weights: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """Attention weights with NACLIP's Gaussian neighbourhood prior added to their logits.

    ``softmax(l + Ω) = A ⊙ exp(Ω) / Σ_j (A ⊙ exp(Ω))`` for ``A = softmax(l)`` (row-wise, every other
    constant of a row cancels), so the weights of :func:`surgery_lib.model.introspection.attention_maps`
    (the temperature already in them) give NACLIP's attention exactly, with
    :func:`spatial_prior` (0 on the class token's row and column).

    Args:
        weights: ``(..., 1 + h·w, 1 + h·w)`` attention rows over ``[CLS, patches]`` (each row sums to
            1; the full matrix, queries along dim -2, since the prior depends on the query).
        grid: the token grid ``(h, w)``; sigma: the prior's σ in patches (NACLIP: 5), > 0.
    Returns:
        the same shape, rows summing to 1.
    """
    h, w = grid
    n = 1 + h * w
    if weights.ndim < 2 or weights.shape[-1] != n or weights.shape[-2] != n:
        raise ValueError(f"weights must be (..., {n}, {n}) for the grid {grid}, got {tuple(weights.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    scaled = weights * torch.exp(spatial_prior(grid, float(sigma), weights))
    return scaled / scaled.sum(dim=-1, keepdim=True)


def adaptive_temperature(z: torch.Tensor, d_head: int) -> torch.Tensor:
    """GEM's inverse temperature ``β = d_head^-0.5 · mean_i ||z_i||`` per image.

    Args:
        z: the block's normalised input ``LN1(x)``, ``(B, N, C)`` (norm over the full width C, mean over
            all tokens including the class token).
    Returns:
        ``(B, 1, 1, 1)``, shared by every head.
    """
    return (z.norm(dim=-1).mean(dim=-1) * d_head**-0.5).reshape(-1, 1, 1, 1)


def _weights(a: torch.Tensor, b: torch.Tensor, temperature, bias: torch.Tensor | None) -> torch.Tensor:
    """``softmax(a bᵀ · temperature + bias)``."""
    if temperature is None:
        temperature = a.shape[-1] ** -0.5
    logits = (a @ b.transpose(-1, -2)) * temperature
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1)


def _gem_cluster(u: torch.Tensor, scale, iters: int) -> torch.Tensor:
    """GEM's ``iters`` clustering iterations ``u ← softmax(β ûûᵀ) û`` (fused attention, β folded into
    the query side: a number or a per-image tensor), then ``û``: the L2-normalised result."""
    for _ in range(iters):
        u = F.normalize(u, dim=-1)
        u = F.scaled_dot_product_attention(u * scale, u, u, scale=1.0)
    return F.normalize(u, dim=-1)


def _gem_scale(temperature, d_head: int):
    return d_head**-0.5 if temperature is None else temperature


def _gem_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature, iters: int
) -> list[torch.Tensor]:
    """GEM's three self-self attentions ``[A_v, A_k, A_q]`` over L2-normalised projections, after
    ``iters`` clustering iterations (:func:`_gem_cluster`)."""
    scale = _gem_scale(temperature, v.shape[-1])
    return [_weights(u, u, temperature, None) for u in (_gem_cluster(x, scale, iters) for x in (v, k, q))]


def _gem_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature, iters: int) -> torch.Tensor:
    """``(A_v v + A_k v + A_q v) / 3`` of :func:`_gem_weights` without building the ``N × N`` matrices:
    the three projections go through fused attention (``scaled_dot_product_attention``) as one batch
    of ``3B``."""
    batch = v.shape[0]
    scale = _gem_scale(temperature, v.shape[-1])
    if isinstance(scale, torch.Tensor):
        scale = scale.repeat(3, *([1] * (scale.dim() - 1)))  # the same β for v, k and q of an image
    u = _gem_cluster(torch.cat([v, k, q], dim=0), scale, iters)  # (3B, heads, N, d_head)
    out = F.scaled_dot_product_attention(u * scale, u, v.repeat(3, 1, 1, 1), scale=1.0)
    return out.view(3, batch, *out.shape[1:]).mean(dim=0)


def attend(
    kind: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    temperature: float | torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    iters: int = 0,
) -> torch.Tensor:
    """Attention output ``A v`` for the attention matrix ``A`` of ``kind``.

    ``qk`` / ``vv`` / ``qq`` / ``kk``: ``softmax(a bᵀ · temperature + bias)`` for the pair (a, b);
    ``identity``: ``v``; ``qq+kk``: ``softmax(q qᵀ ·) v + softmax(k kᵀ ·) v`` (a sum); ``gem``:
    ``(A_v v + A_k v + A_q v) / 3`` with GEM's normalised, iterated self-self attentions (no bias).

    Args:
        kind: one of :data:`~surgery_lib.config.ATTENTION_KINDS`.
        q, k, v: ``(B, heads, N, d_head)``; ``q`` may have fewer tokens than ``k``/``v`` for ``qk``.
    Returns:
        ``(B, heads, N_q, d_head)``.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
    if kind == "identity":
        return v
    options = {"temperature": temperature, "bias": bias}
    if kind == "qq+kk":
        return attend("qq", q, k, v, **options) + attend("kk", q, k, v, **options)
    if kind == "gem":
        if bias is not None:
            raise ValueError("the attention kind 'gem' takes no logit bias")
        return _gem_output(q, k, v, temperature, iters)
    a, b = _pair(kind, q, k, v)
    if temperature is None:
        return F.scaled_dot_product_attention(a, b, v, attn_mask=bias)
    return _weights(a, b, temperature, bias) @ v


def attention_weights(
    kind: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    temperature: float | torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    iters: int = 0,
) -> torch.Tensor:
    """The attention matrix of ``kind`` (options as in :func:`attend`).

    Args:
        q, k, v: ``(B, heads, N, d_head)``.
    Returns:
        ``(B, heads, N, N)``; the identity matrix for ``identity``; rows sum to 2 for ``qq+kk``.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
    if kind == "identity":
        n = v.shape[-2]
        eye = torch.eye(n, dtype=v.dtype, device=v.device)
        return eye.expand(*v.shape[:-2], n, n).clone()
    if kind == "qq+kk":
        return _weights(q, q, temperature, bias) + _weights(k, k, temperature, bias)
    if kind == "gem":
        a_v, a_k, a_q = _gem_weights(q, k, v, temperature, iters)
        return (a_v + a_k + a_q) / 3
    a, b = _pair(kind, q, k, v)
    return _weights(a, b, temperature, bias)
