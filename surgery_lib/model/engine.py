"""The forward engine: the one forward pass of an image tower that every method runs on.

:func:`dense_forward` runs ``model.visual`` from open_clip's own submodules under a
:class:`~surgery_lib.config.SurgeryConfig` (vanilla CLIP for ``SurgeryConfig.off()``): the dual path,
the depth, the skipped FFN and each method's attention kind live here, and nowhere else. Dense methods
read its output tokens; gradient explainers (``surgery_lib.model.gradients``) and the analyses read
its named hook points — the streams, each block's attention and FFN updates and, on request, each
block's attention probabilities — and differentiate through them. Nothing is written into the model.

A hook is called as ``hook(name, value)`` at every hook point (:data:`HOOK_POINTS`, in the order they
are computed). It may return a tensor of the same shape, which the forward then uses instead of
``value`` (an activation patched, or made a leaf that requires grad); returning ``None`` keeps it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from surgery_lib.config import ATTENTION_KINDS, SurgeryConfig
from surgery_lib.model.adapters import Adapter, ResNetAdapter, UnsupportedModelError, adapter_for
from surgery_lib.model.attention import adaptive_temperature, attend, attention_weights, spatial_prior


class SurgeryError(RuntimeError):
    """Surgery used wrongly: applied twice, or a config the model cannot take."""


HookFn = Callable[[str, torch.Tensor], "torch.Tensor | None"]
"""A forward callback ``hook(name, value)``: returns ``None`` to keep ``value``, or a tensor of the same
shape to use instead."""

HOOK_POINTS = (
    "embed",
    "blocks.{i}.input",
    "blocks.{i}.attn_input",
    "blocks.{i}.attn_probs",
    "blocks.{i}.attn_out",
    "blocks.{i}.ffn_out",
    "new_path.{i}.input",
    "new_path.{i}.attn_probs",
    "new_path.{i}.attn_out",
    "new_path.{i}.ffn_out",
    "final",
    "trunk",
    "pool.input",
    "pool.attn_probs",
)
"""The names a forward reports to a hook, in the order they are computed.

ViT towers (streams ``(B, 1+N, C)``):

* ``embed``: the stream entering block 0 (patch + class embeddings, positions, ``ln_pre``);
* ``blocks.{i}.input``: the original path's stream entering block ``i``; ``blocks.{i}.attn_input``: its
  normalised input ``ln_1(x)``, from which q, k and v are computed;
* ``blocks.{i}.attn_probs``: ``(B, heads, 1+N, 1+N)`` the attention probabilities of block ``i``'s path
  (q-k, or the configured kind in a single-path surgery block), only for the blocks named in
  ``attention_probs``; the block's attention output is computed from this very tensor, so gradients
  with respect to it are the attention's gradients;
* ``blocks.{i}.attn_out`` / ``.ffn_out``: that block's attention and FFN residual updates (in a
  single-path surgery block the attention is the configured kind, and ``ffn_out`` is absent when the
  FFN is skipped; with ``keep_residual=False`` the attention output replaces the stream);
* ``new_path.{i}.input`` / ``.attn_probs`` / ``.attn_out`` / ``.ffn_out``: the same for the new path of a
  dual-path surgery block (``ffn_out`` only when the FFN is not skipped);
* ``final``: the stream before ``ln_post`` (class token from the original path, patch tokens from the
  new path when there is one).

