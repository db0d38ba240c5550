"""Architecture surgery: reversible, exact, on any open_clip ViT or ModifiedResNet image tower.

The surgery is a thin wrapper: while it is applied, ``model.visual`` runs :func:`dense_forward`,
which calls open_clip's own submodules (embeddings, blocks, norms, projections) and returns every
token instead of the pooled feature. Nothing is written into the model: the wrapper is an instance
attribute that is removed on exit, also when a forward raises. It acts in the applying thread only,
and copies or pickles of the model taken while it is applied do not carry it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from surgery_lib.config import METHODS, SurgeryConfig
from surgery_lib.model.adapters import (
    Adapter,
    ResNetAdapter,
    UnsupportedModelError,
    ViTAdapter,
    adapter_for,
)
from surgery_lib.model.attention import adaptive_temperature, attend, spatial_prior

_MARK = "_clip_surgery_handle"
_OVERRIDES = ("forward", "__getstate__", _MARK)
"""The instance attributes a :class:`SurgeryHandle` sets on ``model.visual`` while applied."""


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
  is the configured kind, and ``ffn_out`` is absent when the FFN is skipped; with
  ``keep_residual=False`` the attention output replaces the stream instead of adding to it);
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
    if isinstance(adapter, ResNetAdapter):
        _check_resnet(adapter, config)


_VIT_ONLY_DEFAULTS = {
    "keep_residual": True,
    "attn_temperature": "auto",
    "self_attn_iters": 0,
    "spatial_prior_sigma": 0,
    "pos_embed_interp": "bilinear",
}
"""The config fields that only ViT towers implement, at the values that leave a ModifiedResNet's
attention pool as CLIP Surgery defines it."""


def _check_resnet(adapter: ResNetAdapter, config: SurgeryConfig) -> None:
    """A ModifiedResNet runs CLIP Surgery's attention-pool variants only (raw, v-v and the other
    pairwise kinds): other methods raise :class:`UnsupportedModelError` naming the method and tower."""
    if config.depth == 0:
        return
    reasons = [f"attention={config.attention!r}"] if config.attention in ("qq+kk", "gem") else []
    reasons += [
        f"{name}={getattr(config, name)!r}"
        for name, default in _VIT_ONLY_DEFAULTS.items()
        if getattr(config, name) != default
    ]
    if not reasons:
        return
    names = [name for name, preset in METHODS.items() if preset == config]
    what = f"method {names[0]!r}" if names else "this SurgeryConfig"
    tower = f"{type(adapter.visual).__module__}.{type(adapter.visual).__qualname__}"
    raise UnsupportedModelError(
        f"{what} has no variant for the ModifiedResNet image tower ({tower}): "
        f"{', '.join(reasons)} is defined for ViT towers only"
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
    x, grid = adapter.embed(images, config.pos_embed_interp)
    emit("embed", x)
    n_blocks = adapter.num_blocks
    start = n_blocks - config.depth
    y: torch.Tensor | None = None
    prior = spatial_prior(grid, config.spatial_prior_sigma, x) if config.spatial_prior_sigma else None
    for i in range(n_blocks):
        emit(f"blocks.{i}.input", x)
        if i < start and not recording:
            x = adapter.run_block(i, x)  # open_clip's own block: the fast path
            continue
        z = adapter.ln_1(i, x)
        q, k, v = adapter.qkv(i, z)
        if i < start:
            a = adapter.attention_residual(i, attend("qk", q, k, v))
            f = adapter.ffn_residual(i, x + a)
            emit(f"blocks.{i}.attn_out", a)
            emit(f"blocks.{i}.ffn_out", f)
            x = x + a + f
            continue
        new_attn = adapter.attention_residual(i, _configured_attention(config, q, k, v, z, prior))
        if not config.dual_path:
            emit(f"blocks.{i}.attn_out", new_attn)
            x = x + new_attn if config.keep_residual else new_attn
            if not config.skip_ffn:
                f = adapter.ffn_residual(i, x)
                emit(f"blocks.{i}.ffn_out", f)
                x = x + f
            continue
        y = x if y is None else y
        emit(f"new_path.{i}.input", y)
        emit(f"new_path.{i}.attn_out", new_attn)
        y = y + new_attn if config.keep_residual else new_attn
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


def _configured_attention(
    config: SurgeryConfig,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    z: torch.Tensor,
    prior: torch.Tensor | None,
) -> torch.Tensor:
    """The attention output of a surgery block under ``config`` (``z``: the block's ``LN1`` input of
    the original path, for GEM's adaptive temperature)."""
    temperature = adaptive_temperature(z, q.shape[-1]) if config.temperature == "adaptive" else None
    return attend(
        config.attention, q, k, v, temperature=temperature, bias=prior, iters=config.self_attn_iters
    )


def _resnet_forward(
    adapter: ResNetAdapter, images: torch.Tensor, config: SurgeryConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All output tokens of a ModifiedResNet: the attention pool with every token as a query.

    ``depth == 0`` gives raw CLIP's q-k pooling; otherwise ``config.attention`` is used for every
    token, class token included (the reference implementation's behaviour).

    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (not normalised), grid ``(h, w)``.
    """
    tokens, grid = adapter.pool_tokens(adapter.trunk(images), config.pos_embed_interp)
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

    Rules:

    * Threads: the surgery is visible only in the thread that applied it (or re-applied it by entering
      a ``with`` block); other threads calling the model meanwhile get vanilla CLIP (the model is still
      in eval mode for them, and :func:`is_surgery_applied` says True in every thread).
    * Copies: ``copy.deepcopy(model)``, ``pickle`` and ``torch.save`` taken while applied see the model
      without the surgery: a copy is a vanilla CLIP (in eval mode) that runs its own modules.
    * Reuse: entering a removed handle again (``with handle: ...`` twice) re-applies it; entering a
      handle that is already inside a ``with`` block raises :class:`SurgeryError`.
    * An instance ``forward`` override the user set on ``model.visual`` before is kept: other threads
      call it while applied, and it is restored on removal.
    """

    def __init__(self, model: nn.Module, config: SurgeryConfig) -> None:
        adapter = adapter_for(model)
        _check_depth(adapter, config)
        self.model, self.config = model, config
        self._visual = model.visual
        self._applied = self._entered = False
        self._saved: dict[str, object] = {}
        self._training: dict[nn.Module, bool] = {}
        self.apply()

    @property
    def applied(self) -> bool:
        return self._applied

    def apply(self) -> None:
        """(Re-)apply the surgery in the calling thread (nothing to do when this handle is applied)."""
        if self._applied:
            return
        model, config, visual = self.model, self.config, self._visual
        if getattr(model, "visual", None) is not visual:
            raise SurgeryError("model.visual was replaced since this handle was made: make a new handle")
        if getattr(visual, _MARK, None) is not None:
            raise SurgeryError("surgery is already applied to this model; remove it before applying again")
        saved = {key: visual.__dict__[key] for key in _OVERRIDES if key in visual.__dict__}
        thread = threading.get_ident()
        user_forward = saved.get("forward")
        vanilla = user_forward if callable(user_forward) else functools.partial(type(visual).forward, visual)

        def forward(images: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            if threading.get_ident() != thread:  # another thread: what the model was before
                return vanilla(images, *args, **kwargs)
            return dense_forward(model, images, config)[0]

        def getstate() -> dict:
            # copies and pickles see the model without the surgery (the previous attributes restored)
            state = dict(type(visual).__getstate__(visual))
            for key in _OVERRIDES:
                state.pop(key, None)
            state.update(saved)
            return state

        self._saved, self._training = saved, {m: m.training for m in model.modules()}
        model.eval()
        object.__setattr__(visual, _MARK, self)
        object.__setattr__(visual, "__getstate__", getstate)
        object.__setattr__(visual, "forward", forward)
        self._applied = True

    def remove(self) -> None:
        """Undo the surgery (idempotent); a previous instance ``forward`` override comes back."""
        if not self._applied:
            return
        attributes = self._visual.__dict__
        for key in _OVERRIDES:
            attributes.pop(key, None)
        attributes.update(self._saved)
        for module, training in self._training.items():
            module.training = training
        self._saved, self._training = {}, {}
        self._applied = False

    def __enter__(self) -> SurgeryHandle:
        if self._entered:
            raise SurgeryError("this surgery handle is already in use by a `with` block")
        self.apply()
        self._entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._entered = False
        self.remove()


def apply_surgery(model: nn.Module, config: SurgeryConfig | None = None) -> SurgeryHandle:
    """Apply architecture surgery to ``model`` (paper preset by default).

    Use as a context manager (``with apply_surgery(model): ...``) or keep the handle and call
    ``handle.remove()``; a removed handle re-applies when entered again. Applying twice to the same
    model raises :class:`SurgeryError`. The surgery is visible in the applying thread only, and copies
    (``copy.deepcopy``, ``pickle``) taken while it is applied are vanilla models (see
    :class:`SurgeryHandle`).
    """
    return SurgeryHandle(model, config or SurgeryConfig.paper())


def is_surgery_applied(model: nn.Module) -> bool:
    """Whether a :class:`SurgeryHandle` is currently applied to ``model``."""
    return getattr(getattr(model, "visual", None), _MARK, None) is not None
