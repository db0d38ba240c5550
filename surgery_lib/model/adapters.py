"""Model adapters: the only module that knows open_clip's internals.

An adapter reads an open_clip image tower (``VisionTransformer`` with either block type, or
``ModifiedResNet``) and exposes the pieces the surgery needs as plain functions over tensors. It
never writes into the model: positional embeddings for other input sizes are interpolated into new
tensors, and every call reads the current parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from surgery_lib.model.timm_towers import EvaAdapter, SigLIPAdapter


class UnsupportedModelError(TypeError):
    """The model is not a CLIP, or its image tower is one the surgery cannot handle."""


@dataclass(frozen=True)
class TowerInfo:
    """What an image tower is, as capability flags: the only thing code outside ``surgery_lib.model``
    asks about a tower (never its adapter's type).

    Attributes:
        kind: ``"vit"`` or ``"rn"`` (the kinds a :class:`~surgery_lib.methods.base.Method` lists).
        name: the tower's class, ``module.qualname``.
        num_blocks: attention blocks (a ModifiedResNet: 1, its attention pool).
        residual_stream: the blocks have a residual stream (dual path, skip-FFN, traces, residual
            contributions and per-block patching apply).
        class_token: how the image embedding's token is made: ``"learned"`` (the class token),
            ``"avg"`` (the mean of the patch tokens, open_clip's ``pool_type='avg'``, e.g. CLIPA; a class
            token is still in the stream but unused), ``"mean"`` (a ModifiedResNet attention pool's mean
            token) or ``"pooled"`` (no class token: a SigLIP attention-pool head over all tokens). Either
            way it is token 0 of the engine's output; only ``"learned"`` towers read it from the stream.
        fused_qkv: q, k and v come from one fused projection.
        rotary: rotary position embedding on q and k.
        layer_scale: the blocks scale their residual updates (LayerScale).
        stride: pixels per token ``(h, w)``; also the smallest input.
        pos_grid: the native token grid ``(h, w)`` of the positional embedding.
        dense_readout: how each token becomes an image-text embedding, in words.
    """

    kind: str
    name: str
    num_blocks: int
    residual_stream: bool
    class_token: str
    fused_qkv: bool
    rotary: bool
    layer_scale: bool
    stride: tuple[int, int]
    pos_grid: tuple[int, int]
    dense_readout: str


def class_token(tokens: torch.Tensor) -> torch.Tensor:
    """The image-embedding token of the engine's output ``(B, 1 + N, ...)`` -> ``(B, ...)``."""
    return tokens[:, 0]


def patch_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The patch tokens of the engine's output ``(B, 1 + N, ...)`` -> ``(B, N, ...)`` (row-major grid)."""
    return tokens[:, 1:]


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def check_clip(model: object) -> nn.Module:
    """Return ``model.visual`` after checking that ``model`` is an open_clip CLIP.

    Raises:
        UnsupportedModelError: naming the type when the model is not a CLIP (no image tower, no
            text encoder).
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"expected an open_clip CLIP model (torch.nn.Module), got {_type_name(model)}"
        )
    visual = getattr(model, "visual", None)
    if not isinstance(visual, nn.Module) or not callable(getattr(model, "encode_text", None)):
        raise UnsupportedModelError(
            f"{_type_name(model)} is not a CLIP model: it needs an image tower `.visual` and "
            "`.encode_text()` (build it with open_clip, e.g. surgery_lib.load_clip)"
        )
    return visual


def _resample(grid: torch.Tensor, old: tuple[int, int], new: tuple[int, int], mode: str) -> torch.Tensor:
    """``(1, C, old_h, old_w)`` -> ``(1, C, new_h, new_w)`` the way ``mode`` (a
    :data:`~surgery_lib.config.PosEmbedInterp`) names."""
    if mode == "bilinear":
        return F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    if mode == "bicubic":
        return F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    if mode == "bicubic-antialias":
        return F.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=True)
    if mode == "bicubic-dino":
        # DINO's trick: the source coordinates follow the factor (n + 0.1)/g, not n/g
        factor = ((new[0] + 0.1) / old[0], (new[1] + 0.1) / old[1])
        out = F.interpolate(
            grid, scale_factor=factor, mode="bicubic", align_corners=False, recompute_scale_factor=False
        )
        if tuple(out.shape[-2:]) != tuple(new):  # pragma: no cover - floor((n + 0.1)) is n
            raise RuntimeError(f"DINO-style resampling gave {tuple(out.shape[-2:])}, expected {new}")
        return out
    raise ValueError(f"unknown positional-embedding interpolation {mode!r}")


def _interpolate_grid(
    pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Resample spatial positional embeddings ``(old_h·old_w, C)`` to ``(new_h·new_w, C)`` (in float32;
    bilinear by default, see :data:`~surgery_lib.config.PosEmbedInterp`); the native grid is returned
    as is."""
    if old == new:
        return pos
    c = pos.shape[-1]
    grid = pos.reshape(1, old[0], old[1], c).permute(0, 3, 1, 2)
    grid = _resample(grid.float(), old, new, mode).to(pos.dtype)
    return grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], c)


