"""Adapters for open_clip's timm image towers (``open_clip.timm_model.TimmModel``): SigLIP / SigLIP 2
and EVA02. The definitions are ``../shared/METHODS.md`` §13's; this module is the only one that knows
timm's internals.

**SigLIP** (timm ``VisionTransformer`` with ``global_pool='map'``): no class token, so every stream
token is a patch; blocks ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))`` with a fused ``qkv``
(and q/k norms where the model has them); then the trunk's ``norm`` and the attention-pool head
``attn_pool`` (a learned latent query over all tokens, ``proj``, then ``o + mlp(norm(o))``).

* The *image embedding* (the engine's token 0: zero-shot, feature surgery's class weights) is the pool
  run on the original path's final stream — it plays the class token's role.
* The *dense readout* of a token ``z`` is the pool with ``z`` as its only key and value: a softmax over
  one key is 1 in every head, so ``o(z) = proj(v(norm(z)))`` and then ``o + mlp(norm_pool(o))``. If all
  tokens are equal, every dense token equals the pooled embedding.
* CLIP Surgery's new path and the zoo's attention kinds replace the trunk's attention as on OpenAI's
  towers; "the class token from the original path" becomes "the pooled embedding from the original path".
* Logits are SigLIP's: ``logit_scale.exp() · cos + logit_bias`` read through a sigmoid
  (:func:`~surgery_lib.model.adapters.logit_kind`); feature surgery's class weights ``softmax(2·cos)`` are
  defined on cosines and stay as they are.

**EVA02** (timm ``Eva`` with ``global_pool='token'``): a class token; q/k/v from a fused ``qkv`` (with the
q and v biases) or separate projections; rotary position embedding on the patch tokens' q and k (the
class token is not rotated); an inner LayerNorm on the attention output before ``proj``; a SwiGLU MLP;
``gamma_1`` / ``gamma_2`` layer scale. :meth:`EvaAdapter.qkv` returns q and k rotated as the model
rotates them, v unrotated: v-v attention therefore never sees the rotation, q-q / k-k / q-k see it as
the model does. The dense readout is the head's: the trunk's ``norm`` (or ``fc_norm``), then its
``head`` Linear and open_clip's ``head``, on every token.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.model.adapters import (
    TowerInfo,
    UnsupportedModelError,
    _interpolate_grid,
    _merge_heads,
    _split_heads,
    _type_name,
)


def _grid_of(patch_embed: nn.Module) -> tuple[int, int]:
    return tuple(int(s) for s in patch_embed.grid_size)  # type: ignore[return-value]


class _TimmTower:
    """What the timm ViT-like trunks share: the patch embedding, the positional embedding (interpolated
    into new tensors for other grids), pre-norm blocks with a residual stream, and open_clip's head."""

    kind = "vit"
    prefix = 1

    def __init__(self, visual: nn.Module, trunk: nn.Module) -> None:
        if getattr(trunk, "reg_token", None) is not None:
            raise UnsupportedModelError(f"{_type_name(trunk)} with register tokens is not supported")
        if getattr(trunk, "dynamic_img_pad", False):
            raise UnsupportedModelError(f"{_type_name(trunk)} with dynamic image padding is not supported")
        self.visual = visual
        self.trunk = trunk
        self.blocks = list(trunk.blocks)
        self.patch_size: tuple[int, int] = tuple(trunk.patch_embed.patch_size)  # type: ignore[assignment]
        self.pos_grid = _grid_of(trunk.patch_embed)
        self.prefix = int(getattr(trunk, "num_prefix_tokens", 1))
        self._grid: tuple[int, int] | None = None

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return int(self.trunk.embed_dim)

    def dtype(self) -> torch.dtype:
        return self.trunk.patch_embed.proj.weight.dtype

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an input of ``image_hw`` pixels."""
        return image_hw[0] // self.patch_size[0], image_hw[1] // self.patch_size[1]

    def _patches(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The patch embedding ``(B, h·w, C)`` (its conv and norm, at any size) and the grid."""
        pe = self.trunk.patch_embed
        x = pe.proj(images.to(self.dtype()))
        grid = (x.shape[-2], x.shape[-1])
        x = pe.norm(x.flatten(2).transpose(1, 2))
        self._grid = grid
        return x, grid

    def _add_positions(self, x: torch.Tensor, grid: tuple[int, int], interpolation: str) -> torch.Tensor:
        """Class token and positional embedding, as the trunk's ``_pos_embed`` adds them (the class
        token's position is kept, the grid's resampled): ``(B, h·w, C)`` -> ``(B, prefix + h·w, C)``."""
        t = self.trunk
        pos = t.pos_embed
        cls = [t.cls_token.expand(x.shape[0], -1, -1)] if t.cls_token is not None else []
        if pos is None:
            return torch.cat([*cls, x], dim=1)
        pos = pos[0]
        n_pre = 0 if t.no_embed_class else self.prefix
        grid_pos = _interpolate_grid(pos[n_pre:], self.pos_grid, grid, interpolation).to(x.dtype)
        if t.no_embed_class:
            return torch.cat([*cls, x + grid_pos], dim=1)
        return torch.cat([*cls, x], dim=1) + torch.cat([pos[:n_pre].to(x.dtype), grid_pos], dim=0)

    def embed(
        self, images: torch.Tensor, interpolation: str = "bilinear"
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch (+ class) embeddings, positional embedding (interpolated for other sizes), ``norm_pre``.

        Returns:
            tokens ``(B, prefix + h·w, C)`` and the grid ``(h, w)``.
        """
        x, grid = self._patches(images)
        x = self._add_positions(x, grid, interpolation)
        return self.trunk.norm_pre(x), grid

    def ln_1(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].norm1(x)

    def heads(self, i: int) -> int:
        return int(self.blocks[i].attn.num_heads)

    def linearised_readout(self, final: torch.Tensor) -> tuple[object, torch.Tensor]:
        raise UnsupportedModelError(
            f"residual contributions need a linear readout after one LayerNorm (OpenAI-style ViT); "
            f"{_type_name(self.visual)} ({_type_name(self.trunk)}) has none"
        )

    def _open_clip_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.head(x)


class SigLIPAdapter(_TimmTower):
    """A timm ``VisionTransformer`` trunk with an attention-pool head (``global_pool='map'``), as open_clip
    builds SigLIP / SigLIP 2. See the module doc for the definitions."""

    def __init__(self, visual: nn.Module, trunk: nn.Module) -> None:
        from timm.layers import AttentionPoolLatent
        from timm.layers.attention import Attention

        super().__init__(visual, trunk)
        pool = getattr(trunk, "attn_pool", None)
        if not isinstance(pool, AttentionPoolLatent):
            raise UnsupportedModelError(
                f"{_type_name(visual)} with the timm trunk {_type_name(trunk)} without an attention-pool "
                f"head (global_pool={trunk.global_pool!r}) is not supported: only SigLIP-style 'map' pooling"
            )
        if self.prefix != 0 or trunk.cls_token is not None:
            raise UnsupportedModelError("SigLIP-style tower with a class token is not supported")
        if pool.pos_embed is not None or pool.latent_len != 1 or pool.mlp is None:
            raise UnsupportedModelError(
                "attention pool with its own positional embedding, several latents or no MLP is not supported"
            )
        if not isinstance(trunk.fc_norm, nn.Identity) or not isinstance(trunk.head, nn.Identity):
            raise UnsupportedModelError("SigLIP-style tower with a norm or classifier after the pool")
        for i, block in enumerate(self.blocks):
            attn = block.attn
            if type(attn) is not Attention or getattr(attn, "gate", None) is not None:
                raise UnsupportedModelError(f"block {i}: unsupported attention module {_type_name(attn)}")
        self.pool = pool

    @property
    def info(self) -> TowerInfo:
        """The tower's capabilities (:class:`~surgery_lib.model.adapters.TowerInfo`)."""
        return TowerInfo(
            kind=self.kind,
            name=f"{_type_name(self.visual)}[{_type_name(self.trunk)}]",
            num_blocks=self.num_blocks,
            residual_stream=True,
            class_token="pooled",
            fused_qkv=True,
            rotary=False,
            layer_scale=any(not isinstance(b.ls1, nn.Identity) for b in self.blocks),
            stride=self.patch_size,
            pos_grid=self.pos_grid,
            dense_readout="the attention pool with each token as its only key and value: "
            "proj(v(norm(z))), then the pool's residual MLP",
        )

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``i`` exactly as timm runs it. ``x``: ``(B, N, C)``."""
        return self.blocks[i](x)

    def qkv(self, i: int, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v of block ``i`` for the normalised input ``a`` ``(B, N, C)`` (q/k normed as
        the model normalises them), each ``(B, heads, N, d_head)``."""
        attn = self.blocks[i].attn
        q, k, v = attn.qkv(a).chunk(3, dim=-1)
        h = self.heads(i)
        q, k, v = _split_heads(q, h), _split_heads(k, h), _split_heads(v, h)
        return attn.q_norm(q), attn.k_norm(k), v

    def attention_residual(self, i: int, o: torch.Tensor) -> torch.Tensor:
        """Per-head attention output ``(B, heads, N, d)`` -> the residual update ``ls1(proj(norm(o)))``."""
        block = self.blocks[i]
        return block.ls1(block.attn.proj(block.attn.norm(_merge_heads(o))))

    def ffn_residual(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The FFN's residual update ``ls2(mlp(norm2(x)))``, ``(B, N, C)``."""
        block = self.blocks[i]
        return block.ls2(block.mlp(block.norm2(x)))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's ``norm`` after the last block, ``(B, N, C)``."""
        return self.trunk.norm(x)

    def _pool_out(self, o: torch.Tensor) -> torch.Tensor:
        """The pool's tail on per-token outputs ``(B, N, C)``: ``proj``, then ``o + mlp(norm(o))``, then
        open_clip's head."""
        p = self.pool
        o = p.proj(o)
        return self._open_clip_head(o + p.mlp(p.norm(o)))

    def attention_pool(
        self, x: torch.Tensor, hook: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """The attention pool on a stream ``x`` ``(B, N, C)`` (without the trunk's final norm: pass
        ``final_norm(x)`` for the image embedding) -> ``(B, D)``.

        ``hook(name, value)``, when given, is called with ``"pool.attn_probs"`` and the probabilities
        ``(B, heads, 1, N)``; it may return a replacement of the same shape (the output is computed
        from it, so gradients with respect to it are the pool attention's).
        """
        p = self.pool
        h = p.num_heads
        latent = p.latent.to(x.dtype).expand(x.shape[0], -1, -1)
        q = _split_heads(p.q(latent), h)
        k, v = p.kv(x).chunk(2, dim=-1)
        k, v = _split_heads(k, h), _split_heads(v, h)
        q, k = p.q_norm(q), p.k_norm(k)
        probs = ((q * p.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        if hook is not None:
            replaced = hook("pool.attn_probs", probs)
            if replaced is not None:
                if not isinstance(replaced, torch.Tensor) or replaced.shape != probs.shape:
                    raise ValueError(f"the hook must return None or a tensor of shape {tuple(probs.shape)}")
                probs = replaced
        return self._pool_out(_merge_heads(probs @ v))[:, 0]

    def dense_readout(self, x: torch.Tensor) -> torch.Tensor:
        """Every token through the pool as its only key and value: ``(B, N, C)`` (normed by the trunk's
        ``norm`` already) -> ``(B, N, D)``."""
        _, v = self.pool.kv(x).chunk(2, dim=-1)
        return self._pool_out(v)

    def output(self, final: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """The engine's output tokens ``(B, 1 + N, D)``: the pooled embedding of the original path's
        final stream ``original`` first, then the dense readout of ``final`` (the new path's stream when
        there is one)."""
        pooled = self.attention_pool(self.final_norm(original))
        return torch.cat([pooled[:, None], self.dense_readout(self.final_norm(final))], dim=1)


_GRIDS: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[int, int]]] = weakref.WeakKeyDictionary()
"""Per EVA trunk, the grid of each patch count it was last embedded with: an adapter that did not embed the
images itself (a gradient explainer's second look at a block) finds the rotary embedding of the stream."""


class EvaAdapter(_TimmTower):
    """A timm ``Eva`` trunk with class-token pooling, as open_clip builds EVA02-CLIP. See the module doc."""

    def __init__(self, visual: nn.Module, trunk: nn.Module) -> None:
        from timm.models.eva import EvaAttention, EvaBlock

        super().__init__(visual, trunk)
        if trunk.cls_token is None or self.prefix != 1 or trunk.global_pool != "token":
            raise UnsupportedModelError(
                f"EVA tower with global_pool={trunk.global_pool!r} and {self.prefix} prefix tokens is not "
                "supported: only class-token pooling"
            )
        if getattr(trunk, "rope_mixed", False):
            raise UnsupportedModelError(
                "EVA tower with depth-dependent (mixed) rotary embedding is not supported"
            )
        for i, block in enumerate(self.blocks):
            attn = getattr(block, "attn", None)
            if type(block) is not EvaBlock or type(attn) is not EvaAttention:
                raise UnsupportedModelError(f"block {i}: unsupported EVA block {_type_name(block)}")
            if getattr(attn, "gate", None) is not None or getattr(attn, "qkv_bias_separate", False):
                raise UnsupportedModelError(
                    f"block {i}: gated attention or separate qkv bias is not supported"
                )
        self._rope: torch.Tensor | None = None

    @property
    def info(self) -> TowerInfo:
        """The tower's capabilities (:class:`~surgery_lib.model.adapters.TowerInfo`)."""
        return TowerInfo(
            kind=self.kind,
            name=f"{_type_name(self.visual)}[{_type_name(self.trunk)}]",
            num_blocks=self.num_blocks,
            residual_stream=True,
            class_token="learned",
            fused_qkv=self.blocks[0].attn.qkv is not None,
            rotary=self.trunk.rope is not None,
            layer_scale=self.blocks[0].gamma_1 is not None,
            stride=self.patch_size,
            pos_grid=self.pos_grid,
            dense_readout="the trunk's final norm, then the head's Linear, on every token",
        )

    def embed(
        self, images: torch.Tensor, interpolation: str = "bilinear"
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """As :meth:`_TimmTower.embed`; also builds the rotary embedding of the grid.

        Raises:
            UnsupportedModelError: a grid other than the native one on a tower whose rotary embedding is
                cached for the native grid.
        """
        x, grid = super().embed(images, interpolation)
        self._rope = self._rope_for(grid)
        _GRIDS.setdefault(self.trunk, {})[grid[0] * grid[1]] = grid
        return x, grid

    def _rope_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The rotary embedding ``(h·w, 2·d)`` of ``grid`` as the model builds it (``None``: no rope). At
        another grid than the cached native one it is built from the rope's own frequency bands, as timm
        does for a model with dynamic image sizes (``get_embed(shape)``)."""
        rope = self.trunk.rope
        if rope is None:
            return None
        if grid == self.pos_grid:
            return rope.get_embed()
        if getattr(rope, "_use_cached_embed", True) is False:
            return rope.get_embed(shape=list(grid))
        build = getattr(rope, "_build_embed_cat", None)
        if build is None or getattr(rope, "bands", None) is None:
            native = (self.pos_grid[0] * self.patch_size[0], self.pos_grid[1] * self.patch_size[1])
            raise UnsupportedModelError(
                f"{_type_name(self.trunk)} caches its rotary embedding for the {self.pos_grid} grid and its "
                f"rope ({_type_name(rope)}) cannot build another; this input gives a {grid} grid: use its "
                f"native input size {native[0]}×{native[1]}"
            )
        return build(list(grid), rope.bands, augment=False)

    def _rope_of(self, n_tokens: int) -> torch.Tensor | None:
        """The rotary embedding for a stream of ``n_tokens``: the embedded grid's, or — for an adapter
        that did not embed the images itself — the native grid's when the count matches it."""
        if self.trunk.rope is None:
            return None
        patches = n_tokens - self.prefix
        if self._rope is not None and self._rope.shape[0] == patches:
            return self._rope
        if patches == self.pos_grid[0] * self.pos_grid[1]:
            return self._rope_for(self.pos_grid)
        grid = _GRIDS.get(self.trunk, {}).get(patches)  # the grid this tower last embedded with that count
        if grid is not None:
            return self._rope_for(grid)
        raise UnsupportedModelError(
            f"cannot tell the grid of {patches} patch tokens for the rotary embedding: embed the images "
            "with this adapter first"
        )

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``i`` exactly as timm runs it (with the grid's rotary embedding). ``x``: ``(B, N, C)``."""
        return self.blocks[i](x, rope=self._rope_of(x.shape[1]))

    def qkv(self, i: int, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v of block ``i`` for the normalised input ``a`` ``(B, N, C)``, each
        ``(B, heads, N, d_head)``: q and k normed and rotated (patch tokens only) as the model does, v
        as projected."""
        from timm.layers import apply_rot_embed_cat

        attn = self.blocks[i].attn
        h = self.heads(i)
        if attn.qkv is not None:
            bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            q, k, v = F.linear(a, attn.qkv.weight, bias).chunk(3, dim=-1)
        else:
            q, k, v = attn.q_proj(a), attn.k_proj(a), attn.v_proj(a)
        q, k, v = _split_heads(q, h), _split_heads(k, h), _split_heads(v, h)
        q, k = attn.q_norm(q), attn.k_norm(k)
        rope = self._rope_of(a.shape[1])
        if rope is not None:
            n = self.prefix
            half = getattr(attn, "rotate_half", False)
            q = torch.cat([q[:, :, :n], apply_rot_embed_cat(q[:, :, n:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :n], apply_rot_embed_cat(k[:, :, n:], rope, half=half)], dim=2).type_as(v)
        return q, k, v

    def attention_residual(self, i: int, o: torch.Tensor) -> torch.Tensor:
        """Per-head attention output ``(B, heads, N, d)`` -> ``gamma_1 · proj(norm(o))``."""
        block = self.blocks[i]
        o = block.attn.proj(block.attn.norm(_merge_heads(o)))
        return o if block.gamma_1 is None else block.gamma_1 * o

    def ffn_residual(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The FFN's residual update ``gamma_2 · mlp(norm2(x))``, ``(B, N, C)``."""
        block = self.blocks[i]
        f = block.mlp(block.norm2(x))
        return f if block.gamma_2 is None else block.gamma_2 * f

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Every token through the head: ``norm``, ``fc_norm``, the trunk's ``head``, open_clip's head;
        ``(B, N, C)`` -> ``(B, N, D)``."""
        t = self.trunk
        return self._open_clip_head(t.head(t.fc_norm(t.norm(x))))

    def output(self, final: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """The engine's output tokens ``(B, 1 + N, D)`` from the final stream (class token first)."""
        return self.project(final)

    def linearised_readout(self, final: torch.Tensor) -> tuple[object, torch.Tensor]:
        """The trunk's final LayerNorm linearised at ``final`` ``(B, 1+N, C)`` (its own mean and standard
        deviation), then the head (affine: timm's ``head`` Linear and open_clip's): ``(part, bias)`` with
        the parts plus ``bias`` ``(D,)`` adding up to :meth:`project` ``(final)``, as for OpenAI's ViTs.

        Raises:
            UnsupportedModelError: the final norm is not a LayerNorm, or a norm follows the pooling.
        """
        t = self.trunk
        ln = t.norm
        if not isinstance(ln, nn.LayerNorm) or not isinstance(t.fc_norm, nn.Identity):
            raise UnsupportedModelError(
                f"cannot linearise the readout of {_type_name(t)}: norm {type(ln).__name__}, "
                f"fc_norm {type(t.fc_norm).__name__}"
            )
        width = final.shape[-1]
        with torch.no_grad():
            zero = self._open_clip_head(t.head(torch.zeros(1, width, dtype=final.dtype))).float()[0]
            matrix = self._open_clip_head(t.head(torch.eye(width, dtype=final.dtype))).float() - zero
        final = final.float()
        sigma = (final.var(dim=-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
        weight = ln.weight.float() if ln.weight is not None else torch.ones(width)

        def part(x: torch.Tensor) -> torch.Tensor:
            x = x.float()
            return ((x - x.mean(dim=-1, keepdim=True)) / sigma * weight) @ matrix

        bias = (ln.bias.float() @ matrix if ln.bias is not None else 0) + zero
        return part, bias


def timm_adapter(visual: nn.Module) -> SigLIPAdapter | EvaAdapter:
    """The adapter for an open_clip ``TimmModel`` image tower, or an error that names what is unsupported."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    trunk = getattr(visual, "trunk", None)
    if isinstance(getattr(visual, "head", None), nn.Sequential) and any(
        name == "pool" for name, _ in visual.head.named_children()
    ):
        raise UnsupportedModelError(
            f"{_type_name(visual)} with an open_clip attention pool head is not supported"
        )
    if isinstance(trunk, Eva):
        return EvaAdapter(visual, trunk)
    if isinstance(trunk, VisionTransformer):
        return SigLIPAdapter(visual, trunk)
    raise UnsupportedModelError(
        f"unsupported timm image tower {_type_name(trunk)}: the supported timm trunks are SigLIP-style "
        "VisionTransformer (attention-pool head) and EVA02 (Eva)"
    )