ModifiedResNet towers: ``trunk`` ``(B, C, h, w)`` (the output of ``layer4``), ``pool.input``
``(B, 1+N, C)`` (the attention pool's tokens, mean token first), ``pool.attn_probs``
``(B, heads, 1+N, 1+N)`` (when ``attention_probs`` contains 0).
"""


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


def _keep(name: str, value: torch.Tensor) -> None:
    """The hook used when nobody records."""


def _emitter(hook: HookFn | None) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """``emit(name, value)``: calls the hook and returns the value the forward goes on with."""
    call = hook or _keep

    def emit(name: str, value: torch.Tensor) -> torch.Tensor:
        replaced = call(name, value)
        if replaced is None:
            return value
        if not isinstance(replaced, torch.Tensor) or replaced.shape != value.shape:
            raise SurgeryError(
                f"the hook returned {type(replaced).__name__} "
                f"{tuple(getattr(replaced, 'shape', ()))} at {name!r}, expected None or a tensor of shape "
                f"{tuple(value.shape)}"
            )
        return replaced

    return emit


def max_depth(model: nn.Module) -> int:
    """The largest meaningful ``depth``: the number of blocks of a ViT, 1 for a ModifiedResNet."""
    return adapter_for(model).num_blocks


VIT_ONLY_DEFAULTS = {
    "forward": "",
    "keep_residual": True,
    "attn_temperature": "auto",
    "self_attn_iters": 0,
    "spatial_prior_sigma": 0,
    "pos_embed_interp": "bilinear",
}
"""The config fields that only ViT towers implement, at the values that leave a ModifiedResNet's
attention pool as CLIP Surgery defines it."""

RESNET_ATTENTION_KINDS: tuple[str, ...] = ("qk", "vv", "qq", "kk", "identity")
"""The attention kinds a ModifiedResNet's attention pool runs (the pairwise kinds and identity)."""


def resnet_refusals(config: SurgeryConfig) -> list[str]:
    """Why a ModifiedResNet cannot run ``config`` (empty when it can): the attention kinds and
    ViT-only fields (:data:`VIT_ONLY_DEFAULTS`) it sets, as ``name=value`` strings."""
    if config.depth == 0:
        return []
    reasons = [] if config.attention in RESNET_ATTENTION_KINDS else [f"attention={config.attention!r}"]
    return reasons + [
        f"{name}={getattr(config, name)!r}"
        for name, default in VIT_ONLY_DEFAULTS.items()
        if getattr(config, name) != default
    ]


ForwardFn = Callable[[nn.Module, torch.Tensor, SurgeryConfig], tuple[torch.Tensor, tuple[int, int]]]
"""A method's own forward: ``fn(model, images, config) -> (tokens (B, 1 + h·w, D), grid)`` — the same
contract as :func:`dense_forward` (image embedding first, not normalised, the model untouched)."""

_FORWARDS: dict[str, ForwardFn] = {}
_NEED_TEXTS: set[str] = set()
_CLASS_TEXTS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "class_texts", default=None
)


def register_forward(name: str, fn: ForwardFn, needs_texts: bool = False) -> None:
    """Register a method's own forward under ``name`` (``SurgeryConfig(forward=name)`` runs it). A method
    file of :mod:`surgery_lib.methods` does this for a method whose forward the engine's fields cannot
    express; registering a name twice with another function is refused. ``needs_texts``: the forward reads
    the class text features (ResCLIP's semantic feedback), given with :func:`class_texts`."""
    if not name or not callable(fn):
        raise ValueError(f"register_forward needs a name and a function, got {name!r}, {fn!r}")
    if _FORWARDS.get(name, fn) is not fn:
        raise ValueError(f"a forward is already registered as {name!r}")
    _FORWARDS[name] = fn
    if needs_texts:
        _NEED_TEXTS.add(name)


def needs_class_texts(config: object) -> bool:
    """Whether ``config``'s forward reads the class text features (its tokens then depend on the labels)."""
    return getattr(config, "forward", "") in _NEED_TEXTS


@contextlib.contextmanager
def class_texts(texts: torch.Tensor | None) -> Iterator[None]:
    """Give the forwards run inside the ``with`` block the class text features ``(T, D)`` (unit rows, one
    per class name) — what a forward registered with ``needs_texts`` reads; ``None`` changes nothing.
    ``explain``, the evaluation and the explorers pass theirs."""
    if texts is None:
        yield
        return
    if not isinstance(texts, torch.Tensor) or texts.ndim != 2 or texts.shape[0] < 1:
        raise ValueError(f"class_texts needs text features (T, D), got {getattr(texts, 'shape', texts)!r}")
    token = _CLASS_TEXTS.set(texts)
    try:
        yield
    finally:
        _CLASS_TEXTS.reset(token)


