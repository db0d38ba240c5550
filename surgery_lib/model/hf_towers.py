"""Hugging Face ``transformers`` towers: ``CLIPModel`` and ``SiglipModel`` run by the engine like open_clip's.

``transformers`` is an optional dependency (``pip install -r requirements-hf.txt``, the ``hf`` extra); it is
imported only when an HF model is built or loaded. The definitions are ``../shared/METHODS.md`` §13's.

* :class:`HFCLIP` is a thin facade over a ``CLIPModel`` or a ``SiglipModel`` (held as the submodule
  ``hf``, never modified) offering what the library uses of an open_clip model: ``visual`` (an
  :class:`HFVisionTower`), ``encode_image``, ``encode_text``, ``logit_scale``, ``logit_bias`` (SigLIP),
  ``context_length`` and, for CLIP's causal text tower, ``encode_text_short``.
* :class:`HFCLIPAdapter` reads a ``CLIPModel``'s image tower as an OpenAI-style ViT: ``embeddings`` (class
  token, patch convolution, positional embedding), ``pre_layrnorm``, ``encoder.layers[i]`` with
  ``layer_norm1/2``, separate ``self_attn.q_proj/k_proj/v_proj``, ``out_proj`` and ``mlp``; each token's
  dense readout is ``visual_projection(post_layernorm(x))``. The same weights as an open_clip ViT give the
  same outputs for every method (``in_proj`` split in thirds ↔ ``q/k/v_proj``, ``ln_pre`` ↔
  ``pre_layrnorm``, ``proj`` ↔ ``visual_projection.weight.T``: :func:`hf_clip_from_open_clip`).
* :class:`HFSiglipAdapter` reads a ``SiglipModel``'s image tower as a SigLIP tower (no class token): the
  trunk's ``post_layernorm``, then the attention-pool head ``head`` (a learned ``probe`` query, a
  ``torch.nn.MultiheadAttention`` of which only ``in_proj_weight``/``in_proj_bias``/``out_proj`` are read,
  then ``o + mlp(layernorm(o))``). The image embedding is the pool on the original path's final stream; a
  token's dense readout is the pool with that token as its only key and value,
  ``out_proj(v(z))`` then ``+ mlp(layernorm(.))`` — as :class:`~surgery_lib.model.timm_towers.SigLIPAdapter`
  defines them for open_clip's SigLIP (:func:`hf_siglip_from_open_clip` maps one onto the other).

Both adapters offer what the engine asks of a token tower (``kind``, ``prefix``, ``info``, ``embed``,
``run_block``, ``ln_1``, ``qkv``, ``attention_residual``, ``ffn_residual``, ``output``, ...) with the
definitions of their open_clip counterparts, every piece reading the HF modules.
:func:`load_hf_clip` loads a model from the Hugging Face cache (``load_clip("hf:org/name")``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.model.adapters import (
    TowerInfo,
    UnsupportedModelError,
    ViTAdapter,
    _interpolate_grid,
    _merge_heads,
    _split_heads,
    _square_side,
    _type_name,
)
from surgery_lib.model.timm_towers import SigLIPAdapter

FAMILIES = ("clip", "siglip")
"""The ``config.model_type`` values of the HF models supported: ``CLIPModel`` and ``SiglipModel``."""


def _family(hf_model: nn.Module) -> str:
    """``"clip"`` or ``"siglip"`` for a ``transformers`` ``CLIPModel`` / ``SiglipModel``, else an error."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if (
        model_type not in FAMILIES
        or not hasattr(hf_model, "vision_model")
        or not hasattr(hf_model, "text_model")
    ):
        raise UnsupportedModelError(
            f"{_type_name(hf_model)} (model_type={model_type!r}) is not a transformers CLIPModel or "
            "SiglipModel: only those two HF model classes are supported"
        )
    return str(model_type)


