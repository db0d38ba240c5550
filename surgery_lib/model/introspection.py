"""Introspection for the analysis notebooks: attention maps, residual contributions, intermediates.

Everything runs the same wrapper-free forward as the surgery (:func:`surgery_lib.model.surgery.dense_forward`
with a :class:`~surgery_lib.model.surgery.Trace`), so the model is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from surgery_lib.config import ATTENTION_KINDS, SurgeryConfig
from surgery_lib.model.adapters import ResNetAdapter, UnsupportedModelError, adapter_for
from surgery_lib.model.attention import adaptive_temperature, attend, attention_weights
from surgery_lib.model.preprocess import check_image_batch
from surgery_lib.model.surgery import SurgeryError, Trace, dense_forward


@torch.no_grad()
def trace_forward(model: nn.Module, images: torch.Tensor, config: SurgeryConfig | None = None) -> Trace:
    """Run a ViT tower under ``config`` (vanilla by default) and record its residual streams.

    Returns:
        a :class:`~surgery_lib.model.surgery.Trace` (intermediate tokens per block, per-block attention
        and FFN updates of the path that reaches the output, the final stream).
    """
    check_image_batch(images)
    adapter = adapter_for(model)
    if adapter.kind == "vit":
        _need_class_token(adapter, "traces of the residual stream")
    trace = Trace()
    dense_forward(model, images, config or SurgeryConfig.off(), trace)
    return trace


def _need_class_token(adapter: object, what: str) -> None:
    """Refuse a tower without a class token in its residual stream (SigLIP: the attention pool makes
    the image embedding), naming the tower and what needs it."""
    info = adapter.info
    if info.class_token != "learned":
        raise UnsupportedModelError(
            f"{what} index the class token of the residual stream (token 0); the {info.name} tower has "
            f"none (its image embedding is {info.class_token!r}): use a tower with a class token"
        )


@torch.no_grad()
def attention_maps(
    model: nn.Module,
    images: torch.Tensor,
    block: int,
    query: int | None,
    kinds: Sequence[str] = ("qk", "qq", "kk", "vv"),
    config: SurgeryConfig | None = None,
) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """Attention of one query token over all tokens, for each attention kind, at one block.

    The block's input is the original path's stream (vanilla CLIP under the default ``off()``
    config). On a ModifiedResNet the only attention is the attention pool: use ``block=0`` (or -1).

    Args:
        block: block index (negative counts from the end).
        query: token index (0 = class token, 1 + r·w + c = patch (r, c)); None for every query.
    Returns:
        ``{kind: (B, heads, 1 + N)}`` attention weights of the query (``(B, heads, 1 + N, 1 + N)``,
        queries along dim 2, when ``query`` is None), and the grid ``(h, w)``.
    """
    check_image_batch(images)
    for kind in kinds:
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {kind!r}; expected some of {ATTENTION_KINDS}")
    adapter = adapter_for(model)
    config = config or SurgeryConfig.off()
    if isinstance(adapter, ResNetAdapter):
        if block not in (0, -1):
            raise IndexError(f"a ModifiedResNet has one attention layer (block 0), not block {block}")
        tokens, grid = adapter.pool_tokens(adapter.trunk(images))
        z = tokens
        q, k, v = adapter.qkv(0, tokens)
    else:
        _need_class_token(adapter, "attention maps by query token")
        n = adapter.num_blocks
        if not -n <= block < n:
            raise IndexError(f"block {block} out of range for {n} blocks")
        block %= n
        trace = trace_forward(model, images, config)
        grid = trace.grid
        z = adapter.ln_1(block, trace.block_inputs[block])
        q, k, v = adapter.qkv(block, z)
    n_tokens = q.shape[-2]
    if query is not None and not 0 <= query < n_tokens:
        raise IndexError(f"query token {query} out of range for {n_tokens} tokens")

    def weights(kind: str) -> torch.Tensor:
        # "gem": GEM's adaptive temperature and one clustering iteration (its code's defaults)
        options = {"temperature": adaptive_temperature(z, q.shape[-1]), "iters": 1} if kind == "gem" else {}
        a = attention_weights(kind, q, k, v, **options)
        return a if query is None else a[:, :, query]

    return {kind: weights(kind) for kind in kinds}, grid


@dataclass
class ResidualContributions:
    """The output tokens split into the residual updates that built them (ViT towers).

    ``ln_post`` is linearised with the final stream's own mean and standard deviation, so the parts
    add up exactly: ``embedding + attention.sum(0) + ffn.sum(0) + bias == tokens`` (projected, before
    normalisation). Patch tokens follow the new path in surgery blocks, the class token the original.

    Attributes:
        embedding: ``(B, 1+N, D)`` the patch/class/positional embedding's part.
        attention: ``(L, B, 1+N, D)`` each block's attention part.
        ffn: ``(L, B, 1+N, D)`` each block's FFN part (zero where skipped).
        bias: ``(D,)`` ``ln_post``'s bias, projected.
        tokens: ``(B, 1+N, D)`` the projected output tokens.
        grid: token grid ``(h, w)``.
    """

    embedding: torch.Tensor
    attention: torch.Tensor
    ffn: torch.Tensor
    bias: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, int]

    def similarity_parts(self, text_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each part's share of the cosine similarity of the output tokens with ``text_features``.

        A part ``c`` contributes ``c · t / ‖token‖``; all shares (embedding, attention and FFN of
        every block, bias) add up to the tokens' cosine similarity.

        Args:
            text_features: normalised ``(T, D)``.
        Returns:
            ``{"embedding": (B, 1+N, T), "attention": (L, B, 1+N, T), "ffn": (L, B, 1+N, T),
            "bias": (B, 1+N, T)}``.
        """
        t = text_features.float().to(self.tokens.device).t()
        norm = self.tokens.norm(dim=-1, keepdim=True)
        return {
            "embedding": (self.embedding @ t) / norm,
            "attention": (self.attention @ t) / norm,
            "ffn": (self.ffn @ t) / norm,
            "bias": (self.bias @ t).expand(*norm.shape[:-1], -1) / norm,
        }


