"""Architecture surgery: reversible, exact, on any open_clip ViT or ModifiedResNet image tower.

The surgery is a thin wrapper: while it is applied, ``model.visual`` runs the forward engine's
:func:`~surgery_lib.model.engine.dense_forward`, which calls open_clip's own submodules (embeddings,
blocks, norms, projections) and returns every token instead of the pooled feature. Nothing is written
into the model: the wrapper is an instance attribute that is removed on exit, also when a forward
raises. It acts in the applying thread only, and copies or pickles of the model taken while it is
applied do not carry it.
"""

from __future__ import annotations

import functools
import threading

import torch
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.model.adapters import adapter_for
from surgery_lib.model.engine import (
    HOOK_POINTS,
    HookFn,
    SurgeryError,
    Trace,
    check_config,
    dense_forward,
    max_depth,
)

_MARK = "_clip_surgery_handle"
_OVERRIDES = ("forward", "__getstate__", _MARK)
"""The instance attributes a :class:`SurgeryHandle` sets on ``model.visual`` while applied."""


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
        check_config(adapter_for(model), config)
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


__all__ = [
    "HOOK_POINTS",
    "HookFn",
    "SurgeryError",
    "SurgeryHandle",
    "Trace",
    "apply_surgery",
    "dense_forward",
    "is_surgery_applied",
    "max_depth",
]
