"""Attention kinds over per-head projections: q-k, v-v, q-q, k-k and identity.

All functions take per-head tensors of shape ``(B, heads, N, d_head)`` and never write into them.
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


def attend(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention output ``softmax(a bᵀ · d_head^-0.5) v`` for the pair (a, b) of ``kind``.

    Args:
        kind: one of ``qk``, ``vv``, ``qq``, ``kk``, ``identity`` (returns ``v``).
        q, k, v: ``(B, heads, N, d_head)``; ``q`` may have fewer tokens than ``k``/``v`` for ``qk``.
    Returns:
        ``(B, heads, N_q, d_head)``.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
    if kind == "identity":
        return v
    a, b = _pair(kind, q, k, v)
    return F.scaled_dot_product_attention(a, b, v)


def attention_weights(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The attention matrix of ``kind``: ``softmax(a bᵀ · d_head^-0.5)``.

    Args:
        q, k, v: ``(B, heads, N, d_head)``.
    Returns:
        ``(B, heads, N, N)``; the identity matrix for ``identity``.
    """
    if kind == "identity":
        n = v.shape[-2]
        eye = torch.eye(n, dtype=v.dtype, device=v.device)
        return eye.expand(*v.shape[:-2], n, n).clone()
    a, b = _pair(kind, q, k, v)
    scale = a.shape[-1] ** -0.5
    return torch.softmax((a @ b.transpose(-1, -2)) * scale, dim=-1)