def _pooled(output: object) -> torch.Tensor:
    """The pooled tensor of an HF model output (``pooler_output``), or the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFVisionTower(nn.Module):
    """``model.visual`` of an :class:`HFCLIP`: the HF vision model and, for CLIP, its ``visual_projection``
    (SigLIP's attention-pool head lives inside its vision model). Calling it gives the HF model's own image
    embedding ``(B, D)`` (``get_image_features``), the positional embedding interpolated by HF for inputs of
    another size."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module | None, family: str) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection
        self.family = family
        size = vision_model.config.image_size
        self.image_size: int = int(size if isinstance(size, int) else size[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> the image embedding ``(B, D)``, not normalised."""
        other_size = tuple(images.shape[-2:]) != (self.image_size, self.image_size)
        out = _pooled(self.vision_model(pixel_values=images, interpolate_pos_encoding=other_size))
        return out if self.projection is None else self.projection(out)


class HFCLIP(nn.Module):
    """An open_clip-like facade over a ``transformers`` ``CLIPModel`` or ``SiglipModel`` (``hf``, shared,
    never modified). ``visual`` is registered first, so ``named_parameters()`` lists the image tower under
    ``visual.`` and the rest (text tower, logit scale and bias) under ``hf.``."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        family = _family(hf_model)
        projection = hf_model.visual_projection if family == "clip" else None
        self.visual = HFVisionTower(hf_model.vision_model, projection, family)
        self.hf = hf_model
        self.family = family
        self.context_length: int = int(hf_model.config.text_config.max_position_embeddings)

    @property
    def logit_scale(self) -> nn.Parameter:
        """The HF model's log logit scale (shape ``()`` for CLIP, ``(1,)`` for SigLIP)."""
        return self.hf.logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:
        """SigLIP's logit bias ``(1,)``; ``None`` for CLIP."""
        return getattr(self.hf, "logit_bias", None) if self.family == "siglip" else None

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``self.visual(images)``: ``(B, D)`` (or every token ``(B, 1+N, D)`` while a surgery is applied)."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def _text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = _pooled(self.hf.text_model(input_ids=tokens))
        return self.hf.text_projection(out) if self.family == "clip" else out

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings of token ids ``(T, L)`` -> ``(T, D)`` (the HF model's ``get_text_features``)."""
        features = self._text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def _read_position(self, tokens: torch.Tensor) -> torch.Tensor:
        """Where CLIP's text model reads each prompt ``(T,)``: the highest id (legacy ``eos_token_id == 2``)
        or the first end token, as ``CLIPTextModel`` pools."""
        eos = self.hf.text_model.config.eos_token_id
        if eos == 2:
            return tokens.argmax(dim=-1)
        return (tokens == eos).int().argmax(dim=-1)

    def _encode_text_short(self, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text(tokens)`` on the context cut after the last read position (exact: CLIP's text
        model is causal, so the positions after a prompt's end token never reach its embedding)."""
        length = int(self._read_position(tokens).max()) + 1
        return self._text(tokens[:, :length])

    @property
    def encode_text_short(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """CLIP: ``encode_text`` on the context cut to the longest prompt (exact, see
        :mod:`surgery_lib.model.text_encoding`). ``None`` for SigLIP, whose bidirectional text model
        pools the last position (it reads the padding)."""
        return self._encode_text_short if self.family == "clip" else None


def _check_layers(layers: Sequence[nn.Module], what: str) -> None:
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        names = ("q_proj", "k_proj", "v_proj", "out_proj")
        if attn is None or not all(isinstance(getattr(attn, n, None), nn.Linear) for n in names):
            raise UnsupportedModelError(f"{what} layer {i}: unsupported attention {_type_name(attn)}")
        if not all(
            isinstance(getattr(layer, n, None), nn.Module) for n in ("layer_norm1", "layer_norm2", "mlp")
        ):
            raise UnsupportedModelError(
                f"{what} layer {i} ({_type_name(layer)}) is not a pre-norm encoder layer"
            )


def _run_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An HF encoder layer on ``x`` ``(B, N, C)`` without a mask (transformers 5 returns the tensor,
    older versions a tuple)."""
    out = layer(x, None)
    return out[0] if isinstance(out, tuple) else out


class _HFLayers:
    """What both HF towers share: the patch embedding and pre-norm encoder layers."""

    kind = "vit"
    visual: HFVisionTower
    vision: nn.Module
    blocks: list[nn.Module]

    def _setup(self, visual: HFVisionTower, prefix: int) -> None:
        self.visual = visual
        self.vision = visual.vision_model
        self.blocks = list(self.vision.encoder.layers)
        _check_layers(self.blocks, _type_name(self.vision))
        emb = self.vision.embeddings
        self.patch_size: tuple[int, int] = tuple(emb.patch_embedding.kernel_size)  # type: ignore[assignment]
        side = _square_side(emb.position_embedding.weight.shape[0] - prefix, "position_embedding")
        self.pos_grid = (side, side)
        self.prefix = prefix
        self.batch_first = True

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return int(self.vision.embeddings.patch_embedding.out_channels)

    def dtype(self) -> torch.dtype:
        return self.vision.embeddings.patch_embedding.weight.dtype

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an input of ``image_hw`` pixels."""
        return image_hw[0] // self.patch_size[0], image_hw[1] // self.patch_size[1]

    def _patches(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The patch convolution ``(B, h·w, C)`` and the grid ``(h, w)``."""
        x = self.vision.embeddings.patch_embedding(images.to(self.dtype()))
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` exactly as transformers runs it. ``x``: ``(B, N, C)``."""
        return _run_layer(self.blocks[i], x)

    def ln_1(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].layer_norm1(x)

    def heads(self, i: int) -> int:
        return int(self.blocks[i].self_attn.num_heads)

    def qkv(self, i: int, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v of layer ``i`` for the normalised input ``a`` ``(B, N, C)``, each
        ``(B, heads, N, d_head)`` (separate ``q_proj``/``k_proj``/``v_proj``)."""
        attn = self.blocks[i].self_attn
        h = self.heads(i)
        return (
            _split_heads(attn.q_proj(a), h),
            _split_heads(attn.k_proj(a), h),
            _split_heads(attn.v_proj(a), h),
        )

    def attention_residual(self, i: int, o: torch.Tensor) -> torch.Tensor:
        """Per-head attention output ``(B, heads, N, d)`` -> the residual update ``out_proj(merge(o))``."""
        return self.blocks[i].self_attn.out_proj(_merge_heads(o))

    def ffn_residual(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP's residual update ``mlp(layer_norm2(x))``, ``(B, N, C)``."""
        block = self.blocks[i]
        return block.mlp(block.layer_norm2(x))


class HFCLIPAdapter(_HFLayers):
    """A ``transformers`` ``CLIPModel``'s image tower as an OpenAI-style ViT (class token, prefix 1), with
    :class:`~surgery_lib.model.adapters.ViTAdapter`'s definitions."""

    def __init__(self, visual: HFVisionTower) -> None:
        if visual.family != "clip" or visual.projection is None:
            raise UnsupportedModelError(f"{_type_name(visual.vision_model)} is not a CLIP vision model")
        self._setup(visual, prefix=1)

    @property
    def info(self) -> TowerInfo:
        """The tower's capabilities (:class:`~surgery_lib.model.adapters.TowerInfo`)."""
        return TowerInfo(
            kind=self.kind,
            name=_type_name(self.vision),
            num_blocks=self.num_blocks,
            residual_stream=True,
            class_token="learned",
            fused_qkv=False,
            rotary=False,
            layer_scale=False,
            stride=self.patch_size,
            pos_grid=self.pos_grid,
            dense_readout="post_layernorm, then visual_projection, on every token",
        )

    def embed(
        self, images: torch.Tensor, interpolation: str = "bilinear"
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Class token and patch embeddings, positional embedding (interpolated for other grids),
        ``pre_layrnorm``: ``(B, 3, H, W)`` -> tokens ``(B, 1 + h·w, C)`` and the grid ``(h, w)``."""
        emb = self.vision.embeddings
        x, grid = self._patches(images)
        cls = emb.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        pos = emb.position_embedding.weight
        pos = torch.cat([pos[:1], _interpolate_grid(pos[1:], self.pos_grid, grid, interpolation)], dim=0)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return self.vision.pre_layrnorm(x), grid

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``visual_projection(post_layernorm(x))``: ``(B, N, C)`` -> ``(B, N, D)``."""
        return self.visual.projection(self.vision.post_layernorm(x))

    def output(self, final: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """The engine's output tokens ``(B, 1 + N, D)`` from the final stream ``final`` (its class token is
        the original path's already; ``original`` is not needed)."""
        return self.project(final)

    def linearised_readout(self, final: torch.Tensor) -> tuple[object, torch.Tensor]:
        """As :meth:`ViTAdapter.linearised_readout`, with ``post_layernorm`` and ``visual_projection``.

        Raises:
            UnsupportedModelError: ``post_layernorm`` is not a LayerNorm.
        """
        ln = self.vision.post_layernorm
        if not isinstance(ln, nn.LayerNorm):
            raise UnsupportedModelError(f"cannot linearise post_layernorm of type {type(ln).__name__}")
        final = final.float()
        sigma = (final.var(dim=-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
        weight = ln.weight.float() if ln.weight is not None else torch.ones(final.shape[-1])
        proj = self.visual.projection.weight.float().t()  # (C, D)

        def part(t: torch.Tensor) -> torch.Tensor:
            t = t.float()
            return ((t - t.mean(dim=-1, keepdim=True)) / sigma * weight) @ proj

        bias = (ln.bias.float() @ proj) if ln.bias is not None else torch.zeros(proj.shape[1])
        return part, bias


class HFSiglipAdapter(_HFLayers):
    """A ``transformers`` ``SiglipModel``'s image tower (no class token, prefix 0, attention-pool head),
    with :class:`~surgery_lib.model.timm_towers.SigLIPAdapter`'s definitions."""

    def __init__(self, visual: HFVisionTower) -> None:
        if visual.family != "siglip":
            raise UnsupportedModelError(f"{_type_name(visual.vision_model)} is not a SigLIP vision model")
        self._setup(visual, prefix=0)
        head = getattr(self.vision, "head", None) if getattr(self.vision, "use_head", True) else None
        mha = getattr(head, "attention", None)
        if head is None or not isinstance(mha, nn.MultiheadAttention):
            raise UnsupportedModelError(
                f"{_type_name(self.vision)} without its attention-pool head (vision_use_head=False) is not "
                "supported: the image embedding is the pool's output"
            )
        if mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn or not mha.batch_first:
            raise UnsupportedModelError(
                "the attention pool's MultiheadAttention must use one packed in_proj, no bias_k/bias_v, "
                "no zero attention and batch_first=True"
            )
        if tuple(head.probe.shape[:2]) != (1, 1):
            raise UnsupportedModelError(f"attention pool with a probe of shape {tuple(head.probe.shape)}")
        self.pool = head

    @property
    def info(self) -> TowerInfo:
        """The tower's capabilities (:class:`~surgery_lib.model.adapters.TowerInfo`)."""
        return TowerInfo(
            kind=self.kind,
            name=_type_name(self.vision),
            num_blocks=self.num_blocks,
            residual_stream=True,
            class_token="pooled",
            fused_qkv=False,
            rotary=False,
            layer_scale=False,
            stride=self.patch_size,
            pos_grid=self.pos_grid,
            dense_readout="the attention pool with each token as its only key and value: "
            "out_proj(v(post_layernorm(z))), then the pool's residual MLP",
        )

    def embed(
        self, images: torch.Tensor, interpolation: str = "bilinear"
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embeddings plus the positional embedding (interpolated for other grids; no class token,
        no pre-norm): ``(B, 3, H, W)`` -> tokens ``(B, h·w, C)`` and the grid ``(h, w)``."""
        x, grid = self._patches(images)
        pos = _interpolate_grid(
            self.vision.embeddings.position_embedding.weight, self.pos_grid, grid, interpolation
        )
        return x + pos.to(x.dtype), grid

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``post_layernorm`` after the last layer, ``(B, N, C)``."""
        return self.vision.post_layernorm(x)

    def _in_proj(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """The pool's packed ``in_proj`` third ``which`` (0 q, 1 k, 2 v) applied to ``x`` ``(B, N, C)``."""
        mha = self.pool.attention
        c = mha.embed_dim
        bias = None if mha.in_proj_bias is None else mha.in_proj_bias[which * c : (which + 1) * c]
        return F.linear(x, mha.in_proj_weight[which * c : (which + 1) * c], bias)

    def _pool_out(self, o: torch.Tensor) -> torch.Tensor:
        """The pool's tail on per-token outputs ``(B, N, C)``: ``out_proj``, then
        ``o + mlp(layernorm(o))``."""
        o = self.pool.attention.out_proj(o)
        return o + self.pool.mlp(self.pool.layernorm(o))

    def attention_pool(
        self, x: torch.Tensor, hook: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """The attention pool on a stream ``x`` ``(B, N, C)`` (pass ``final_norm(x)`` for the image
        embedding) -> ``(B, D)``; ``hook`` as in :meth:`SigLIPAdapter.attention_pool` (``"pool.attn_probs"``,
        ``(B, heads, 1, N)``)."""
        h = self.pool.attention.num_heads
        probe = self.pool.probe.to(x.dtype).expand(x.shape[0], -1, -1)
        q = _split_heads(self._in_proj(probe, 0), h)
        k, v = _split_heads(self._in_proj(x, 1), h), _split_heads(self._in_proj(x, 2), h)
        probs = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        if hook is not None:
            replaced = hook("pool.attn_probs", probs)
            if replaced is not None:
                if not isinstance(replaced, torch.Tensor) or replaced.shape != probs.shape:
                    raise ValueError(f"the hook must return None or a tensor of shape {tuple(probs.shape)}")
                probs = replaced
        return self._pool_out(_merge_heads(probs @ v))[:, 0]

    def dense_readout(self, x: torch.Tensor) -> torch.Tensor:
        """Every token through the pool as its only key and value: ``(B, N, C)`` (after
        ``post_layernorm``) -> ``(B, N, D)``."""
        return self._pool_out(self._in_proj(x, 2))

    def output(self, final: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """The engine's output tokens ``(B, 1 + N, D)``: the pooled embedding of the original path's final
        stream ``original`` first, then the dense readout of ``final`` (the new path's stream when there
        is one)."""
        pooled = self.attention_pool(self.final_norm(original))
        return torch.cat([pooled[:, None], self.dense_readout(self.final_norm(final))], dim=1)

    def linearised_readout(self, final: torch.Tensor) -> tuple[object, torch.Tensor]:
        raise UnsupportedModelError(
            f"residual contributions need a linear readout after one LayerNorm (OpenAI-style ViT); "
            f"{_type_name(self.vision)} ends in an attention pool"
        )


def hf_adapter(visual: nn.Module) -> HFCLIPAdapter | HFSiglipAdapter:
    """The adapter for an :class:`HFVisionTower` (``model.visual`` of an :class:`HFCLIP`)."""
    if not isinstance(visual, HFVisionTower):
        raise UnsupportedModelError(f"not a Hugging Face vision tower of surgery_lib: {_type_name(visual)}")
    return HFCLIPAdapter(visual) if visual.family == "clip" else HFSiglipAdapter(visual)


# --- The same weights in transformers: open_clip -> CLIPModel / SiglipModel -------------------------------


def _activation(mlp_act: nn.Module, what: str) -> str:
    """The HF ``hidden_act`` of an open_clip / timm MLP activation module."""
    from open_clip.transformer import QuickGELU

    if isinstance(mlp_act, QuickGELU):
        return "quick_gelu"
    if isinstance(mlp_act, nn.GELU):
        return "gelu" if mlp_act.approximate == "none" else "gelu_pytorch_tanh"
    raise UnsupportedModelError(f"{what}: no transformers activation for {_type_name(mlp_act)}")


def _layer_norm_eps(*norms: nn.Module) -> float:
    eps = {float(n.eps) for n in norms}
    if len(eps) != 1 or not all(isinstance(n, nn.LayerNorm) for n in norms):
        raise UnsupportedModelError(f"transformers needs one LayerNorm eps per tower, got {sorted(eps)}")
    return eps.pop()


def _resblock_weights(block: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """An open_clip ``ResidualAttentionBlock`` (packed ``in_proj``, ``c_fc``/``c_proj``) as the weights of an
    HF encoder layer ``prefix`` (``q/k/v_proj`` are the thirds of ``in_proj``)."""
    attn = block.attn
    if not isinstance(block.ls_1, nn.Identity) or not isinstance(block.ls_2, nn.Identity):
        raise UnsupportedModelError(f"{prefix}: layer scale has no transformers CLIP counterpart")
    if any(hasattr(attn, n) and getattr(attn, n) is not None for n in ("ln_q", "ln_k", "head_scale")):
        raise UnsupportedModelError(
            f"{prefix}: q/k norms or head scale have no transformers CLIP counterpart"
        )
    if not isinstance(getattr(attn, "ln_inner", nn.Identity()), nn.Identity):
        raise UnsupportedModelError(
            f"{prefix}: the inner attention norm has no transformers CLIP counterpart"
        )
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    return {
        f"{prefix}.layer_norm1.weight": block.ln_1.weight,
        f"{prefix}.layer_norm1.bias": block.ln_1.bias,
        f"{prefix}.self_attn.q_proj.weight": wq,
        f"{prefix}.self_attn.q_proj.bias": bq,
        f"{prefix}.self_attn.k_proj.weight": wk,
        f"{prefix}.self_attn.k_proj.bias": bk,
        f"{prefix}.self_attn.v_proj.weight": wv,
        f"{prefix}.self_attn.v_proj.bias": bv,
        f"{prefix}.self_attn.out_proj.weight": attn.out_proj.weight,
        f"{prefix}.self_attn.out_proj.bias": attn.out_proj.bias,
        f"{prefix}.layer_norm2.weight": block.ln_2.weight,
        f"{prefix}.layer_norm2.bias": block.ln_2.bias,
        f"{prefix}.mlp.fc1.weight": block.mlp.c_fc.weight,
        f"{prefix}.mlp.fc1.bias": block.mlp.c_fc.bias,
        f"{prefix}.mlp.fc2.weight": block.mlp.c_proj.weight,
        f"{prefix}.mlp.fc2.bias": block.mlp.c_proj.bias,
    }


def _timm_block_weights(block: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A timm ``Block`` (fused ``qkv``, ``proj``, ``fc1``/``fc2``) as the weights of an HF encoder layer."""
    attn = block.attn
    plain = (block.ls1, block.ls2, attn.q_norm, attn.k_norm, attn.norm, block.mlp.norm)
    if not all(isinstance(m, nn.Identity) for m in plain):
        raise UnsupportedModelError(
            f"{prefix}: layer scale, q/k norms or inner norms have no transformers SigLIP counterpart"
        )
    wq, wk, wv = attn.qkv.weight.chunk(3)
    bq, bk, bv = attn.qkv.bias.chunk(3)
    return {
        f"{prefix}.layer_norm1.weight": block.norm1.weight,
        f"{prefix}.layer_norm1.bias": block.norm1.bias,
        f"{prefix}.self_attn.q_proj.weight": wq,
        f"{prefix}.self_attn.q_proj.bias": bq,
        f"{prefix}.self_attn.k_proj.weight": wk,
        f"{prefix}.self_attn.k_proj.bias": bk,
        f"{prefix}.self_attn.v_proj.weight": wv,
        f"{prefix}.self_attn.v_proj.bias": bv,
        f"{prefix}.self_attn.out_proj.weight": attn.proj.weight,
        f"{prefix}.self_attn.out_proj.bias": attn.proj.bias,
        f"{prefix}.layer_norm2.weight": block.norm2.weight,
        f"{prefix}.layer_norm2.bias": block.norm2.bias,
        f"{prefix}.mlp.fc1.weight": block.mlp.fc1.weight,
        f"{prefix}.mlp.fc1.bias": block.mlp.fc1.bias,
        f"{prefix}.mlp.fc2.weight": block.mlp.fc2.weight,
        f"{prefix}.mlp.fc2.bias": block.mlp.fc2.bias,
    }


def _text_tower_weights(blocks: Sequence[nn.Module], prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i, block in enumerate(blocks):
        out.update(_resblock_weights(block, f"{prefix}.encoder.layers.{i}"))
    return out


def _with_weights(hf_model: nn.Module, weights: dict[str, torch.Tensor]) -> HFCLIP:
    """``hf_model`` (freshly built, ours) loaded with ``weights`` (every tensor, strictly), in eval mode."""
    state = {k: v.detach().clone().reshape(hf_model.state_dict()[k].shape) for k, v in weights.items()}
    hf_model.load_state_dict(state, strict=True)
    return HFCLIP(hf_model.eval())


def hf_clip_from_open_clip(model: nn.Module) -> HFCLIP:
    """A ``transformers`` ``CLIPModel`` with the weights of an open_clip ``CLIP`` with an OpenAI-style ViT
    (class-token pooling, a projection matrix, no layer scale or extra norms) and its causal text tower,
    wrapped in :class:`HFCLIP`. The open_clip model is read, not changed.

    Mapping (ours): ``class_embedding``, ``conv1`` -> ``embeddings.class_embedding``, ``patch_embedding``;
    ``positional_embedding`` -> ``position_embedding``; ``ln_pre`` -> ``pre_layrnorm``; each block's
    ``in_proj`` split in thirds -> ``q/k/v_proj``, ``out_proj``, ``ln_1/2`` -> ``layer_norm1/2``,
    ``c_fc``/``c_proj`` -> ``fc1``/``fc2``; ``ln_post`` -> ``post_layernorm``; ``proj`` ->
    ``visual_projection.weight.T``; the text tower likewise (``ln_final`` -> ``final_layer_norm``,
    ``text_projection`` -> ``text_projection.weight.T``); ``logit_scale``. The text model pools at the
    highest token id (``eos_token_id=2``, transformers' legacy argmax), as open_clip's ``argmax`` does.

    Raises:
        UnsupportedModelError: a tower or setting without a ``CLIPModel`` counterpart.
    """
    from open_clip.model import CLIP
    from transformers import CLIPConfig, CLIPModel

    if not isinstance(model, CLIP):
        raise UnsupportedModelError(
            f"expected an open_clip CLIP with a ViT image tower, got {_type_name(model)}"
        )
    ViTAdapter(model.visual)  # checks the tower: an OpenAI-style ViT (raises otherwise)
    v = model.visual
    if v.pool_type != "tok":
        raise UnsupportedModelError(f"CLIPModel reads the class token; this tower pools {v.pool_type!r}")
    if getattr(model, "text_pool_type", "argmax") != "argmax" or model.attn_mask is None:
        raise UnsupportedModelError("the text tower must be causal and pool at the end token (argmax)")
    if getattr(model, "logit_bias", None) is not None:
        raise UnsupportedModelError("a CLIP with a logit bias has no transformers CLIPModel counterpart")
    if any(isinstance(m, nn.Linear) for m in (model.text_projection, v.proj)) or v.conv1.bias is not None:
        raise UnsupportedModelError("projections must be matrices and the patch convolution without bias")
    vblocks, tblocks = list(v.transformer.resblocks), list(model.transformer.resblocks)
    vision_config = {
        "hidden_size": v.conv1.out_channels,
        "intermediate_size": vblocks[0].mlp.c_fc.out_features,
        "num_hidden_layers": len(vblocks),
        "num_attention_heads": vblocks[0].attn.num_heads,
        "image_size": v.image_size if isinstance(v.image_size, int) else v.image_size[0],
        "patch_size": v.conv1.kernel_size[0],
        "hidden_act": _activation(vblocks[0].mlp.gelu, "image tower"),
        "layer_norm_eps": _layer_norm_eps(v.ln_pre, v.ln_post, *(b.ln_1 for b in vblocks)),
    }
    text_config = {
        "vocab_size": model.vocab_size,
        "hidden_size": model.transformer.width,
        "intermediate_size": tblocks[0].mlp.c_fc.out_features,
        "num_hidden_layers": len(tblocks),
        "num_attention_heads": tblocks[0].attn.num_heads,
        "max_position_embeddings": model.context_length,
        "hidden_act": _activation(tblocks[0].mlp.gelu, "text tower"),
        "layer_norm_eps": _layer_norm_eps(model.ln_final, *(b.ln_1 for b in tblocks)),
        "eos_token_id": 2,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=v.proj.shape[1])
    weights = {
        "vision_model.embeddings.class_embedding": v.class_embedding,
        "vision_model.embeddings.patch_embedding.weight": v.conv1.weight,
        "vision_model.embeddings.position_embedding.weight": v.positional_embedding,
        "vision_model.pre_layrnorm.weight": v.ln_pre.weight,
        "vision_model.pre_layrnorm.bias": v.ln_pre.bias,
        "vision_model.post_layernorm.weight": v.ln_post.weight,
        "vision_model.post_layernorm.bias": v.ln_post.bias,
        "visual_projection.weight": v.proj.t(),
        "text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": model.positional_embedding,
        "text_model.final_layer_norm.weight": model.ln_final.weight,
        "text_model.final_layer_norm.bias": model.ln_final.bias,
        "text_projection.weight": model.text_projection.t(),
        "logit_scale": model.logit_scale,
    }
    for i, block in enumerate(vblocks):
        weights.update(_resblock_weights(block, f"vision_model.encoder.layers.{i}"))
    weights.update(_text_tower_weights(tblocks, "text_model"))
    return _with_weights(CLIPModel(config), weights)


def hf_siglip_from_open_clip(model: nn.Module) -> HFCLIP:
    """A ``transformers`` ``SiglipModel`` with the weights of an open_clip SigLIP model (a timm
    ``VisionTransformer`` with an attention-pool head and no class token, open_clip's bidirectional text
    tower pooled at the last position), wrapped in :class:`HFCLIP`. The open_clip model is read only.

    Mapping (ours): ``patch_embed.proj`` -> ``embeddings.patch_embedding``; ``pos_embed`` ->
    ``position_embedding``; each block's ``qkv`` split in thirds -> ``q/k/v_proj``, ``proj`` ->
    ``out_proj``, ``norm1/2`` -> ``layer_norm1/2``, ``fc1``/``fc2``; ``norm`` -> ``post_layernorm``; the
    pool's ``latent`` -> ``head.probe``, ``[q; kv]`` -> ``head.attention.in_proj_weight`` (and bias),
    ``proj`` -> ``head.attention.out_proj``, ``norm`` -> ``head.layernorm``, ``mlp``; the text tower as
    for CLIP with ``text_projection`` (a Linear with bias) -> ``text_model.head``; ``logit_scale``,
    ``logit_bias``.

    Raises:
        UnsupportedModelError: a tower or setting without a ``SiglipModel`` counterpart.
    """
    from open_clip.model import CustomTextCLIP
    from open_clip.transformer import TextTransformer
    from transformers import SiglipConfig, SiglipModel

    if not isinstance(model, CustomTextCLIP) or not isinstance(model.text, TextTransformer):
        raise UnsupportedModelError(f"expected an open_clip SigLIP model, got {_type_name(model)}")
    adapter = SigLIPAdapter(model.visual, model.visual.trunk)  # checks the trunk and the pool
    trunk, pool, text = model.visual.trunk, adapter.pool, model.text
    plain = (trunk.norm_pre, trunk.patch_embed.norm, pool.q_norm, pool.k_norm, pool.mlp.norm)
    head = model.visual.head  # open_clip's head after the trunk: empty without a projection
    no_head = isinstance(head, nn.Identity) or (isinstance(head, nn.Sequential) and len(head) == 0)
    if not all(isinstance(m, nn.Identity) for m in plain) or not no_head or trunk.pos_embed is None:
        raise UnsupportedModelError("extra norms, a projection after the pool or no positional embedding")
    if (
        text.attn_mask is not None
        or text.pool_type != "last"
        or text.use_pad_mask
        or text.cls_emb is not None
    ):
        raise UnsupportedModelError(
            "the text tower must be bidirectional, unmasked and pooled at the last token"
        )
    if not isinstance(text.text_projection, nn.Linear) or text.text_projection.bias is None:
        raise UnsupportedModelError("the text projection must be a Linear with bias (SigLIP's text head)")
    blocks, tblocks = list(trunk.blocks), list(text.transformer.resblocks)
    vision_config = {
        "hidden_size": trunk.embed_dim,
        "intermediate_size": blocks[0].mlp.fc1.out_features,
        "num_hidden_layers": len(blocks),
        "num_attention_heads": blocks[0].attn.num_heads,
        "image_size": model.visual.image_size[0],
        "patch_size": trunk.patch_embed.patch_size[0],
        "hidden_act": _activation(blocks[0].mlp.act, "image tower"),
        "layer_norm_eps": _layer_norm_eps(trunk.norm, pool.norm, *(b.norm1 for b in blocks)),
    }
    if (
        pool.mlp.fc1.out_features != vision_config["intermediate_size"]
        or pool.num_heads != blocks[0].attn.num_heads
    ):
        raise UnsupportedModelError(
            "the pool's MLP and heads must match the trunk's (transformers shares them)"
        )
    text_config = {
        "vocab_size": text.vocab_size,
        "hidden_size": text.width,
        "intermediate_size": tblocks[0].mlp.c_fc.out_features,
        "num_hidden_layers": len(tblocks),
        "num_attention_heads": tblocks[0].attn.num_heads,
        "max_position_embeddings": text.num_pos,
        "hidden_act": _activation(tblocks[0].mlp.gelu, "text tower"),
        "layer_norm_eps": _layer_norm_eps(text.ln_final, *(b.ln_1 for b in tblocks)),
        "projection_size": text.text_projection.out_features,
    }
    config = SiglipConfig(text_config=text_config, vision_config=vision_config)
    weights = {
        "vision_model.embeddings.patch_embedding.weight": trunk.patch_embed.proj.weight,
        "vision_model.embeddings.patch_embedding.bias": trunk.patch_embed.proj.bias,
        "vision_model.embeddings.position_embedding.weight": trunk.pos_embed[0],
        "vision_model.post_layernorm.weight": trunk.norm.weight,
        "vision_model.post_layernorm.bias": trunk.norm.bias,
        "vision_model.head.probe": pool.latent,
        "vision_model.head.attention.in_proj_weight": torch.cat([pool.q.weight, pool.kv.weight]),
        "vision_model.head.attention.in_proj_bias": torch.cat([pool.q.bias, pool.kv.bias]),
        "vision_model.head.attention.out_proj.weight": pool.proj.weight,
        "vision_model.head.attention.out_proj.bias": pool.proj.bias,
        "vision_model.head.layernorm.weight": pool.norm.weight,
        "vision_model.head.layernorm.bias": pool.norm.bias,
        "vision_model.head.mlp.fc1.weight": pool.mlp.fc1.weight,
        "vision_model.head.mlp.fc1.bias": pool.mlp.fc1.bias,
        "vision_model.head.mlp.fc2.weight": pool.mlp.fc2.weight,
        "vision_model.head.mlp.fc2.bias": pool.mlp.fc2.bias,
        "text_model.embeddings.token_embedding.weight": text.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": text.positional_embedding,
        "text_model.final_layer_norm.weight": text.ln_final.weight,
        "text_model.final_layer_norm.bias": text.ln_final.bias,
        "text_model.head.weight": text.text_projection.weight,
        "text_model.head.bias": text.text_projection.bias,
        "logit_scale": model.logit_scale,
        "logit_bias": model.logit_bias,
    }
    for i, block in enumerate(blocks):
        weights.update(_timm_block_weights(block, f"vision_model.encoder.layers.{i}"))
    weights.update(_text_tower_weights(tblocks, "text_model"))
    return _with_weights(SiglipModel(config), weights)


# --- Loading from the Hugging Face cache -----------------------------------------------------------------

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")
_DOWNLOADED = ["*.json", "*.txt", "*.model", "*.safetensors"]
"""What :func:`load_hf_clip` downloads of a repository when online (configs, tokenizer, safetensors
weights)."""

_DEFAULT_STATS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
"""Mean and std per family when a folder has no ``preprocessor_config.json``."""


class HFTextTokenizer:
    """An HF tokenizer as the library calls one: ``tokenizer(texts)`` -> ``(T, context_length)`` LongTensor
    ids (padded to the context, truncated), ``encode(text)`` -> the content ids without start/end tokens,
    and ``context_length``. The HF tokenizer is ``.tokenizer``."""

    def __init__(self, tokenizer: object, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = int(context_length)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=context_length or self.context_length,
            return_tensors="pt",
        )
        return out["input_ids"].long()

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` alone (no start, end or padding tokens)."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]


def _hub_cache(cache_dir: str | os.PathLike | None) -> str:
    """The HF hub cache folder: ``cache_dir``, else ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, the default (read
    now, not when ``huggingface_hub`` was imported)."""
    if cache_dir:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline_reason(repo_id: str) -> str | None:
    """Why the hub is not asked (``HF_HUB_OFFLINE`` set, or its host unreachable), or ``None``."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("", "0", "false", "no"):
        return "HF_HUB_OFFLINE is set"
    from surgery_lib.model.loading import _unreachable_hosts

    unreachable = _unreachable_hosts({"hf_hub": repo_id})
    return f"{', '.join(unreachable)} cannot be reached (offline?)" if unreachable else None


def _missing_files(folder: Path | None) -> list[str]:
    """The files a model folder lacks: ``config.json``, the weights and the tokenizer."""

    def has(names: Sequence[str]) -> bool:
        return folder is not None and any((folder / n).is_file() for n in names)

    missing = [] if has(["config.json"]) else ["config.json"]
    if not has(_WEIGHT_FILES):
        missing.append("model.safetensors (or pytorch_model.bin)")
    if not has(_TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json + merges.txt, or spiece.model)")
    return missing


def _how_to_supply(repo_id: str, cache: str) -> str:
    org_name = repo_id.replace("/", "--")
    return (
        f"Supply {repo_id} in one of these ways:\n"
        f'  - on a machine with internet: python -c "from huggingface_hub import snapshot_download; '
        f"snapshot_download('{repo_id}')\" (or `hf download {repo_id}`), then copy the cache folder "
        f"models--{org_name} into {cache} (HF_HUB_CACHE, or HF_HOME/hub);\n"
        f"  - a local folder written by save_pretrained (model, tokenizer, image processor): "
        f"load_clip('hf:/path/to/folder')."
    )


def _model_folder(repo_id: str, cache_dir: str | os.PathLike | None) -> Path:
    """The local folder of ``repo_id``'s files: ``repo_id`` itself when it is a folder, else its snapshot
    in the HF cache (downloaded when online).

    Raises:
        WeightsNotAvailableError: naming the repository, the missing files and how to supply them.
    """
    from surgery_lib.model.loading import WeightsNotAvailableError

    if Path(repo_id).is_dir():
        folder: Path | None = Path(repo_id)
        where = f"the folder {repo_id}"
    else:
        from huggingface_hub import snapshot_download

        cache = _hub_cache(cache_dir)
        reason = _offline_reason(repo_id)
        where = f"the HF cache {cache}" + (f" ({reason})" if reason else "")
        try:
            folder = Path(
                snapshot_download(
                    repo_id, cache_dir=cache, local_files_only=reason is not None, allow_patterns=_DOWNLOADED
                )
            )
        except Exception as err:  # not in the cache (offline), or any failure of the download
            if reason is None:
                raise WeightsNotAvailableError(
                    f"could not fetch the Hugging Face model {repo_id}: {type(err).__name__}: {err}\n"
                    f"{_how_to_supply(repo_id, cache)}"
                ) from err
            folder = None
    missing = _missing_files(folder)
    if missing:
        supply = _how_to_supply(repo_id, _hub_cache(cache_dir)) if not Path(repo_id).is_dir() else ""
        raise WeightsNotAvailableError(
            f"the Hugging Face model {repo_id} is not complete in {where}: "
            f"missing {', '.join(missing)}.\n{supply}"
        )
    return folder  # type: ignore[return-value]


def hf_preprocess(folder: Path, family: str, image_size: int) -> Callable:
    """The model's image transform from its ``preprocessor_config.json`` (mean, std, resampling, centre
    crop or not) at ``image_size``, as an open_clip transform; without the file, the family's usual one
    (CLIP: OpenAI's statistics, bicubic, shortest side and centre crop; SigLIP: 0.5, bilinear, squash)."""
    import open_clip

    path = folder / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    mean, std = _DEFAULT_STATS[family]
    crop = bool(cfg.get("do_center_crop", family == "clip"))
    resample = int(cfg.get("resample", 3 if family == "clip" else 2))  # PIL: 2 bilinear, 3 bicubic
    return open_clip.image_transform(
        image_size,
        is_train=False,
        mean=tuple(cfg.get("image_mean") or mean),
        std=tuple(cfg.get("image_std") or std),
        resize_mode="shortest" if crop else "squash",
        interpolation="bicubic" if resample == 3 else "bilinear",
    )


def load_hf_clip(
    repo_id: str,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    reference_size: int | None = None,
):
    """A ``transformers`` ``CLIPModel`` or ``SiglipModel`` from the Hugging Face cache (float32, eval mode),
    wrapped in :class:`HFCLIP`, with its tokenizer (:class:`HFTextTokenizer`) and preprocessing, as a
    :class:`~surgery_lib.model.loading.LoadedCLIP` named ``"hf:<repo_id>"``.

    Args:
        repo_id: ``"org/name"`` on the hub, or a local folder written by ``save_pretrained``.
        cache_dir: the hub cache (default ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``).
        reference_size: input size of ``reference_preprocess`` (default: the native size).
    Offline (``HF_HUB_OFFLINE`` set, or the hub unreachable) only the cache is read.

    Raises:
        WeightsNotAvailableError: files missing (named, with how to supply them).
        UnsupportedModelError: a model type other than ``clip`` and ``siglip``.
    """
    try:
        from transformers import AutoTokenizer, CLIPModel, SiglipModel
    except ImportError as err:
        raise ImportError(
            f"loading hf:{repo_id} needs transformers: pip install -r requirements-hf.txt "
            "(or the package's 'hf' extra)"
        ) from err

    from surgery_lib.model.loading import LoadedCLIP
    from surgery_lib.model.preprocess import reference_transform

    folder = _model_folder(repo_id, cache_dir)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if model_type not in classes:
        raise UnsupportedModelError(
            f"hf:{repo_id} is a {model_type!r} model; the supported transformers models are CLIPModel "
            f"('clip') and SiglipModel ('siglip')"
        )
    hf_model = classes[model_type].from_pretrained(folder, dtype=torch.float32)
    model = HFCLIP(hf_model.to(device).eval())
    tokenizer = HFTextTokenizer(AutoTokenizer.from_pretrained(folder), model.context_length)
    size = model.visual.image_size
    return LoadedCLIP(
        model=model,
        tokenizer=tokenizer,
        preprocess=hf_preprocess(folder, model.family, size),
        reference_preprocess=reference_transform(reference_size or size),
        name=f"hf:{repo_id}",
        pretrained=str(folder),
        image_size=size,
    )
