"""Gradient explainers: Grad-CAM, attention Grad-CAM and Chefer et al.'s relevancy, on vanilla CLIP.

Target, per image and text ``t``: ``y_t = logit_scale.exp() · cos(class feature, text_t)`` (CLIP's
``logits_per_image``), one backward pass per text (the images of a batch are independent, so one
pass serves the whole batch). The forward is the engine's (:func:`~surgery_lib.model.engine.dense_forward`
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
from surgery_lib.model.adapters import UnsupportedModelError, ViTAdapter, adapter_for
from surgery_lib.model.engine import dense_forward
from surgery_lib.model.preprocess import check_image_batch


@dataclass
class GradientMaps:
    """What a gradient explainer returns.

    Attributes:
        relevance: ``(B, T, h, w)`` relevance of each patch for each text (not upsampled, not
            normalised; ReLU'd, so whole maps can be 0).
        logits: ``(B, T)`` the targets ``logit_scale.exp() · cos(class feature, text)``.
        image_features: ``(B, D)`` the normalised class features (vanilla CLIP's image embedding).
        grid: token grid ``(h, w)``.
    """

    relevance: torch.Tensor
    logits: torch.Tensor
    image_features: torch.Tensor
    grid: tuple[int, int]


@dataclass
class _Forward:
    """One vanilla forward with the activations the explainers need (graph kept)."""

    features: torch.Tensor  # (B, D) class features, not normalised
    grid: tuple[int, int]
    probs: list[torch.Tensor]  # ViT: per block (B, heads, 1+N, 1+N)
    activation: torch.Tensor  # ViT: last block's ln_1 output (B, 1+N, C); RN: layer4 output (B, C, h, w)


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


def _forward(model: nn.Module, images: torch.Tensor, probs_from: int | None = None) -> _Forward:
    """Vanilla CLIP's forward on the engine, keeping the graph: the class feature, the attention
    probabilities of blocks ``probs_from ..`` (ViT; ``None``: none) and Grad-CAM's activation (a ViT's
    last ``ln_1`` output, a ModifiedResNet's ``layer4`` output)."""
    adapter = adapter_for(model)
    last = adapter.num_blocks - 1
    activation_point = f"blocks.{last}.attn_input" if isinstance(adapter, ViTAdapter) else "trunk"
    kept: dict[str, torch.Tensor] = {}
    probs: list[torch.Tensor] = []

    def hook(name: str, value: torch.Tensor) -> torch.Tensor | None:
        if name in ("embed", "trunk"):  # the start of the graph when the weights are frozen
            value = _as_leaf_if_needed(value)
        if name == activation_point:
            kept["activation"] = value
        elif name.endswith(".attn_probs"):
            probs.append(value)
        return value

    blocks = range(probs_from, last + 1) if probs_from is not None else ()
    vanilla = SurgeryConfig.off()
    tokens, grid = dense_forward(model, _normal(images), vanilla, hook=hook, attention_probs=blocks)
    return _Forward(tokens[:, 0], grid, probs, kept["activation"])


def _logits(model: nn.Module, features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    scale = getattr(model, "logit_scale", None)
    scale = torch.ones(()) if scale is None else scale.detach().exp()
    texts = F.normalize(_normal(text_features).to(features.device, features.dtype), dim=-1)
    return scale.to(features) * F.normalize(features, dim=-1) @ texts.t()


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
    adapter = adapter_for(model)
    with _untouched(model):
        images = images.to(_device(model))
        run = _forward(model, images)
        logits = _logits(model, run.features, text_features)
        h, w = run.grid
        act = run.activation.detach()
        maps = []
        for (grad,) in _per_text(logits, [run.activation]):
            if isinstance(adapter, ViTAdapter):
                alpha = grad[:, 1:].mean(dim=1)  # (B, C), over the patch tokens only
                cam = (act[:, 1:] * alpha[:, None]).sum(-1).reshape(-1, h, w)
            else:
                alpha = grad.mean(dim=(2, 3))  # (B, C)
                cam = (act * alpha[:, :, None, None]).sum(1)
            maps.append(cam.clamp(min=0))
    return _result(maps, logits, run)


def _result(maps: list[torch.Tensor], logits: torch.Tensor, run: _Forward) -> GradientMaps:
    return GradientMaps(
        relevance=torch.stack(maps, dim=1).detach(),
        logits=logits.detach(),
        image_features=F.normalize(run.features.detach(), dim=-1),
        grid=run.grid,
    )


def _vit_only(model: nn.Module, method: str) -> ViTAdapter:
    adapter = adapter_for(model)
    if not isinstance(adapter, ViTAdapter):
        tower = type(model.visual)
        raise UnsupportedModelError(
            f"gradient method {method!r} needs the attention of a ViT image tower; "
            f"{tower.__module__}.{tower.__qualname__} (ModifiedResNet) has none: use 'gradcam'"
        )
    return adapter


def attention_gradcam(model: nn.Module, images: torch.Tensor, text_features: torch.Tensor) -> GradientMaps:
    """Grad-CAM on the last block's attention probabilities (Chefer et al.'s ``generate_attn_gradcam``).

    ``A``: the last block's softmax probabilities ``(heads, 1+N, 1+N)``, ``G = ∂y_t/∂A``;
    ``w_h = mean_{i,j} G_h`` (over every entry, the class token's row and column included);
    ``map = ReLU(mean_h w_h A_h)[CLS, 1:]``. Whole maps are 0 when every ``w_h < 0``. ViT only.

    Returns:
        :class:`GradientMaps` with ``relevance`` ``(B, T, h, w)``.
    """
    _check(images, text_features)
    adapter = _vit_only(model, "attn_gradcam")
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
    adapter = _vit_only(model, "chefer")
    n = adapter.num_blocks
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not -n <= start_layer < n:
        raise ValueError(f"start_layer must be an int in [{-n}, {n}) for {n} blocks, got {start_layer!r}")
    start = start_layer % n
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


def gradient_maps(
    model: nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    method: GradientConfig,
) -> GradientMaps:
    """Run the gradient explainer ``method`` (a :class:`~surgery_lib.config.GradientConfig`; the
    registry's named ones are :data:`surgery_lib.methods.GRADIENT_METHODS`).

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
    return chefer_relevancy(model, images, text_features, start_layer=method.start_layer)
