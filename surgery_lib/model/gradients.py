"""Gradient explainers: Grad-CAM, attention Grad-CAM, Chefer et al.'s relevancy, LeGrad and Grad-ECLIP,
on vanilla CLIP.

Target, per image and text ``t``: ``y_t = logit_scale.exp() · cos(class feature, text_t)`` (CLIP's
``logits_per_image``) for Grad-CAM, attention Grad-CAM and Chefer; LeGrad and Grad-ECLIP differentiate
their own targets (see each). One backward pass per text and target (the images of a batch are
independent, so one pass serves the whole batch: every explainer gives, per image, what its official
code gives on that image alone). The forward is the engine's (:func:`~surgery_lib.model.engine.dense_forward`
under ``SurgeryConfig.off()``): its hook points give the activations, and the blocks asked for build
their attention probabilities explicitly (``softmax(s·q kᵀ)`` per head) and compute their output from
them, so the gradient with respect to the reported probabilities is the attention's gradient.

The model is left as it was: gradients are taken with :func:`torch.autograd.grad` with respect to
activations only (no ``.grad`` on any parameter), no module hook is registered, ``requires_grad`` is never
changed, and modules in training mode run in eval mode and are switched back afterwards, also when
a forward raises. The functions run under :func:`torch.enable_grad`, also when the caller is in
``torch.no_grad()`` or ``torch.inference_mode()`` (inference mode is switched off inside them and
input tensors made under it are copied); a model whose weights were themselves created under
``torch.inference_mode()`` cannot be differentiated and is refused with a ``RuntimeError`` saying so.

Relevance maps are returned on the token grid, before any upsampling or min-max normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.model.adapters import Adapter, ResNetAdapter, UnsupportedModelError, ViTAdapter, adapter_for
from surgery_lib.model.engine import dense_forward
from surgery_lib.model.preprocess import check_image_batch
from surgery_lib.model.timm_towers import SigLIPAdapter

LEGRAD_EMPTY_PROMPT = "a photo of a"
"""The prompt whose (normalised) text embedding LeGrad's SigLIP correction uses (``_init_empty_embedding``,
tokenised with SigLIP's tokenizer)."""


@dataclass
class GradientMaps:
    """What a gradient explainer returns.

    Attributes:
        relevance: ``(B, T, h, w)`` relevance of each patch for each text (not upsampled, not
            normalised; ReLU'd, so whole maps can be 0).
        logits: ``(B, T)`` the targets ``logit_scale.exp() · cos(class feature, text)``.
        image_features: ``(B, D)`` the normalised class features (vanilla CLIP's image embedding).
        grid: token grid ``(h, w)``.
        final: ``(B, T, h·p_h, w·p_w)`` the method's official output map where it defines one (LeGrad:
            the relevance upsampled ×patch size, bilinearly, and min-max normalised per map), else
            ``None``.
        target: ``(B, T)`` the value differentiated, where it is not ``logits`` and is one per image
            and text (Grad-ECLIP: the cosine of its one-head forward), else ``None``.
    """

    relevance: torch.Tensor
    logits: torch.Tensor
    image_features: torch.Tensor
    grid: tuple[int, int]
    final: torch.Tensor | None = None
    target: torch.Tensor | None = None


@dataclass
class _Forward:
    """One vanilla forward with the activations the explainers need (graph kept)."""

    features: torch.Tensor  # (B, D) class features, not normalised
    grid: tuple[int, int]
    probs: list[torch.Tensor]  # ViT: per block (B, heads, 1+N, 1+N)
    activation: torch.Tensor  # ViT: last block's ln_1 output (B, 1+N, C); RN: layer4 output (B, C, h, w)
    kept: dict[str, torch.Tensor]  # the hook points asked for by name


def _check_autograd(model: nn.Module) -> None:
    """Refuse, naming the cause, a model whose weights autograd cannot use: parameters or buffers
    created under ``torch.inference_mode()`` (inference tensors) can never be saved for backward."""
    frozen = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_inference()]
    if frozen:
        raise RuntimeError(
            f"gradient methods need autograd, but the model's weights ({frozen[0]}"
            f"{f' and {len(frozen) - 1} more' if len(frozen) > 1 else ''}) were created under "
            "torch.inference_mode(), whose tensors can never take part in a backward pass: load or build "
            "the model outside torch.inference_mode() (torch.no_grad() is fine), or use a dense method"
        )