def current_class_texts() -> torch.Tensor | None:
    """The class text features of the innermost :func:`class_texts` block, or ``None``."""
    return _CLASS_TEXTS.get()


_PRESET_NAMES: dict[SurgeryConfig, str] = {}


def name_preset(config: SurgeryConfig, name: str) -> None:
    """Name a method's preset, so that the engine's errors about it name the method (the method
    registry, :mod:`surgery_lib.methods`, names each of its presets)."""
    _PRESET_NAMES[config] = name


def check_config(adapter: Adapter, config: SurgeryConfig) -> None:
    """Raise when the tower cannot run ``config``: a depth beyond its blocks
    (:class:`SurgeryError`), or a ViT-only method on a ModifiedResNet (:class:`UnsupportedModelError`
    naming the method when ``config`` is a named preset)."""
    if adapter.kind == "vit" and config.depth > adapter.num_blocks:
        raise SurgeryError(
            f"SurgeryConfig.depth={config.depth} but the image tower has {adapter.num_blocks} blocks"
        )
    if isinstance(adapter, ResNetAdapter) and (reasons := resnet_refusals(config)):
        name = _PRESET_NAMES.get(config)
        what = f"method {name!r}" if name else "this SurgeryConfig"
        tower = f"{type(adapter.visual).__module__}.{type(adapter.visual).__qualname__}"
        raise UnsupportedModelError(
            f"{what} has no variant for the ModifiedResNet image tower ({tower}): "
            f"{', '.join(reasons)} is defined for ViT towers only"
        )


def _attention_options(
    config: SurgeryConfig, q: torch.Tensor, z: torch.Tensor, prior: torch.Tensor | None
) -> dict[str, object]:
    """The options of :func:`~surgery_lib.model.attention.attend` for a surgery block under ``config``
    (``z``: the block's ``LN1`` input of the original path, for GEM's adaptive temperature)."""
    temperature = adaptive_temperature(z, q.shape[-1]) if config.temperature == "adaptive" else None
    return {"temperature": temperature, "bias": prior, "iters": config.self_attn_iters}