@torch.no_grad()
def residual_contributions(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig | None = None
) -> ResidualContributions:
    """Per-block attention and FFN contributions to the output tokens under ``config``."""
    adapter = adapter_for(model)
    if adapter.kind != "vit":
        raise SurgeryError("residual contributions need a ViT tower: a ModifiedResNet has no residual stream")
    if config is not None and config.depth and not config.keep_residual:
        raise SurgeryError(
            "residual contributions need residual blocks: with keep_residual=False the surgery blocks "
            "replace the stream by their attention output"
        )
    trace = trace_forward(model, images, config)
    try:
        part, bias = adapter.linearised_readout(trace.final)
    except UnsupportedModelError as error:
        raise SurgeryError(str(error)) from None
    return ResidualContributions(
        embedding=part(trace.embedding),
        attention=torch.stack([part(a) for a in trace.attention]),
        ffn=torch.stack([part(f) for f in trace.ffn]),
        bias=bias,
        tokens=adapter.project(trace.final).float(),
        grid=trace.grid,
    )


@torch.no_grad()
def dual_path_decomposition(loaded, images: torch.Tensor, config: SurgeryConfig | None = None) -> list[dict]:
    """Check numerically what the dual path computes (ViT; recorded with the forward's hook points).

    With the new path starting as a copy ``y = x_s`` of the stream entering the first surgery block
    ``s`` and skipping the FFN, its output is ``y_L = x_s + Σ_{i ≥ s} a_i`` where ``a_i`` is block
    i's v-v attention output computed from the *original* stream's ``LN1(x_i)``. Three checks:

    * ``new path = x_s + Σ v-v outputs``: the recorded ``final`` patch tokens against that sum;
    * ``v-v outputs come from the original stream``: each ``new_path.i.attn_out`` recomputed from
      ``LN1(blocks.i.input)``; the ``scale`` column of the row ``... (from the new path instead)`` is
      how far the same attention computed from the new path's own stream would be;
    * ``with q-k on the new path, new = original − FFN outputs``: the same dual path with ordinary q-k
      attention equals the original path minus exactly the surgery blocks' FFN outputs (their direct
      terms; the FFNs still shape later blocks' inputs through the original stream).

    Returns:
        records ``{"check", "max_abs_error", "scale"}`` (``scale``: the largest entry of the compared
        tensor, to read the error against).
    """
    config = config or SurgeryConfig.paper()
    model = getattr(loaded, "model", loaded)
    adapter = adapter_for(model)
    if adapter.kind != "vit":
        raise TypeError("the dual path exists on ViT towers only")
    _need_class_token(adapter, "the dual-path decomposition")
    if not (config.dual_path and config.skip_ffn and config.keep_residual and config.depth > 0):
        raise ValueError("the decomposition is for a dual path that skips the FFN (the paper's)")
    if config.attention not in ("qk", "vv", "qq", "kk", "identity") or config.temperature != "head_dim":
        raise ValueError(f"the decomposition recomputes plain attention kinds, not {config.attention!r}")
    device = next(model.parameters()).device
    images = images.to(device)
    trace = Trace()
    dense_forward(model, images, config, trace)
    v = trace.values
    n, s = adapter.num_blocks, adapter.num_blocks - config.depth
    final = v["final"][:, 1:]
    total = v[f"blocks.{s}.input"][:, 1:] + sum(v[f"new_path.{i}.attn_out"][:, 1:] for i in range(s, n))
    errors, drift = [], []
    for i in range(s, n):
        for stream, out in ((v[f"blocks.{i}.input"], errors), (v[f"new_path.{i}.input"], drift)):
            q, k, vv = adapter.qkv(i, adapter.ln_1(i, stream))
            recomputed = adapter.attention_residual(i, attend(config.attention, q, k, vv))
            out.append(float((recomputed - v[f"new_path.{i}.attn_out"]).abs().max()))
    qk = Trace()
    dense_forward(model, images, config.replace(attention="qk"), qk)
    w = qk.values
    original = w[f"blocks.{n - 1}.input"] + w[f"blocks.{n - 1}.attn_out"] + w[f"blocks.{n - 1}.ffn_out"]
    ffn = sum(w[f"blocks.{i}.ffn_out"] for i in range(s, n))
    rebuilt = (original - ffn)[:, 1:]
    attn_scale = max(float(v[f"new_path.{i}.attn_out"].abs().max()) for i in range(s, n))
    return [
        {
            "check": f"new path = stream entering block {s} + Σ v-v outputs of blocks {s}–{n - 1}",
            "max_abs_error": float((final - total).abs().max()),
            "scale": float(final.abs().max()),
        },
        {
            "check": "v-v outputs recomputed from the original stream LN1(x_i)",
            "max_abs_error": max(errors),
            "scale": attn_scale,
        },
        {
            "check": "v-v outputs recomputed from the new path's own stream instead (should differ)",
            "max_abs_error": max(drift),
            "scale": attn_scale,
        },
        {
            "check": "q-k on the new path: new path = original path − FFN outputs of the surgery blocks",
            "max_abs_error": float((w["final"][:, 1:] - rebuilt).abs().max()),
            "scale": float(ffn[:, 1:].abs().max()),
        },
    ]


@torch.no_grad()
def pool_attention(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Where a SigLIP-style tower's attention pool looks (vanilla forward): its latent query's attention
    over the patch tokens, ``(B, heads, h, w)``, and the grid — the pool plays the class token's role, so
    this is what stands in for the class token's attention row on such a tower.

    Raises:
        UnsupportedModelError: a tower without an attention-pool head.
    """
    check_image_batch(images)
    adapter = adapter_for(model)
    if getattr(adapter, "attention_pool", None) is None:
        raise UnsupportedModelError(f"the {adapter.info.name} tower has no attention-pool head")
    seen: dict[str, torch.Tensor] = {}
    _, grid = dense_forward(model, images, SurgeryConfig.off(), hook=lambda n, v: seen.__setitem__(n, v))
    adapter.attention_pool(adapter.final_norm(seen["final"]), hook=lambda n, v: seen.__setitem__(n, v))
    probs = seen["pool.attn_probs"][:, :, 0]  # (B, heads, N)
    return probs.reshape(*probs.shape[:2], *grid), grid
