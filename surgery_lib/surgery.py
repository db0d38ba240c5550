"""Architecture surgery: reversible, exact, on any open_clip ViT or ModifiedResNet image tower.

The surgery is a thin wrapper: while it is applied, ``model.visual`` runs :func:`dense_forward`,
which calls open_clip's own submodules (embeddings, blocks, norms, projections) and returns every
token instead of the pooled feature. Nothing is written into the model: the wrapper is an instance
attribute that is removed on exit, also when a forward raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import Adapter, ResNetAdapter, ViTAdapter, adapter_for
from .attention import attend
from .config import SurgeryConfig

_MARK = "_clip_surgery_handle"


class SurgeryError(RuntimeError):
    """Surgery used wrongly: applied twice, or a config the model cannot take."""


@dataclass
class Trace:
    """What a traced forward records (ViT towers), for the analysis notebooks.

    Attributes:
        grid: token grid ``(h, w)``.
        embedding: residual stream entering block 0, ``(B, 1+N, C)``.
        block_inputs: residual stream entering each block on the original path, ``(B, 1+N, C)``.
        new_path_inputs: block index -> new-path stream entering that surgery block.
        attention: per block, the attention update of the path that ends in the output tokens
            (class token: original path; patch tokens: new path in surgery blocks), ``(B, 1+N, C)``.
        ffn: same for the FFN update (zeros where the FFN is skipped).
        final: residual stream before ``ln_post``, ``(B, 1+N, C)``.
    """

    grid: tuple[int, int] = (0, 0)
    embedding: torch.Tensor | None = None
    block_inputs: list[torch.Tensor] = field(default_factory=list)
    new_path_inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    attention: list[torch.Tensor] = field(default_factory=list)
    ffn: list[torch.Tensor] = field(default_factory=list)
    final: torch.Tensor | None = None


def _check_depth(adapter: Adapter, config: SurgeryConfig) -> None:
    if isinstance(adapter, ViTAdapter) and config.depth > adapter.num_blocks:
        raise SurgeryError(
            f"SurgeryConfig.depth={config.depth} but the image tower has {adapter.num_blocks} blocks"
        )


def _vit_forward(
    adapter: ViTAdapter, images: torch.Tensor, config: SurgeryConfig, trace: Trace | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All output tokens of a ViT under ``config``.

    Args:
        images: ``(B, 3, H, W)``.
    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (not normalised), grid ``(h, w)``.
    """
    x, grid = adapter.embed(images)
    n_blocks = adapter.num_blocks
    start = n_blocks - config.depth
    y: torch.Tensor | None = None
    if trace is not None:
        trace.grid, trace.embedding = grid, x
    for i in range(n_blocks):
        if trace is not None:
            trace.block_inputs.append(x)
        if i < start:
            if trace is None:
                x = adapter.run_block(i, x)
                continue
            a = adapter.attention_residual(i, attend("qk", *adapter.qkv(i, adapter.ln_1(i, x))))
            f = adapter.ffn_residual(i, x + a)
            trace.attention.append(a)
            trace.ffn.append(f)
            x = x + a + f
            continue
        q, k, v = adapter.qkv(i, adapter.ln_1(i, x))
        new_attn = adapter.attention_residual(i, attend(config.attention, q, k, v))
        if not config.dual_path:
            x = x + new_attn
            f = None if config.skip_ffn else adapter.ffn_residual(i, x)
            x = x if f is None else x + f
            if trace is not None:
                trace.attention.append(new_attn)
                trace.ffn.append(torch.zeros_like(x) if f is None else f)
            continue
        if y is None:
            y = x
        if trace is not None:
            trace.new_path_inputs[i] = y
        y = y + new_attn
        new_ffn = None if config.skip_ffn else adapter.ffn_residual(i, y)
        y = y if new_ffn is None else y + new_ffn
        # Original path. In the last block only its class token is read, so only that query runs.
        last = i == n_blocks - 1 and trace is None
        q_used = q[:, :, :1] if last else q
        x_used = x[:, :1] if last else x
        orig_attn = adapter.attention_residual(i, attend("qk", q_used, k, v))
        x = x_used + orig_attn
        orig_ffn = adapter.ffn_residual(i, x)
        x = x + orig_ffn
        if trace is not None:
            trace.attention.append(torch.cat([orig_attn[:, :1], new_attn[:, 1:]], dim=1))
            new_ffn = torch.zeros_like(y) if new_ffn is None else new_ffn
            trace.ffn.append(torch.cat([orig_ffn[:, :1], new_ffn[:, 1:]], dim=1))
    if y is not None:
        x = torch.cat([x[:, :1], y[:, 1:]], dim=1)
    if trace is not None:
        trace.final = x
    return adapter.project(x), grid


def _resnet_forward(
    adapter: ResNetAdapter, images: torch.Tensor, config: SurgeryConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All output tokens of a ModifiedResNet: the attention pool with every token as a query.

    ``depth == 0`` gives raw CLIP's q-k pooling; otherwise ``config.attention`` is used for every
    token, class token included (the reference implementation's behaviour).

    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (not normalised), grid ``(h, w)``.
    """
    tokens, grid = adapter.pool_tokens(adapter.trunk(images))
    kind = config.attention if config.depth > 0 else "qk"
    return adapter.output(attend(kind, *adapter.qkv(0, tokens))), grid


def dense_forward(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig, trace: Trace | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Every output token of ``model``'s image tower under ``config``, without applying a wrapper.

    Args:
        images: preprocessed ``(B, 3, H, W)`` float tensor.
        trace: optional :class:`Trace` filled in for ViT towers.
    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (class token first; not normalised) and the grid ``(h, w)``.
    """
    adapter = adapter_for(model)
    _check_depth(adapter, config)
    if isinstance(adapter, ViTAdapter):
        return _vit_forward(adapter, images, config, trace)
    if trace is not None:
        raise SurgeryError("tracing the residual stream needs a ViT tower; ModifiedResNet has none")
    return _resnet_forward(adapter, images, config)


class SurgeryHandle:
    """Architecture surgery applied to one model; undo with :meth:`remove` or by leaving the ``with``.

    While applied, ``model.visual(images)`` returns all projected tokens ``(B, 1 + N, D)`` under the
    config (so ``model.encode_image(images, normalize=True)`` returns normalised tokens). The model's
    parameters, buffers and state dict are never touched; modules in training mode run in eval mode
    while applied and are switched back on removal.
    """

    def __init__(self, model: nn.Module, config: SurgeryConfig) -> None:
        adapter = adapter_for(model)
        _check_depth(adapter, config)
        visual = model.visual
        if getattr(visual, _MARK, None) is not None:
            raise SurgeryError("surgery is already applied to this model; remove it before applying again")
        self.model, self.config = model, config
        self._visual = visual
        self._training = {m: m.training for m in model.modules()}

        def forward(images: torch.Tensor) -> torch.Tensor:
            return dense_forward(model, images, config)[0]

        model.eval()
        object.__setattr__(visual, _MARK, self)
        object.__setattr__(visual, "forward", forward)
        self._applied = True

    @property
    def applied(self) -> bool:
        return self._applied

    def remove(self) -> None:
        """Undo the surgery (idempotent)."""
        if not self._applied:
            return
        self._visual.__dict__.pop("forward", None)
        self._visual.__dict__.pop(_MARK, None)
        for module, training in self._training.items():
            module.training = training
        self._applied = False

    def __enter__(self) -> SurgeryHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_surgery(model: nn.Module, config: SurgeryConfig | None = None) -> SurgeryHandle:
    """Apply architecture surgery to ``model`` (paper preset by default).

    Use as a context manager (``with apply_surgery(model): ...``) or keep the handle and call
    ``handle.remove()``. Applying twice to the same model raises :class:`SurgeryError`.
    """
    return SurgeryHandle(model, config or SurgeryConfig.paper())


def is_surgery_applied(model: nn.Module) -> bool:
    """Whether a :class:`SurgeryHandle` is currently applied to ``model``."""
    return getattr(getattr(model, "visual", None), _MARK, None) is not None