def _attention(
    kind: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    options: dict[str, object],
    probs_name: str | None,
    emit: Callable[[str, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Per-head attention output ``(B, heads, N_q, d)``; with ``probs_name`` the probabilities are built
    explicitly, reported under that name and multiplied with ``v`` (so the output depends on them)."""
    if probs_name is None:
        return attend(kind, q, k, v, **options)
    probs = emit(probs_name, attention_weights(kind, q, k, v, **options))
    return probs @ v


def _block_kinds(
    config: SurgeryConfig, n_blocks: int, block_kinds: Sequence[str | None] | None
) -> list[str | None]:
    """The attention kind of each block: ``block_kinds`` when given, else ``None`` (vanilla) before the
    last ``config.depth`` blocks and ``config.attention`` in them."""
    if block_kinds is None:
        return [None] * (n_blocks - config.depth) + [config.attention] * config.depth
    kinds = list(block_kinds)
    if len(kinds) != n_blocks:
        raise SurgeryError(f"block_kinds needs one entry per block ({n_blocks}), got {len(kinds)}")
    bad = [k for k in kinds if k is not None and k not in ATTENTION_KINDS]
    if bad:
        raise SurgeryError(
            f"unknown attention kind {bad[0]!r} in block_kinds; expected one of {ATTENTION_KINDS}"
        )
    return kinds


def _vit_forward(
    adapter: Adapter,
    images: torch.Tensor,
    config: SurgeryConfig,
    hook: HookFn | None,
    probs_blocks: Collection[int],
    block_kinds: Sequence[str | None] | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All output tokens of a ViT under ``config``, reporting :data:`HOOK_POINTS` to ``hook``.

    The stream holds ``adapter.prefix`` prefix tokens (the class token; none on SigLIP) before the
    patch tokens; the output's token 0 is the image embedding either way (:meth:`output`).

    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (not normalised), grid ``(h, w)``.
    """
    recording = hook is not None
    p = adapter.prefix
    reads_class_token = p == 1 and adapter.info.class_token == "learned"
    emit = _emitter(hook)
    x, grid = adapter.embed(images, config.pos_embed_interp)
    x = emit("embed", x)
    n_blocks = adapter.num_blocks
    kinds = _block_kinds(config, n_blocks, block_kinds)
    start = next((i for i, kind in enumerate(kinds) if kind is not None), n_blocks)
    y: torch.Tensor | None = None
    prior = spatial_prior(grid, config.spatial_prior_sigma, x, p) if config.spatial_prior_sigma else None
    for i in range(n_blocks):
        x = emit(f"blocks.{i}.input", x)
        # a vanilla block: before the first surgery block, or a block left out on a single path
        vanilla = i < start or (kinds[i] is None and not config.dual_path)
        if vanilla and not recording:
            x = adapter.run_block(i, x)  # open_clip's own block: the fast path
            continue
        probs = i in probs_blocks
        z = emit(f"blocks.{i}.attn_input", adapter.ln_1(i, x))
        q, k, v = adapter.qkv(i, z)
        if vanilla:
            o = _attention("qk", q, k, v, {}, f"blocks.{i}.attn_probs" if probs else None, emit)
            a = emit(f"blocks.{i}.attn_out", adapter.attention_residual(i, o))
            f = emit(f"blocks.{i}.ffn_out", adapter.ffn_residual(i, x + a))
            x = x + a + f
            continue
        kind = kinds[i] or "qk"  # a dual path's block left out adds its q-k output to the new path
        options = _attention_options(config, q, z, prior)
        path = "new_path" if config.dual_path else "blocks"
        o = _attention(kind, q, k, v, options, f"{path}.{i}.attn_probs" if probs else None, emit)
        new_attn = adapter.attention_residual(i, o)
        if not config.dual_path:
            new_attn = emit(f"blocks.{i}.attn_out", new_attn)
            x = x + new_attn if config.keep_residual else new_attn
            if not config.skip_ffn:
                x = x + emit(f"blocks.{i}.ffn_out", adapter.ffn_residual(i, x))
            continue
        y = emit(f"new_path.{i}.input", x if y is None else y)
        new_attn = emit(f"new_path.{i}.attn_out", new_attn)
        y = y + new_attn if config.keep_residual else new_attn
        if not config.skip_ffn:
            y = y + emit(f"new_path.{i}.ffn_out", adapter.ffn_residual(i, y))
        # Original path. In the last block only its class token is read, so only that query runs
        # (a tower that pools its patch tokens reads every token of it).
        last = i == n_blocks - 1 and not recording and reads_class_token
        q_used, x_used = (q[:, :, :1], x[:, :1]) if last else (q, x)
        o = _attention("qk", q_used, k, v, {}, f"blocks.{i}.attn_probs" if probs else None, emit)
        x = x_used + emit(f"blocks.{i}.attn_out", adapter.attention_residual(i, o))
        x = x + emit(f"blocks.{i}.ffn_out", adapter.ffn_residual(i, x))
    original = x
    if y is not None:
        x = torch.cat([x[:, :p], y[:, p:]], dim=1)
    x = emit("final", x)
    return adapter.output(x, original), grid


def _resnet_forward(
    adapter: ResNetAdapter,
    images: torch.Tensor,
    config: SurgeryConfig,
    hook: HookFn | None,
    probs_blocks: Collection[int],
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All output tokens of a ModifiedResNet: the attention pool with every token as a query.

    ``depth == 0`` gives raw CLIP's q-k pooling; otherwise ``config.attention`` is used for every
    token, class token included (the reference implementation's behaviour).

    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (not normalised), grid ``(h, w)``.
    """
    emit = _emitter(hook)
    feats = emit("trunk", adapter.trunk(images))
    tokens, grid = adapter.pool_tokens(feats, config.pos_embed_interp)
    tokens = emit("pool.input", tokens)
    kind = config.attention if config.depth > 0 else "qk"
    q, k, v = adapter.qkv(0, tokens)
    o = _attention(kind, q, k, v, {}, "pool.attn_probs" if 0 in probs_blocks else None, emit)
    return adapter.output(o), grid


def _own_forward(
    model: nn.Module,
    images: torch.Tensor,
    config: SurgeryConfig,
    trace: Trace | None,
    hook: HookFn | None,
    attention_probs: Collection[int],
    block_kinds: Sequence[str | None] | None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Run the method forward ``config.forward`` names (see :func:`register_forward`)."""
    fn = _FORWARDS.get(config.forward)
    if fn is None:
        known = ", ".join(sorted(_FORWARDS)) or "none"
        raise SurgeryError(
            f"no forward is registered as {config.forward!r} (registered: {known}; the method files of "
            "surgery_lib.methods register theirs when imported)"
        )
    if config.forward in _NEED_TEXTS and current_class_texts() is None:
        raise SurgeryError(
            f"the forward {config.forward!r} reads the class text features: explain, the evaluation and the "
            "explorers pass them; from code, run it inside `with surgery_lib.model.class_texts(texts):`"
        )
    if trace is not None or hook is not None or attention_probs or block_kinds is not None:
        raise SurgeryError(
            f"the forward {config.forward!r} is a method's own: it reports no hook points, traces or "
            "attention probabilities and takes no block_kinds"
        )
    return fn(model, images, config)


def dense_forward(
    model: nn.Module,
    images: torch.Tensor,
    config: SurgeryConfig,
    trace: Trace | None = None,
    hook: HookFn | None = None,
    attention_probs: Collection[int] = (),
    block_kinds: Sequence[str | None] | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Every output token of ``model``'s image tower under ``config``, without applying a wrapper.

    Args:
        images: preprocessed ``(B, 3, H, W)`` float tensor.
        trace: optional :class:`Trace` filled in for ViT towers (a recorder on ``hook``).
        hook: optional callback ``hook(name, tensor)`` for every :data:`HOOK_POINTS` name; it may return
            a replacement (see the module doc).
        attention_probs: block indices (``0 .. num_blocks - 1``; ``0`` for a ModifiedResNet's attention
            pool) whose attention probabilities are built explicitly and reported to ``hook``.
        block_kinds: per-block patching (ViT): the attention kind of each block, ``None`` for a block
            as vanilla CLIP runs it; it replaces ``config.depth`` and ``config.attention`` (the other
            fields apply). On a single path the blocks with a kind run it (skipping their FFN when
            ``skip_ffn``); on a dual path the new path starts at the first block with a kind, and a
            later ``None`` block adds its q-k output there. ``[None] * (L - d) + [kind] * d`` is
            ``config.replace(depth=d, attention=kind)``.
    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (class token first; not normalised) and the grid ``(h, w)``.
    Raises:
        SurgeryError: a depth beyond the tower's blocks, a trace on a ModifiedResNet, or block indices
            out of range.
    """
    adapter = adapter_for(model)
    check_config(adapter, config)
    if config.forward:
        return _own_forward(model, images, config, trace, hook, attention_probs, block_kinds)
    blocks = frozenset(attention_probs)
    if any(not isinstance(i, int) or not 0 <= i < adapter.num_blocks for i in blocks):
        raise SurgeryError(
            f"attention_probs must name blocks 0..{adapter.num_blocks - 1}, got {sorted(blocks, key=str)}"
        )
    if adapter.kind == "vit":
        if trace is not None:
            record, user = trace.record, hook

            def hook(name: str, value: torch.Tensor) -> torch.Tensor | None:
                record(name, value)
                return None if user is None else user(name, value)

        tokens, grid = _vit_forward(adapter, images, config, hook, blocks, block_kinds)
        if trace is not None:
            trace.grid = grid
        return tokens, grid
    if trace is not None:
        raise SurgeryError("tracing the residual stream needs a ViT tower; ModifiedResNet has none")
    if block_kinds is not None:
        raise SurgeryError("per-block patching needs a ViT tower (a ModifiedResNet has one attention layer)")
    return _resnet_forward(adapter, images, config, hook, blocks)