def _normal(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it when it is an inference tensor (made under ``torch.inference_mode()``),
    which autograd cannot save for backward."""
    return t.clone() if t.is_inference() else t


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients on for the block (also inside ``torch.no_grad()`` or
    ``torch.inference_mode()``); training flags restored afterwards, also on errors."""
    _check_autograd(model)
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, flag in training.items():
            module.training = flag


def _as_leaf_if_needed(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is on an autograd graph; otherwise (frozen parameters) a leaf that
    requires grad, so that every later activation does."""
    return t if t.requires_grad else t.detach().requires_grad_(True)


def _forward(
    model: nn.Module,
    images: torch.Tensor,
    probs_from: int | None = None,
    keep: tuple[str, ...] = (),
    pos_embed_interp: str = "bilinear",
) -> _Forward:
    """Vanilla CLIP's forward on the engine, keeping the graph: the class feature, the attention
    probabilities of blocks ``probs_from ..`` (ViT; ``None``: none), Grad-CAM's activation (a ViT's
    last ``ln_1`` output, a ModifiedResNet's ``layer4`` output) and the hook points named in ``keep``;
    the positional embedding is resampled as ``pos_embed_interp`` says at a non-native grid."""
    adapter = adapter_for(model)
    last = adapter.num_blocks - 1
    activation_point = f"blocks.{last}.attn_input" if adapter.kind == "vit" else "trunk"
    kept: dict[str, torch.Tensor] = {}
    probs: list[torch.Tensor] = []

    def hook(name: str, value: torch.Tensor) -> torch.Tensor | None:
        if name in ("embed", "trunk"):  # the start of the graph when the weights are frozen
            value = _as_leaf_if_needed(value)
        if name == activation_point:
            kept["activation"] = value
        elif name.endswith(".attn_probs"):
            probs.append(value)
        if name in keep:
            kept[name] = value
        return value

    blocks = range(probs_from, last + 1) if probs_from is not None else ()
    vanilla = SurgeryConfig.off().replace(pos_embed_interp=pos_embed_interp)
    tokens, grid = dense_forward(model, _normal(images), vanilla, hook=hook, attention_probs=blocks)
    return _Forward(tokens[:, 0], grid, probs, kept["activation"], kept)


def _texts(text_features: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The text features ``(T, D)``, normalised, on ``like``'s device and dtype."""
    return F.normalize(_normal(text_features).to(like.device, like.dtype), dim=-1)


def _logits(model: nn.Module, features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """The model's logits ``logit_scale.exp() · cos`` (CLIP's ``logits_per_image``), plus ``logit_bias``
    where the model has one (SigLIP: its sigmoid reads these logits)."""
    scale = getattr(model, "logit_scale", None)
    scale = torch.ones(()) if scale is None else scale.detach().exp()
    logits = scale.to(features) * F.normalize(features, dim=-1) @ _texts(text_features, features).t()
    bias = getattr(model, "logit_bias", None)
    return logits if not isinstance(bias, torch.Tensor) else logits + bias.detach().to(logits)


def _check(images: torch.Tensor, text_features: torch.Tensor) -> None:
    check_image_batch(images)
    if text_features.ndim != 2 or text_features.shape[0] == 0:
        raise ValueError(f"text features must be (T, D) with T >= 1, got shape {tuple(text_features.shape)}")


def _per_text(logits: torch.Tensor, inputs: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, ...]]:
    """Gradients of ``logits[:, t]`` (summed over the independent images) with respect to ``inputs``,
    one backward pass per text ``t``."""
    n_texts = logits.shape[1]
    for t in range(n_texts):
        yield torch.autograd.grad(logits[:, t].sum(), inputs, retain_graph=t < n_texts - 1)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def gradcam(model: nn.Module, images: torch.Tensor, text_features: torch.Tensor) -> GradientMaps:
    """Grad-CAM (Selvaraju et al., ICCV 2017) for each text, as pytorch-grad-cam computes it on CLIP.

    ViT: the activation ``A`` is the last block's ``ln_1`` output on the patch tokens (at the last
    block's *output* the patch tokens do not reach the class feature); the channel weights are the
    gradient averaged over the patch tokens only (the class token is dropped before the mean):
    ``map = ReLU(Σ_c α_c A_c)``. ModifiedResNet: ``A`` is the output of ``layer4`` (before the
    attention pool), ``α`` the gradient averaged over the spatial positions.

    Args:
        images: preprocessed ``(B, 3, H, W)``.
        text_features: ``(T, D)`` (normalised here).
    Returns:
        :class:`GradientMaps` with ``relevance`` ``(B, T, h, w)``.
    """
    _check(images, text_features)
    adapter = _tower(model, "gradcam")
    with _untouched(model):
        images = images.to(_device(model))
        run = _forward(model, images)
        logits = _logits(model, run.features, text_features)
        h, w = run.grid
        act = run.activation.detach()
        maps = []
        for (grad,) in _per_text(logits, [run.activation]):
            if adapter.kind == "vit":
                p = adapter.prefix  # the class token is dropped (a SigLIP stream has none)
                alpha = grad[:, p:].mean(dim=1)  # (B, C), over the patch tokens only
                cam = (act[:, p:] * alpha[:, None]).sum(-1).reshape(-1, h, w)
            else:
                alpha = grad.mean(dim=(2, 3))  # (B, C)
                cam = (act * alpha[:, :, None, None]).sum(1)
            maps.append(cam.clamp(min=0))
    return _result(maps, logits, run)


def _result(
    maps: list[torch.Tensor],
    logits: torch.Tensor,
    run: _Forward,
    final: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
) -> GradientMaps:
    return GradientMaps(
        relevance=torch.stack(maps, dim=1).detach(),
        logits=logits.detach(),
        image_features=F.normalize(run.features.detach(), dim=-1),
        grid=run.grid,
        final=None if final is None else final.detach(),
        target=None if target is None else target.detach(),
    )


def _start_block(start_layer: int, n: int) -> int:
    """The index of the first block of ``start_layer`` (negative counts from the end) among ``n``."""
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not -n <= start_layer < n:
        raise ValueError(f"start_layer must be an int in [{-n}, {n}) for {n} blocks, got {start_layer!r}")
    return start_layer % n


_READOUT_WORDS = {
    "learned": "ViT towers whose image embedding is the class token (open_clip's, EVA02, Hugging Face CLIP)",
    "avg": "ViT towers pooled by the mean patch token (CLIPA)",
    "pooled": "SigLIP-style towers (attention-pool head, no class token)",
    "mean": "ModifiedResNet towers",
}
"""How each kind of image embedding (:attr:`~surgery_lib.model.adapters.TowerInfo.class_token`) is named
in the refusals."""

DEFINED_ON: dict[str, tuple[str, ...]] = {
    "gradcam": ("learned", "avg", "pooled", "mean"),
    "attn_gradcam": ("learned",),
    "chefer": ("learned",),
    "legrad": ("learned", "pooled"),
    "grad_eclip": ("learned",),
}
"""The towers each explainer is defined on, by the kind of their image embedding: Grad-CAM needs an
activation and a target only; attention Grad-CAM, Chefer's relevancy and Grad-ECLIP read the class
token's row of the attention (a tower without one has no such row); LeGrad reads a mean-token readout
(class-token towers) or the attention pool's probabilities (SigLIP), as its official code does."""


def _tower(model: nn.Module, method: str) -> Adapter:
    """``model``'s tower adapter when ``method`` is defined on it (:data:`DEFINED_ON`), else
    :class:`UnsupportedModelError` naming the method and the tower."""
    adapter = adapter_for(model)
    kinds = DEFINED_ON[method]
    if adapter.info.class_token in kinds:
        return adapter
    if isinstance(adapter, ResNetAdapter):
        raise UnsupportedModelError(
            f"gradient method {method!r} needs the attention of a ViT image tower; "
            f"{adapter.info.name} (ModifiedResNet) has none: use 'gradcam'"
        )
    defined = "; ".join(_READOUT_WORDS[k] for k in kinds)
    raise UnsupportedModelError(
        f"gradient method {method!r} is defined on {defined} only, not on {adapter.info.name} "
        f"(image embedding: {adapter.info.class_token!r})"
    )


def attention_gradcam(model: nn.Module, images: torch.Tensor, text_features: torch.Tensor) -> GradientMaps:
    """Grad-CAM on the last block's attention probabilities (Chefer et al.'s ``generate_attn_gradcam``).

    ``A``: the last block's softmax probabilities ``(heads, 1+N, 1+N)``, ``G = ∂y_t/∂A``;
    ``w_h = mean_{i,j} G_h`` (over every entry, the class token's row and column included);
    ``map = ReLU(mean_h w_h A_h)[CLS, 1:]``. Whole maps are 0 when every ``w_h < 0``. ViT only.

    Returns:
        :class:`GradientMaps` with ``relevance`` ``(B, T, h, w)``.
    """
    _check(images, text_features)
    adapter = _tower(model, "attn_gradcam")
    with _untouched(model):
        run = _forward(model, images.to(_device(model)), probs_from=adapter.num_blocks - 1)
        logits = _logits(model, run.features, text_features)
        h, w = run.grid
        probs = run.probs[-1].detach()
        maps = []
        for (grad,) in _per_text(logits, run.probs[-1:]):
            weights = grad.mean(dim=(-1, -2), keepdim=True)  # (B, heads, 1, 1)
            cam = (probs * weights).mean(dim=1).clamp(min=0)  # (B, 1+N, 1+N)
            maps.append(cam[:, 0, 1:].reshape(-1, h, w))
    return _result(maps, logits, run)


def chefer_relevancy(
    model: nn.Module, images: torch.Tensor, text_features: torch.Tensor, start_layer: int = -1
) -> GradientMaps:
    """Chefer et al.'s relevancy (ICCV 2021, rules 5-7 for self-attention), image encoder.

    ``R = I``; for every block ``l`` from ``start_layer`` to the last:
    ``Ā_l = mean_h ReLU(∂y_t/∂A_l ⊙ A_l)``, ``R ← R + Ā_l R``; ``map = R[CLS, 1:]``.

    ``start_layer``: the first block used (negative counts from the end). The default ``-1``, the last
    block only, is the CLIP notebook's default (``CLIP_explainability.ipynb``, ``interpret``), which
    gives ``Ā_L[CLS, 1:]``; ``0`` uses every block, the paper's rule. ViT only.

    Returns:
        :class:`GradientMaps` with ``relevance`` ``(B, T, h, w)``.
    """
    _check(images, text_features)
    adapter = _tower(model, "chefer")
    start = _start_block(start_layer, adapter.num_blocks)
    with _untouched(model):
        run = _forward(model, images.to(_device(model)), probs_from=start)
        logits = _logits(model, run.features, text_features)
        h, w = run.grid
        probs = [p.detach() for p in run.probs]
        b, tokens = probs[0].shape[0], probs[0].shape[-1]
        eye = torch.eye(tokens, dtype=probs[0].dtype, device=probs[0].device).expand(b, tokens, tokens)
        maps = []
        for grads in _per_text(logits, run.probs):
            relevance = eye.clone()
            for a, g in zip(probs, grads, strict=True):
                cam = (g * a).clamp(min=0).mean(dim=1)  # (B, 1+N, 1+N)
                relevance = relevance + torch.bmm(cam, relevance)
            maps.append(relevance[:, 0, 1:].reshape(-1, h, w))
    return _result(maps, logits, run)


def upsampled_min_max(relevance: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """LeGrad's official output map (``compute_legrad_clip``) from its relevance on the token grid:
    bilinear upsampling by the patch size (``align_corners=False``), then min-max normalisation of
    each map over its pixels (a constant map, where the official code divides 0 by 0, gives 0).

    Args:
        relevance: ``(B, T, h, w)``.
        stride: the patch size ``(p_h, p_w)`` in pixels.
    Returns:
        ``(B, T, h·p_h, w·p_w)`` in ``[0, 1]``.
    """
    scale = tuple(float(s) for s in stride)
    return _min_max_maps(F.interpolate(relevance, scale_factor=scale, mode="bilinear", align_corners=False))


def legrad(
    model: nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    start_layer: int = -2,
    empty_text_feature: torch.Tensor | None = None,
) -> GradientMaps:
    """LeGrad (Bousselham et al., 2024; ``LeWrapper`` + ``compute_legrad_clip`` / ``_siglip``).

    For each block ``l`` from ``start_layer`` (the official ``layer_index``, default ``-2``: the last
    two blocks) to the last, ``x⁽ˡ⁾`` its output, and each text ``t``:

    * OpenAI-style ViT: the target is ``y_l = t · unit(ln_post(mean over all 1+N tokens of x⁽ˡ⁾) W_proj)``
      (the token mean, not the class token); ``m_l = mean over heads and over the 1+N query rows of
      ReLU(∂y_l/∂A_l)``, patch columns, where ``A_l`` is block ``l``'s softmax ``(heads, 1+N, 1+N)``.
      ``relevance = Σ_l m_l``; ``final`` = :func:`upsampled_min_max` of it (upsampling, then min-max).
    * SigLIP-style tower (no class token, attention-pool head): ``f_l = unit(pool(x⁽ˡ⁾))``, the pool on
      the raw block output (without the trunk's final norm); ``m_l(y) = mean over heads of
      ReLU(∂y/∂P_l)`` at the latent query, ``P_l`` the pool's probabilities ``(heads, 1, N)``.
      ``acc = Σ_l m_l(t · f_l)``; the correction ``acc_e = Σ_l m_l(f_l · e)`` with ``e`` the empty
      prompt's embedding (``empty_text_feature``, normalised here); ``relevance = acc`` with 0 where
      ``minmax(acc_e) > 0.8`` (per image); ``final`` = bilinear ×patch upsampling of
      ``minmax(relevance)`` (min-max first, then upsampling).

    The positional embedding is resampled at a non-native grid as the official code does (timm's
    ``resample_abs_pos_embed``: bicubic with antialiasing).

    Args:
        images: preprocessed ``(B, 3, H, W)``.
        text_features: ``(T, D)`` (normalised here).
        start_layer: the first block used (negative counts from the end).
        empty_text_feature: ``(D,)`` SigLIP only (required there): the text embedding of
            :data:`LEGRAD_EMPTY_PROMPT`.
    Returns:
        :class:`GradientMaps` with ``relevance`` ``(B, T, h, w)`` and ``final`` the official output
        ``(B, T, h·p_h, w·p_w)``; ``logits`` and ``image_features`` are the model's own.
    Raises:
        UnsupportedModelError: a ModifiedResNet or another timm tower (EVA02).
        ValueError: a SigLIP tower without ``empty_text_feature``, or a bad ``start_layer``.
    """
    _check(images, text_features)
    adapter = _tower(model, "legrad")
    siglip = adapter.info.class_token == "pooled"
    if siglip and (empty_text_feature is None or empty_text_feature.numel() != text_features.shape[-1]):
        raise ValueError(
            "LeGrad on a SigLIP tower needs empty_text_feature, the (D,) text embedding of "
            f"{LEGRAD_EMPTY_PROMPT!r} (its correction of the map); got "
            f"{None if empty_text_feature is None else tuple(empty_text_feature.shape)}"
        )
    n = adapter.num_blocks
    start = _start_block(start_layer, n)
    # the output of block i is the input of block i + 1, and "final" for the last block
    outputs = tuple(f"blocks.{i + 1}.input" if i < n - 1 else "final" for i in range(start, n))
    with _untouched(model):
        run = _forward(
            model,
            images.to(_device(model)),
            probs_from=None if siglip else start,
            keep=outputs,
            pos_embed_interp="bicubic-antialias",
        )
        logits = _logits(model, run.features, text_features)
        streams = [run.kept[name] for name in outputs]
        if siglip:
            maps = _legrad_siglip(
                adapter, streams, _texts(text_features, logits), empty_text_feature, run.grid
            )
            relevance = torch.stack(maps, dim=1).detach()
            final = F.interpolate(
                _min_max_maps(relevance), scale_factor=_scale(adapter), mode="bilinear", align_corners=False
            )
        else:
            maps = _legrad_clip(adapter, streams, run.probs, _texts(text_features, logits), run.grid)
            final = upsampled_min_max(torch.stack(maps, dim=1).detach(), adapter.patch_size)
    return _result(maps, logits, run, final=final)


def _legrad_clip(
    adapter: ViTAdapter,
    streams: list[torch.Tensor],
    probs: list[torch.Tensor],
    texts: torch.Tensor,
    grid: tuple[int, int],
) -> list[torch.Tensor]:
    """LeGrad's maps ``(B, h, w)`` per text on an OpenAI-style ViT: ``streams`` the block outputs
    ``(B, 1+N, C)``, ``probs`` the same blocks' probabilities ``(B, heads, 1+N, 1+N)``."""
    pooled = [  # (B, D) per block: the normalised embedding of the token mean
        F.normalize(adapter.project(x.mean(dim=1, keepdim=True))[:, 0], dim=-1) for x in streams
    ]
    maps = []
    for text in texts:
        total = torch.zeros(streams[0].shape[0], grid[0] * grid[1], dtype=texts.dtype, device=texts.device)
        for features, attention in zip(pooled, probs, strict=True):
            (grad,) = torch.autograd.grad((features @ text).sum(), [attention], retain_graph=True)
            total = total + grad.clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:]  # heads, then query rows
        maps.append(total.reshape(-1, *grid))
    return maps


def _legrad_siglip(
    adapter: SigLIPAdapter,
    streams: list[torch.Tensor],
    texts: torch.Tensor,
    empty: torch.Tensor,
    grid: tuple[int, int],
) -> list[torch.Tensor]:
    """LeGrad's corrected maps ``(B, h, w)`` per text on a SigLIP-style tower: ``streams`` the block
    outputs ``(B, N, C)``, ``empty`` the empty prompt's embedding ``(D,)``."""
    probs: list[torch.Tensor] = []  # per block, the pool's probabilities (B, heads, 1, N)

    def keep(name: str, value: torch.Tensor) -> None:
        if name == "pool.attn_probs":
            probs.append(value)

    pooled = [F.normalize(adapter.attention_pool(x, hook=keep), dim=-1) for x in streams]  # (B, D) each

    def relevance(direction: torch.Tensor) -> torch.Tensor:  # (B, N)
        total = 0
        for features, attention in zip(pooled, probs, strict=True):
            (grad,) = torch.autograd.grad((features @ direction).sum(), [attention], retain_graph=True)
            total = total + grad.clamp(min=0).mean(dim=1)[:, 0]  # heads, the latent query's row
        return total

    empty_map = relevance(F.normalize(empty.reshape(-1).to(texts), dim=-1))
    low = empty_map.amin(dim=-1, keepdim=True)
    # the official min-max as it is: a constant map gives 0/0 = NaN, which is not > 0.8 (nothing zeroed)
    drop = (empty_map - low) / (empty_map.amax(dim=-1, keepdim=True) - low) > 0.8
    return [relevance(text).masked_fill(drop, 0.0).reshape(-1, *grid) for text in texts]


def _scale(adapter: Adapter) -> tuple[float, float]:
    return tuple(float(p) for p in adapter.patch_size)  # type: ignore[return-value]


def _min_max_maps(maps: torch.Tensor) -> torch.Tensor:
    """``(B, T, h, w)`` min-max normalised per map (a constant map gives 0)."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(
        span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps)
    )


def _one_head(t: torch.Tensor) -> torch.Tensor:
    """Per-head ``(B, heads, N, d)`` -> one head over the full width, ``(B, N, heads · d)``."""
    return t.transpose(1, 2).flatten(2)


def _min_max(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, N)`` min-max normalised over ``N`` per row (a constant row gives ones)."""
    low = x.amin(dim=-1, keepdim=True)
    span = x.amax(dim=-1, keepdim=True) - low
    return torch.where(span > 0, (x - low) / span.clamp(min=torch.finfo(x.dtype).tiny), torch.ones_like(x))


def grad_eclip(model: nn.Module, images: torch.Tensor, text_features: torch.Tensor) -> GradientMaps:
    """Grad-ECLIP (Zhao et al., ICML 2024; ``grad_eclip_image.ipynb``) on a CLIP ViT.

    The official dense forward runs blocks ``0 .. L-2`` as CLIP does and the last block with **one
    head over the full width** ``C``: ``z = LN1(x)``; ``q, k, v = z W_in + b_in`` ``(1+N, C)``;
    ``O = softmax(q kᵀ / √C) v``; ``x' = x + O W_oᵀ + b_o``; ``x'' = x' + MLP(LN2(x'))``. Target: the
    cosine ``c_t = cos(ln_post(x''_CLS) W_proj, text_t)`` (no logit scale). With ``g = ∂c_t/∂O`` at the
    class token's row and ``w_i`` the min-max over patches of ``cos(q_CLS, k_i)``:
    ``relevance_i = ReLU(Σ_c g_c v_{i,c} · w_i)``. The positional embedding is resampled bicubically
    (``size=(h, w)``, no antialiasing) at a non-native grid, as the notebook does.

    Returns:
        :class:`GradientMaps` with ``relevance`` ``(B, T, h, w)`` and ``target`` the cosines ``(B, T)``;
        ``logits`` and ``image_features`` are CLIP's own (its heads), as for the other explainers.
    """
    _check(images, text_features)
    adapter = _tower(model, "grad_eclip")
    last = adapter.num_blocks - 1
    entry = f"blocks.{last}.input"
    with _untouched(model):
        run = _forward(model, images.to(_device(model)), keep=(entry,), pos_embed_interp="bicubic")
        logits = _logits(model, run.features, text_features)
        h, w = run.grid
        x = run.kept[entry]  # (B, 1+N, C) the stream entering the last block
        q, k, v = (_one_head(t) for t in adapter.qkv(last, adapter.ln_1(last, x)))
        attention = torch.softmax(q @ k.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1)  # (B, 1+N, 1+N)
        o = attention @ v  # (B, 1+N, C)
        x = x + adapter.attention_residual(last, o[:, None])
        x = x + adapter.ffn_residual(last, x)
        features = adapter.project(x[:, :1])[:, 0]  # (B, D)
        cosine = F.normalize(features, dim=-1) @ _texts(text_features, features).t()  # (B, T)
        weights = _min_max(F.cosine_similarity(q[:, :1], k[:, 1:], dim=-1))  # (B, N)
        values = v[:, 1:].detach()
        maps = []
        for (grad,) in _per_text(cosine, [o]):
            relevance = (grad[:, :1] * values).sum(dim=-1) * weights.detach()  # (B, N)
            maps.append(relevance.clamp(min=0).reshape(-1, h, w))
    return _result(maps, logits, run, target=cosine)


def gradient_maps(
    model: nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    method: GradientConfig,
    empty_text_feature: torch.Tensor | None = None,
) -> GradientMaps:
    """Run the gradient explainer ``method`` (a :class:`~surgery_lib.config.GradientConfig`; the
    registry's named ones are :data:`surgery_lib.methods.GRADIENT_METHODS`).

    ``empty_text_feature``: ``legrad`` on a SigLIP tower only (see :func:`legrad`).

    Raises:
        TypeError: ``method`` is not a :class:`~surgery_lib.config.GradientConfig`.
    """
    if not isinstance(method, GradientConfig):
        raise TypeError(
            f"expected a GradientConfig, got {method!r} "
            "(the named ones: surgery_lib.methods.GRADIENT_METHODS)"
        )
    if method.explainer == "gradcam":
        return gradcam(model, images, text_features)
    if method.explainer == "attn_gradcam":
        return attention_gradcam(model, images, text_features)
    if method.explainer == "legrad":
        return legrad(model, images, text_features, method.start_layer, empty_text_feature)
    if method.explainer == "grad_eclip":
        return grad_eclip(model, images, text_features)
    return chefer_relevancy(model, images, text_features, start_layer=method.start_layer)
