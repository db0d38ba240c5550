"""The surgery configuration: one frozen dataclass, one field per modification of the paper.

Presets: :meth:`SurgeryConfig.off` (vanilla CLIP) and :meth:`SurgeryConfig.paper` (CLIP Surgery as
published: v-v attention on a dual path over the last 6 blocks, FFN skipped on the new path, feature
surgery on). Widgets are generated from the fields, so a new flag gets its control for free.

The other training-free dense methods (MaskCLIP, SCLIP, GEM, ClearCLIP, NACLIP) are presets of the same
config, and the gradient explainers (Grad-CAM, attention Grad-CAM, Chefer relevancy, LeGrad, Grad-ECLIP) are
:class:`GradientConfig` records: both are named in the method registry, :mod:`surgery_lib.methods`
(one file per method), whose ``resolve_method`` resolves any name.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np

AttentionKind = Literal["qk", "vv", "qq", "kk", "identity", "qq+kk", "gem"]
"""Which token pairs build the attention matrix of the new path.

``qk``: ordinary self-attention; ``vv``: the paper's value-value attention;
``qq`` / ``kk``: query-query and key-key attention (ClearCLIP, NACLIP);
``identity``: no attention mixing at all, each token keeps its own value. MaskCLIP's trick, but
only at ``depth=1``: MaskCLIP changes the last block alone (and its official code keeps that block's
residual and FFN). For MaskCLIP use the ``METHODS["maskclip"]`` preset (identity attention, single path,
depth 1, FFN kept); ``attention="identity"`` under the paper's defaults (dual path, 6 blocks, FFN
skipped) is an ablation, not MaskCLIP (at depth 1 it is the reference code's commented-out
``mask_clip`` option);
``qq+kk``: SCLIP's correlative self-attention, the SUM ``softmax(s·qqᵀ) + softmax(s·kkᵀ)`` (rows sum
to 2); ``gem``: GEM's self-self ensemble ``(A_q + A_k + A_v) / 3`` over L2-normalised projections,
refined by ``self_attn_iters`` clustering iterations, at the temperature ``attn_temperature``.
"""

AttnTemperature = Literal["auto", "head_dim", "adaptive"]
"""The multiplier of the attention logits: ``head_dim``: ``s = d_head^-0.5``; ``adaptive``: GEM's
``s · mean_i ||LN1(x)_i||`` (per image, over all tokens and the full width); ``auto``: ``adaptive`` for
``attention="gem"``, ``head_dim`` otherwise."""

PosEmbedInterp = Literal["bilinear", "bicubic", "bicubic-antialias", "bicubic-dino"]
"""How the spatial positional embedding is resampled for a token grid other than the native one:
``bilinear``: ``size=(h, w)``, ``align_corners=False`` (CLIP Surgery); ``bicubic``: ``size=(h, w)``,
``align_corners=False`` (MaskCLIP's mmseg ``resize_pos_embed``); ``bicubic-antialias``: the same with
``antialias=True`` (GEM, timm's ``resample_abs_pos_embed``); ``bicubic-dino``: DINO's
``scale_factor=((h + 0.1)/g_h, (w + 0.1)/g_w)`` (SCLIP, NACLIP, ClearCLIP). The class token's position
is never resampled; at the native grid every mode is the identity."""

RedundantFeatures = Literal["classes", "empty_prompt"]
"""What feature surgery subtracts: the (weighted) mean over the given classes, or the features of
the empty prompt ``""``."""

ATTENTION_KINDS: tuple[str, ...] = get_args(AttentionKind)
REDUNDANT_FEATURES: tuple[str, ...] = get_args(RedundantFeatures)
ATTN_TEMPERATURES: tuple[str, ...] = get_args(AttnTemperature)
POS_EMBED_INTERPS: tuple[str, ...] = get_args(PosEmbedInterp)

ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "attention",
    "dual_path",
    "skip_ffn",
    "depth",
    "keep_residual",
    "attn_temperature",
    "self_attn_iters",
    "spatial_prior_sigma",
    "pos_embed_interp",
    "forward",
)
"""The :class:`SurgeryConfig` fields that change the image tower's forward pass (the others act on the
features): image tokens computed under one config can be reused for another that agrees on these."""

INT_LIMITS: Mapping[str, int] = MappingProxyType(
    {"depth": 1000, "self_attn_iters": 100, "spatial_prior_sigma": 1000}
)
"""The largest value each int field of :class:`SurgeryConfig` accepts (``ValueError`` above it):
``depth`` 1000 (no image tower has more blocks; the model's own count is checked when it runs),
``self_attn_iters`` 100 (each GEM clustering iteration is one more attention per surgery block: GEM
uses 1-3; an unbounded count would never finish), ``spatial_prior_sigma`` 1000 patches (far flatter
than any grid: the prior is constant beyond the grid's size)."""


@dataclass(frozen=True)
class SurgeryConfig:
    """Which of CLIP Surgery's modifications are on.

    Fields (in the paper's words):
        attention: attention kind on the new path (``"vv"`` in the paper).
        dual_path: keep the original q-k path running beside the new one; the class token is read
            from the original path, so image-level predictions stay vanilla CLIP's. Without it the
            surgery blocks modify the single path itself.
        skip_ffn: the new path skips the FFN (MLP) of the surgery blocks.
        depth: number of surgery blocks, counted from the last block (paper: 6 for every ViT).
            ``0`` means no architecture surgery. On ModifiedResNet towers the only attention is the
            attention pooling: ``depth >= 1`` applies ``attention`` to it, for every token including
            the class token (as the reference code does); ``dual_path`` and ``skip_ffn`` do not apply.
        feature_surgery: subtract the redundant features from the image-text similarity.
        redundant_features: what feature surgery subtracts (``"classes"``: the weighted class mean,
            the paper's multi-class form; ``"empty_prompt"``: the features of the empty prompt).

    Fields for the other training-free dense methods (``/shared/METHODS.md`` §11; the defaults are
    CLIP Surgery's, so they change nothing unless set). They act on ViT towers only: a ModifiedResNet
    raises :class:`~surgery_lib.model.adapters.UnsupportedModelError` when one of them is not at its
    default (or for the kinds ``qq+kk`` and ``gem``) with ``depth >= 1``.

        keep_residual: the modified blocks add their attention output to the stream (``x + a``).
            False: the block output is the attention output ``a`` itself (ClearCLIP, NACLIP); on a
            dual path the new path then does not accumulate (it is the last block's ``a``).
        attn_temperature: multiplier of the attention logits (:data:`AttnTemperature`); ``"auto"``
            is GEM's adaptive temperature for ``attention="gem"`` and ``d_head^-0.5`` otherwise.
        self_attn_iters: GEM's clustering iterations ``u ← softmax(β ûûᵀ) û`` before the final
            attention (``attention="gem"`` only; GEM's code default 1; at most 100, :data:`INT_LIMITS`).
        spatial_prior_sigma: NACLIP's neighbourhood prior: ``σ > 0`` adds
            ``Ω_ij = exp(-‖p_i − p_j‖² / 2σ²)`` (patch units, untruncated, 0 on the class token's row
            and column, the same for every head) to the scaled logits before the softmax; 0: off.
            Single path only. An int (whole patches; NACLIP uses 5) so that the generated widgets can
            show it.
        pos_embed_interp: how the positional embedding is resampled for a non-native token grid
            (:data:`PosEmbedInterp`; each method's official code has its own).
        forward: the name of a method's own forward, registered by its file in
            :mod:`surgery_lib.methods` with :func:`~surgery_lib.model.engine.register_forward` (SC-CLIP,
            ResCLIP, CLIPtrase, ProxyCLIP: what the fields above cannot say); ``""``: the engine's. The
            other fields still say what that forward builds on (e.g. ResCLIP over NACLIP's preset) and
            feature surgery applies as to any dense method.
    """

    attention: AttentionKind = "vv"
    dual_path: bool = True
    skip_ffn: bool = True
    depth: int = 6
    feature_surgery: bool = True
    redundant_features: RedundantFeatures = "classes"
    keep_residual: bool = True
    attn_temperature: AttnTemperature = "auto"
    self_attn_iters: int = 0
    spatial_prior_sigma: int = 0
    pos_embed_interp: PosEmbedInterp = "bilinear"
    forward: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.forward, str) or self.forward != self.forward.strip() or " " in self.forward:
            raise ValueError(
                f"SurgeryConfig.forward must be a registered forward's name or '', got {self.forward!r}"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {self.attention!r}; expected one of {ATTENTION_KINDS}")
        if self.redundant_features not in REDUNDANT_FEATURES:
            raise ValueError(
                f"unknown redundant_features {self.redundant_features!r}; "
                f"expected one of {REDUNDANT_FEATURES}"
            )
        for name in ("dual_path", "skip_ffn", "feature_surgery", "keep_residual"):
            value = getattr(self, name)
            if isinstance(value, np.bool_):  # e.g. read from an array: stored as a plain bool
                object.__setattr__(self, name, bool(value))
            elif not isinstance(value, bool):
                raise TypeError(f"SurgeryConfig.{name} must be a bool, got {value!r}")
        for name, limit in INT_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"SurgeryConfig.{name} must be an int >= 0, got {value!r}")
            if value > limit:
                raise ValueError(f"SurgeryConfig.{name} must be an int in [0, {limit}], got {value!r}")
            object.__setattr__(self, name, int(value))  # NumPy integers (a sweep's values) become ints
        if self.attn_temperature not in ATTN_TEMPERATURES:
            raise ValueError(
                f"unknown attn_temperature {self.attn_temperature!r}; expected one of {ATTN_TEMPERATURES}"
            )
        if self.pos_embed_interp not in POS_EMBED_INTERPS:
            raise ValueError(
                f"unknown pos_embed_interp {self.pos_embed_interp!r}; expected one of {POS_EMBED_INTERPS}"
            )
        self._check_combination()

    def _check_combination(self) -> None:
        """Raise ``ValueError`` naming the conflict for combinations that mean nothing."""
        kind = self.attention
        if self.self_attn_iters and kind != "gem":
            raise ValueError(
                f"self_attn_iters={self.self_attn_iters} needs attention='gem' (GEM's clustering "
                f"iterations), not attention={kind!r}"
            )
        if self.attn_temperature == "adaptive" and kind != "gem":
            raise ValueError(
                f"attn_temperature='adaptive' (GEM's temperature for L2-normalised projections) needs "
                f"attention='gem', not attention={kind!r}"
            )
        if self.attn_temperature != "auto" and kind == "identity":
            raise ValueError(
                f"attn_temperature={self.attn_temperature!r} with attention='identity': the identity "
                "attention has no logits to scale"
            )
        if self.spatial_prior_sigma:
            if self.dual_path:
                raise ValueError(
                    "spatial_prior_sigma with dual_path=True: NACLIP's spatial prior is defined for a "
                    "single path (set dual_path=False)"
                )
            if kind in ("identity", "gem"):
                raise ValueError(
                    f"spatial_prior_sigma with attention={kind!r}: the spatial prior is added to "
                    "attention logits of the kinds qk, vv, qq, kk and qq+kk only"
                )

    @property
    def temperature(self) -> str:
        """The resolved :attr:`attn_temperature`: ``"head_dim"`` or ``"adaptive"``."""
        if self.attn_temperature == "auto":
            return "adaptive" if self.attention == "gem" else "head_dim"
        return self.attn_temperature

    @classmethod
    def off(cls) -> SurgeryConfig:
        """Vanilla CLIP: no architecture surgery, plain cosine similarity."""
        return cls(attention="qk", dual_path=False, skip_ffn=False, depth=0, feature_surgery=False)

    @classmethod
    def paper(cls) -> SurgeryConfig:
        """CLIP Surgery as published (arXiv 2304.05653)."""
        return cls()

    @property
    def architecture_surgery(self) -> bool:
        """True when the image tower runs differently from vanilla CLIP."""
        return self.depth > 0

    def replace(self, **changes: object) -> SurgeryConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)


GradientExplainer = Literal["gradcam", "attn_gradcam", "chefer", "legrad", "grad_eclip"]
"""The gradient explainers (``surgery_lib.model.gradients``)."""

GRADIENT_EXPLAINERS: tuple[str, ...] = get_args(GradientExplainer)

LAYERED_EXPLAINERS: Mapping[str, int] = MappingProxyType({"chefer": -1, "legrad": -2})
"""The explainers that read a range of blocks, with the default of their ``start_layer`` (their
official code's: Chefer's CLIP notebook ``start_layer=-1``, LeGrad's ``layer_index=-2``)."""


@dataclass(frozen=True)
class GradientConfig:
    """A gradient explainer and its options (not a modified forward: it back-propagates an image-text
    similarity through CLIP).

    Fields:
        explainer: ``gradcam`` (Grad-CAM on the last block's ``ln_1`` output, or ``layer4`` of a
            ModifiedResNet), ``attn_gradcam`` (Grad-CAM on the last attention probabilities),
            ``chefer`` (Chefer et al.'s relevancy), ``legrad`` (LeGrad: the gradient of each late
            block's pooled embedding with respect to that block's attention) or ``grad_eclip``
            (Grad-ECLIP: the gradient at the last attention output, weighted by values and q-k
            cosines).
        start_layer: ``chefer`` and ``legrad`` only (:data:`LAYERED_EXPLAINERS`): the first block used
            (negative counts from the end). ``None`` (the default) is the explainer's official default:
            ``-1`` for ``chefer`` (the CLIP notebook's: the last block only; ``0`` is every block, the
            paper's rule) and ``-2`` for ``legrad`` (its ``layer_index``: the last two blocks); the
            other explainers read no range of blocks and store ``-1``.
    """

    explainer: GradientExplainer
    start_layer: int | None = None

    def __post_init__(self) -> None:
        if self.explainer not in GRADIENT_EXPLAINERS:
            raise ValueError(
                f"unknown gradient explainer {self.explainer!r}; expected one of {GRADIENT_EXPLAINERS}"
            )
        if self.start_layer is None:
            object.__setattr__(self, "start_layer", LAYERED_EXPLAINERS.get(self.explainer, -1))
        if isinstance(self.start_layer, bool) or not isinstance(self.start_layer, int):
            raise TypeError(f"GradientConfig.start_layer must be an int, got {self.start_layer!r}")
        if self.start_layer != -1 and self.explainer not in LAYERED_EXPLAINERS:
            raise ValueError(
                f"start_layer={self.start_layer} applies to explainer="
                f"{' or '.join(repr(e) for e in LAYERED_EXPLAINERS)} only, not {self.explainer!r}"
            )

    def replace(self, **changes: object) -> GradientConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)