def _square_side(n: int, what: str) -> int:
    side = round(n**0.5)
    if side * side != n:
        raise UnsupportedModelError(f"{what} has {n} spatial positions, which is not a square grid")
    return side


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, C)`` -> ``(B, heads, N, C // heads)``."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, d)`` -> ``(B, N, heads · d)``."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class ViTAdapter:
    """Pieces of an open_clip ``VisionTransformer`` (blocks of ``nn.MultiheadAttention`` or of
    open_clip's own ``Attention``)."""

    kind = "vit"
    prefix = 1
    """Prefix tokens (the class token) before the patch tokens of the stream."""

    def __init__(self, visual: nn.Module) -> None:
        from open_clip.transformer import Attention, VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise UnsupportedModelError(f"not an open_clip VisionTransformer: {_type_name(visual)}")
        if getattr(visual, "attn_pool", None) is not None:
            raise UnsupportedModelError(
                "VisionTransformer with an attentional pooler (CoCa-style) is not supported: "
                "its tokens do not map to image-text similarities"
            )
        if visual.pool_type not in ("tok", "avg"):
            raise UnsupportedModelError(
                f"VisionTransformer with pool_type={visual.pool_type!r} is not supported: the image "
                "embedding must be the class token ('tok') or the mean patch token ('avg', e.g. CLIPA)"
            )
        if visual.proj is None:
            raise UnsupportedModelError("VisionTransformer without an output projection (proj is None)")
        for i, block in enumerate(visual.transformer.resblocks):
            attn = block.attn
            if isinstance(attn, Attention):
                if attn.logit_scale is not None:
                    raise UnsupportedModelError(
                        f"block {i}: open_clip Attention with scaled cosine attention is not supported"
                    )
            elif isinstance(attn, nn.MultiheadAttention):
                if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
                    raise UnsupportedModelError(
                        f"block {i}: MultiheadAttention with separate q/k/v projections"
                    )
            else:
                raise UnsupportedModelError(f"block {i}: unsupported attention module {_type_name(attn)}")
            if hasattr(block, "ln_1_kv"):
                raise UnsupportedModelError(f"block {i}: cross-attention blocks are not supported")
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))
        self.patch_size: tuple[int, int] = tuple(visual.conv1.kernel_size)  # type: ignore[assignment]
        n_pos = visual.positional_embedding.shape[0] - 1
        self.pos_grid: tuple[int, int] = tuple(visual.grid_size)  # type: ignore[assignment]
        if self.pos_grid[0] * self.pos_grid[1] != n_pos:
            side = _square_side(n_pos, "positional_embedding")
            self.pos_grid = (side, side)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def info(self) -> TowerInfo:
        """The tower's capabilities (:class:`TowerInfo`)."""
        return TowerInfo(
            kind=self.kind,
            name=_type_name(self.visual),
            num_blocks=self.num_blocks,
            residual_stream=True,
            class_token="learned" if self.visual.pool_type == "tok" else "avg",
            fused_qkv=True,
            rotary=False,
            layer_scale=any(not isinstance(b.ls_1, nn.Identity) for b in self.blocks),
            stride=self.patch_size,
            pos_grid=self.pos_grid,
            dense_readout="ln_post, then the projection, on every token",
        )

    def linearised_readout(self, final: torch.Tensor) -> tuple[object, torch.Tensor]:
        """``ln_post`` linearised at the stream ``final`` ``(B, 1+N, C)`` (its own mean and standard
        deviation), then the projection: returns ``(part, bias)`` where ``part(t)`` maps any additive
        part ``t`` of the stream to its share of the projected tokens and ``bias`` ``(D,)`` is
        ``ln_post``'s bias projected, so the parts plus ``bias`` add up to :meth:`project` ``(final)``.

        Raises:
            UnsupportedModelError: ``ln_post`` is not a LayerNorm, or the image embedding is not the class
                token's readout (``pool_type='avg'``).
        """
        ln = self.visual.ln_post
        if self.visual.pool_type != "tok":
            raise UnsupportedModelError(
                f"residual contributions read the class token; this tower pools {self.visual.pool_type!r}"
            )
        if not isinstance(ln, nn.LayerNorm):
            raise UnsupportedModelError(f"cannot linearise ln_post of type {type(ln).__name__}")
        final = final.float()
        sigma = (final.var(dim=-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
        weight = ln.weight.float() if ln.weight is not None else torch.ones(final.shape[-1])
        proj = self.visual.proj.float()

        def part(t: torch.Tensor) -> torch.Tensor:
            t = t.float()
            return ((t - t.mean(dim=-1, keepdim=True)) / sigma * weight) @ proj

        bias = (ln.bias.float() @ proj) if ln.bias is not None else torch.zeros(proj.shape[1])
        return part, bias

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an input of ``image_hw`` pixels."""
        return image_hw[0] // self.patch_size[0], image_hw[1] // self.patch_size[1]

    def embed(
        self, images: torch.Tensor, interpolation: str = "bilinear"
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch + class embeddings, positional embedding (interpolated for other sizes), ``ln_pre``.

        Args:
            images: ``(B, 3, H, W)``.
            interpolation: how the positional embedding is resampled for a non-native grid
                (:data:`~surgery_lib.config.PosEmbedInterp`).
        Returns:
            tokens ``(B, 1 + h·w, C)`` and the grid ``(h, w)``.
        """
        v = self.visual
        x = v.conv1(images.to(self.dtype()))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        pos = v.positional_embedding
        pos = torch.cat([pos[:1], _interpolate_grid(pos[1:], self.pos_grid, grid, interpolation)], dim=0)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return v.ln_pre(x), grid

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``i`` exactly as open_clip runs it. ``x``: ``(B, N, C)``."""
        if self.batch_first:
            return self.blocks[i](x)
        return self.blocks[i](x.transpose(0, 1)).transpose(0, 1)

    def ln_1(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].ln_1(x)

    def heads(self, i: int) -> int:
        return int(self.blocks[i].attn.num_heads)

    def qkv(self, i: int, a: torch.Tensor, query_tokens: slice | None = None) -> tuple[torch.Tensor, ...]:
        """Per-head q, k, v of block ``i`` for the normalised input ``a`` ``(B, N, C)``.

        Returns three ``(B, heads, N, d_head)`` tensors (q/k after qk-norm where the block has it).
        """
        attn = self.blocks[i].attn
        q, k, v = F.linear(a, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        h = self.heads(i)
        q, k, v = _split_heads(q, h), _split_heads(k, h), _split_heads(v, h)
        ln_q, ln_k = getattr(attn, "ln_q", None), getattr(attn, "ln_k", None)
        if ln_q is not None:
            q, k = ln_q(q), ln_k(k)
        return q, k, v

    def attention_residual(self, i: int, o: torch.Tensor) -> torch.Tensor:
        """From per-head attention output ``(B, heads, N, d)`` to the residual update ``(B, N, C)``:
        head scale, head merge, inner norm, output projection, post-attention norm, LayerScale."""
        block = self.blocks[i]
        attn = block.attn
        head_scale = getattr(attn, "head_scale", None)
        if head_scale is not None:
            o = o * head_scale
        o = _merge_heads(o)
        o = getattr(attn, "ln_inner", nn.Identity())(o)
        o = attn.out_proj(o)
        o = getattr(block, "ln_attn", nn.Identity())(o)
        return block.ls_1(o)

    def ffn_residual(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The FFN's residual update ``ls_2(mlp(ln_2(x)))``, ``(B, N, C)``."""
        block = self.blocks[i]
        return block.ls_2(block.mlp(block.ln_2(x)))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_post(x) @ proj``: ``(B, N, C)`` -> ``(B, N, D)``."""
        return self.visual.ln_post(x) @ self.visual.proj

    def output(self, final: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """The engine's output tokens ``(B, 1 + N, D)``: each token of the final stream ``final`` through
        ``ln_post`` and the projection (its class token is the original path's already). With
        ``pool_type='avg'`` (CLIPA) token 0 is instead the image embedding open_clip pools from the
        original path's patch tokens ``original[:, 1:]`` (their mean, before or after ``ln_post`` as the
        model's ``final_ln_after_pool`` says)."""
        tokens = self.project(final)
        v = self.visual
        if v.pool_type == "tok":
            return tokens
        patches = original[:, 1:]
        if v.final_ln_after_pool:
            pooled = v.ln_post(patches.mean(dim=1)) @ v.proj
        else:
            pooled = v.ln_post(patches).mean(dim=1) @ v.proj
        return torch.cat([pooled[:, None], tokens[:, 1:]], dim=1)


class ResNetAdapter:
    """Pieces of an open_clip ``ModifiedResNet``: the convolutional trunk and the attention pool."""

    kind = "rn"
    num_blocks = 1

    def __init__(self, visual: nn.Module) -> None:
        from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet

        if not isinstance(visual, ModifiedResNet):
            raise UnsupportedModelError(f"not an open_clip ModifiedResNet: {_type_name(visual)}")
        if not isinstance(getattr(visual, "attnpool", None), AttentionPool2d):
            raise UnsupportedModelError("ModifiedResNet without its attention pool is not supported")
        self.visual = visual
        self.pool = visual.attnpool
        side = _square_side(self.pool.positional_embedding.shape[0] - 1, "attnpool.positional_embedding")
        self.pos_grid = (side, side)

    @property
    def info(self) -> TowerInfo:
        """The tower's capabilities (:class:`TowerInfo`)."""
        return TowerInfo(
            kind=self.kind,
            name=_type_name(self.visual),
            num_blocks=1,
            residual_stream=False,
            class_token="mean",
            fused_qkv=False,
            rotary=False,
            layer_scale=False,
            stride=(32, 32),
            pos_grid=self.pos_grid,
            dense_readout="the attention pool's value and output projections, with every token as a query",
        )

    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an input of ``image_hw`` pixels (the trunk's stride 32)."""
        h, w = (image_hw[0] + 1) // 2, (image_hw[1] + 1) // 2  # stem conv: k 3, stride 2, pad 1
        return h // 16, w // 16  # stem avgpool, then the stride-2 stages 2, 3 and 4

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Stem and residual stages: ``(B, 3, H, W)`` -> ``(B, C, h, w)``."""
        v = self.visual
        x = v.stem(images.to(self.dtype()))
        return v.layer4(v.layer3(v.layer2(v.layer1(x))))

    def pool_tokens(
        self, feats: torch.Tensor, interpolation: str = "bilinear"
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens of the attention pool: mean token first, positional embedding added.

        Args:
            feats: ``(B, C, h, w)``.
            interpolation: as for :meth:`ViTAdapter.embed`.
        Returns:
            ``(B, 1 + h·w, C)`` and the grid ``(h, w)``.
        """
        grid = (feats.shape[-2], feats.shape[-1])
        t = feats.flatten(2).transpose(1, 2)
        t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1)
        pos = self.pool.positional_embedding
        pos = torch.cat([pos[:1], _interpolate_grid(pos[1:], self.pos_grid, grid, interpolation)], dim=0)
        return t + pos.to(t.dtype), grid

    def heads(self, i: int = 0) -> int:
        return int(self.pool.num_heads)

    def qkv(self, i: int, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v of the attention pool, each ``(B, heads, N, d_head)``."""
        p, h = self.pool, self.heads()
        return _split_heads(p.q_proj(t), h), _split_heads(p.k_proj(t), h), _split_heads(p.v_proj(t), h)

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """Per-head attention output ``(B, heads, N, d)`` -> projected tokens ``(B, N, D)``."""
        return self.pool.c_proj(_merge_heads(o))


@runtime_checkable
class Tower(Protocol):
    """What every tower adapter offers (the engine's forward for the tower uses the rest of its
    adapter): its kind and capabilities, its blocks, and per-block attention projections."""

    kind: str
    pos_grid: tuple[int, int]

    @property
    def info(self) -> TowerInfo: ...

    @property
    def num_blocks(self) -> int: ...

    def dtype(self) -> torch.dtype: ...

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]: ...

    def heads(self, i: int) -> int: ...

    def qkv(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


Adapter: TypeAlias = "ViTAdapter | ResNetAdapter | SigLIPAdapter | EvaAdapter"
"""The towers the engine runs (each a :class:`Tower`): ``kind == "vit"`` for the token towers (OpenAI-style
open_clip ViTs, and timm's SigLIP and EVA02 trunks in :mod:`surgery_lib.model.timm_towers`), ``"rn"``
for a ModifiedResNet."""


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``'s image tower, or an error that names what is unsupported."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    visual = check_clip(model)
    if isinstance(visual, VisionTransformer):
        return ViTAdapter(visual)
    if isinstance(visual, ModifiedResNet):
        return ResNetAdapter(visual)
    if type(visual).__name__ == "TimmModel":
        from surgery_lib.model.timm_towers import timm_adapter

        return timm_adapter(visual)
    if type(visual).__module__ == "surgery_lib.model.hf_towers":  # transformers' CLIPModel / SiglipModel
        from surgery_lib.model.hf_towers import hf_adapter

        return hf_adapter(visual)
    raise UnsupportedModelError(
        f"unsupported image tower {_type_name(visual)}: the supported towers are open_clip's "
        "VisionTransformer and ModifiedResNet, its timm towers with a SigLIP or EVA02 trunk, and "
        "transformers' CLIPModel and SiglipModel (surgery_lib.model.hf_towers.HFCLIP)"
    )


def tower_info(model: nn.Module) -> TowerInfo:
    """The capabilities of ``model``'s image tower (:class:`TowerInfo`), or an error naming what is
    unsupported."""
    return adapter_for(model).info


def text_token_features(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Every text token's feature after ``ln_final`` and the text projection (not normalised).

    The pooled text feature of open_clip is the end-of-text token's row of this tensor.

    Args:
        tokens: ``(T, L)`` token ids.
    Returns:
        ``(T, L, D)``.
    Raises:
        UnsupportedModelError: for text towers other than open_clip's own transformer (e.g. HF towers).
    """
    from open_clip.transformer import TextTransformer

    check_clip(model)
    text = getattr(model, "text", model)
    if text is not model and not isinstance(text, TextTransformer):
        raise UnsupportedModelError(
            f"per-token text features need open_clip's text transformer, not {_type_name(text)}"
        )
    if getattr(text, "cls_emb", None) is not None:
        raise UnsupportedModelError("text towers with a class embedding (CoCa-style) are not supported")
    pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
    if pool_type != "argmax":
        raise UnsupportedModelError(f"text pooling {pool_type!r} is not supported (only CLIP's 'argmax')")
    dtype = text.transformer.get_cast_dtype()
    x = text.token_embedding(tokens).to(dtype) + text.positional_embedding.to(dtype)
    x = text.ln_final(text.transformer(x, attn_mask=text.attn_mask))
    proj = text.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj
