"""Architecture surgery: reversible, exact, on any open_clip ViT or ModifiedResNet image tower.

The surgery is a thin wrapper: while it is applied, ``model.visual`` runs :func:`dense_forward`,
which calls open_clip's own submodules (embeddings, blocks, norms, projections) and returns every
token instead of the pooled feature. Nothing is written into the model: the wrapper is an instance
attribute that is removed on exit, also when a forward raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.model.adapters import Adapter, ResNetAdapter, ViTAdapter, adapter_for
from surgery_lib.model.attention import attend

_MARK = "_clip_surgery_handle"


class SurgeryError(RuntimeError):
    """Surgery used wrongly: applied twice, or a config the model cannot take."""


HookFn = Callable[[str, torch.Tensor], None]
"""A forward callback: called with a hook-point name and the tensor computed there."""

HOOK_POINTS = (
    "embed",
    "blocks.{i}.input",
    "blocks.{i}.attn_out",
    "blocks.{i}.ffn_out",
    "new_path.{i}.input",
    "new_path.{i}.attn_out",
    "new_path.{i}.ffn_out",
    "final",
)
"""The names a ViT forward reports to a hook, each ``(B, 1+N, C)``, in the order they are computed:

* ``embed``: the stream entering block 0 (patch + class embeddings, positions, ``ln_pre``);
* ``blocks.{i}.input`` / ``.attn_out`` / ``.ffn_out``: the original path's stream entering block ``i``
  and that block's attention and FFN residual updates (in a single-path surgery block the attention
  is the configured kind, and ``ffn_out`` is absent when the FFN is skipped);
* ``new_path.{i}.input`` / ``.attn_out`` / ``.ffn_out``: the same for the new path of a dual-path
  surgery block (``ffn_out`` only when the FFN is not skipped);
* ``final``: the stream before ``ln_post`` (class token from the original path, patch tokens from the
  new path when there is one).
"""


def _ignore(name: str, value: torch.Tensor) -> None:
    """The hook used when nobody records."""


@dataclass
class Trace:
    """A recorder of hook points (ViT towers), for the analysis notebooks; pass ``trace.record`` as hook.

    Attributes:
        grid: token grid ``(h, w)``.
        values: hook-point name -> tensor (see :data:`HOOK_POINTS`).
    """

    grid: tuple[int, int] = (0, 0)
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, name: str, value: torch.Tensor) -> None:
        self.values[name] = value

    def _blocks(self) -> range:
        return range(sum(1 for name in self.values if name.endswith(".input") and name.startswith("blocks.")))

    @property
    def embedding(self) -> torch.Tensor | None:
        """Residual stream entering block 0, ``(B, 1+N, C)``."""
        return self.values.get("embed")

    @property
    def final(self) -> torch.Tensor | None:
        """Residual stream before ``ln_post``, ``(B, 1+N, C)``."""
        return self.values.get("final")

    @property
    def block_inputs(self) -> list[torch.Tensor]:
        """Original-path stream entering each block, ``(B, 1+N, C)``."""
        return [self.values[f"blocks.{i}.input"] for i in self._blocks()]

    @property
    def new_path_inputs(self) -> dict[int, torch.Tensor]:
        """Block index -> new-path stream entering that surgery block."""
        return {
            i: self.values[f"new_path.{i}.input"]
            for i in self._blocks()
            if f"new_path.{i}.input" in self.values
        }

    def _update(self, i: int, part: str) -> torch.Tensor:
        """Block ``i``'s ``part`` update of the path that ends in the output tokens (class token: the
        original path; patch tokens: the new path in dual-path surgery blocks); zeros where skipped."""
        original = self.values.get(f"blocks.{i}.{part}")
        if original is None:
            original = torch.zeros_like(self.values[f"blocks.{i}.input"])
        if f"new_path.{i}.input" not in self.values:
            return original
        new = self.values.get(f"new_path.{i}.{part}")
        new = torch.zeros_like(original) if new is None else new
        return torch.cat([original[:, :1], new[:, 1:]], dim=1)

    @property
    def attention(self) -> list[torch.Tensor]:
        """Per block, the attention update of the path that ends in the output tokens, ``(B, 1+N, C)``."""
        return [self._update(i, "attn_out") for i in self._blocks()]

    @property
    def ffn(self) -> list[torch.Tensor]:
        """Same for the FFN update (zeros where the FFN is skipped)."""
        return [self._update(i, "ffn_out") for i in self._blocks()]


def max_depth(model: nn.Module) -> int:
    """The largest meaningful ``depth``: the number of blocks of a ViT, 1 for a ModifiedResNet."""
    adapter = adapter_for(model)
    return adapter.num_blocks if isinstance(adapter, ViTAdapter) else 1


def _check_depth(adapter: Adapter, config: SurgeryConfig) -> None:
    if isinstance(adapter, ViTAdapter) and config.depth > adapter.num_blocks:
        raise SurgeryError(
            f"SurgeryConfig.depth={config.depth} but the image tower has {adapter.num_blocks} blocks"
        )


def _vit_forward(
    adapter: ViTAdapter, images: torch.Tensor, config: SurgeryConfig, hook: HookFn | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All output tokens of a ViT under ``config``, reporting :data:`HOOK_POINTS` to ``hook``.

    Args:
        images: ``(B, 3, H, W)``.
    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (not normalised), grid ``(h, w)``.
    """
    recording = hook is not None
    emit = hook or _ignore
    x, grid = adapter.embed(images)
    emit("embed", x)
    n_blocks = adapter.num_blocks
    start = n_blocks - config.depth
    y: torch.Tensor | None = None
    for i in range(n_blocks):
        emit(f"blocks.{i}.input", x)
        if i < start and not recording:
            x = adapter.run_block(i, x)  # open_clip's own block: the fast path
            continue
        q, k, v = adapter.qkv(i, adapter.ln_1(i, x))
        if i < start:
            a = adapter.attention_residual(i, attend("qk", q, k, v))
            f = adapter.ffn_residual(i, x + a)
            emit(f"blocks.{i}.attn_out", a)
            emit(f"blocks.{i}.ffn_out", f)
            x = x + a + f
            continue
        new_attn = adapter.attention_residual(i, attend(config.attention, q, k, v))
        if not config.dual_path:
            emit(f"blocks.{i}.attn_out", new_attn)
            x = x + new_attn
            if not config.skip_ffn:
                f = adapter.ffn_residual(i, x)
                emit(f"blocks.{i}.ffn_out", f)
                x = x + f
            continue
        y = x if y is None else y
        emit(f"new_path.{i}.input", y)
        emit(f"new_path.{i}.attn_out", new_attn)
        y = y + new_attn
        if not config.skip_ffn:
            new_ffn = adapter.ffn_residual(i, y)
            emit(f"new_path.{i}.ffn_out", new_ffn)
            y = y + new_ffn
        # Original path. In the last block only its class token is read, so only that query runs.
        last = i == n_blocks - 1 and not recording
        q_used, x_used = (q[:, :, :1], x[:, :1]) if last else (q, x)
        orig_attn = adapter.attention_residual(i, attend("qk", q_used, k, v))
        emit(f"blocks.{i}.attn_out", orig_attn)
        x = x_used + orig_attn
        orig_ffn = adapter.ffn_residual(i, x)
        emit(f"blocks.{i}.ffn_out", orig_ffn)
        x = x + orig_ffn
    if y is not None:
        x = torch.cat([x[:, :1], y[:, 1:]], dim=1)
    emit("final", x)
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
    model: nn.Module,
    images: torch.Tensor,
    config: SurgeryConfig,
    trace: Trace | None = None,
    hook: HookFn | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Every output token of ``model``'s image tower under ``config``, without applying a wrapper.

    Args:
        images: preprocessed ``(B, 3, H, W)`` float tensor.
        trace: optional :class:`Trace` filled in for ViT towers (a recorder on ``hook``).
        hook: optional callback ``hook(name, tensor)`` for every :data:`HOOK_POINTS` name (ViT towers).
    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (class token first; not normalised) and the grid ``(h, w)``.
    """
    adapter = adapter_for(model)
    _check_depth(adapter, config)
    if isinstance(adapter, ViTAdapter):
        if trace is not None:
            record, user = trace.record, hook
            hook = record if user is None else (lambda name, value: (record(name, value), user(name, value)))
        tokens, grid = _vit_forward(adapter, images, config, hook)
        if trace is not None:
            trace.grid = grid
        return tokens, grid
    if trace is not None or hook is not None:
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
