"""Exact short-context text encoding: the prompt ensemble without the padding positions.

CLIP's text tower (OpenAI CLIP, open_clip's native towers) is *causal*: each position attends only to
itself and the positions before it, and the text embedding is read at the end token (``argmax``
pooling: the end token has the highest id). The positions after a prompt's end token can therefore
never influence its embedding, and a batch of prompts can be encoded with the context cut to the
longest prompt of the batch (12 tokens for the 85 templates of a short class name, against 77):
token embedding + ``positional_embedding[:L]`` + transformer with ``attn_mask[:L, :L]`` + ``ln_final``
+ pooling at the end token + ``text_projection``, the same computation as ``encode_text`` on fewer
positions (equal up to float rounding, ≤ 1e-5).

Where this is not exact the full context is kept (``model.encode_text``): bidirectional towers
(SigLIP's ``TextTransformer`` with ``no_causal_mask`` pools the *last* position, which reads the
padding), CoCa (an appended class token), towers whose ``encode_text`` or text ``forward`` is not
open_clip's own, HF-wrapped towers and unknown modules. A model may offer its own exact method: a
callable attribute ``encode_text_short(tokens)`` returning what ``encode_text(tokens)`` returns
(the HF wrapper of :mod:`surgery_lib.model` provides it); it is used as given.
:func:`short_context_plan` says which path a model takes and why.

:func:`encode_prompts` also batches: prompts are sorted by the length they need and encoded in chunks
of at most :data:`MAX_PROMPTS_PER_CHUNK` prompts and :data:`TOKEN_BUDGET` positions (prompts × context
length), which bounds the activations' memory; the rows come back in the input order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import TextTransformer, text_global_pool
from torch import nn

MAX_PROMPTS_PER_CHUNK = 4096
"""The most prompts one forward of the text tower encodes."""

TOKEN_BUDGET = 65536
"""The most positions (prompts × context length) one forward encodes: with a ViT-B/16 text tower
(width 512, MLP 2048) its largest activation is ``TOKEN_BUDGET × 2048`` float32 = 512 MiB."""

_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
"""The tensors of an open_clip ``CLIP``'s text path (with the ``attn_mask`` buffer)."""

_EXACT_POOLS = ("argmax", "eos")
"""Poolings read at one token of each prompt (the end token), the positions after it unread."""


@dataclass(frozen=True)
class ShortContextPlan:
    """Which path :func:`encode_prompts` takes for a model.

    Attributes:
        path: ``"short"`` (open_clip's causal text tower run on the cut context), ``"model"`` (the
            model's own ``encode_text_short``) or ``"full"`` (``model.encode_text`` over the whole
            context).
        reason: why, in words.
    """

    path: str
    reason: str

    @property
    def exact_short(self) -> bool:
        """The context is cut (``"short"`` or ``"model"``)."""
        return self.path != "full"


@dataclass(frozen=True)
class _TextParts:
    """The pieces of an open_clip causal text tower that the short path runs."""

    token_embedding: nn.Module
    positional_embedding: torch.Tensor  # (context, width)
    transformer: nn.Module
    attn_mask: torch.Tensor  # (context, context) additive, -inf above the diagonal
    ln_final: nn.Module
    text_projection: nn.Module | torch.Tensor | None  # Linear, (width, D) matrix or None
    pool_type: str
    eos_id: int | None


def _is_causal(mask: torch.Tensor | None, context: int) -> bool:
    """``mask`` is an additive ``(≥ context, ≥ context)`` mask that forbids every later position."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or min(mask.shape) < context:
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all())


def _overrides(obj: object, cls: type, name: str) -> bool:
    """``obj``'s ``name`` is not ``cls``'s own (a subclass or an instance attribute replaces it)."""
    return name in vars(obj) or getattr(type(obj), name, None) is not getattr(cls, name)


def _open_clip_parts(model: nn.Module) -> tuple[_TextParts | None, str]:
    """The causal text tower of an open_clip ``CLIP`` / ``CustomTextCLIP``, or ``None`` and why not."""
    if isinstance(model, CLIP):
        if _overrides(model, CLIP, "encode_text"):
            return None, f"{type(model).__qualname__} replaces open_clip's CLIP.encode_text"
        parts = _TextParts(
            model.token_embedding,
            model.positional_embedding,
            model.transformer,
            model.attn_mask,
            model.ln_final,
            model.text_projection,
            model.text_pool_type,
            getattr(model, "text_eos_id", None),
        )
        where = "CLIP"
    elif isinstance(model, CustomTextCLIP):
        text = model.text
        if _overrides(model, CustomTextCLIP, "encode_text"):
            return None, f"{type(model).__qualname__} replaces open_clip's CustomTextCLIP.encode_text"
        if not isinstance(text, TextTransformer) or _overrides(text, TextTransformer, "forward"):
            return None, f"the text tower {type(text).__qualname__} is not open_clip's TextTransformer"
        if text.cls_emb is not None:
            return None, "the text tower appends a class token (CoCa) and pools it over every position"
        if text.output_tokens:
            return None, "the text tower returns its tokens too (output_tokens)"
        if text.use_pad_mask:
            return None, "the text tower masks padding (a bidirectional tower)"
        parts = _TextParts(
            text.token_embedding,
            text.positional_embedding,
            text.transformer,
            text.attn_mask,
            text.ln_final,
            text.text_projection,
            text.pool_type,
            getattr(text, "eos_id", None),
        )
        where = "CustomTextCLIP.text"
    else:
        return None, f"{type(model).__qualname__} is not an open_clip CLIP / CustomTextCLIP"
    if parts.attn_mask is None:
        return None, f"{where} has no causal mask (a bidirectional text tower, e.g. SigLIP's)"
    if not _is_causal(parts.attn_mask, parts.positional_embedding.shape[0]):
        return None, f"{where}'s attention mask is not causal"
    if parts.pool_type not in _EXACT_POOLS:
        return None, f"{where} pools {parts.pool_type!r}, not at the end token"
    if parts.pool_type == "eos" and parts.eos_id is None:
        return None, f"{where} pools at 'eos' without an end-token id"
    return parts, f"{where}: causal attention mask, {parts.pool_type!r} pooling at the end token"


def short_context_plan(model: nn.Module) -> ShortContextPlan:
    """Which path :func:`encode_prompts` takes for ``model``, and why (see the module's docstring)."""
    own = getattr(model, "encode_text_short", None)
    if callable(own):
        return ShortContextPlan("model", f"{type(model).__qualname__} offers its own encode_text_short")
    parts, reason = _open_clip_parts(model)
    if parts is None:
        return ShortContextPlan("full", f"full context: {reason}")
    return ShortContextPlan("short", f"short context exact: {reason}")


def short_context_exact(model: nn.Module) -> bool:
    """``model``'s prompts are encoded on the cut context (:func:`short_context_plan`)."""
    return short_context_plan(model).exact_short


def _pool_index(tokens: torch.Tensor, parts: _TextParts) -> torch.Tensor:
    """The position each prompt is read at, ``(T,)``: ``text_global_pool``'s index."""
    if parts.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == parts.eos_id).int().argmax(dim=-1)


def _encode_short(parts: _TextParts, tokens: torch.Tensor) -> torch.Tensor:
    """``encode_text`` of ``tokens`` ``(T, L)``, already cut past every prompt's read position -> ``(T, D)``.

    open_clip's ``CLIP.encode_text`` / ``TextTransformer.forward`` on the first ``L`` positions: the
    transformer handles its own ``batch_first`` layout, the causal mask is cut to ``(L, L)``.
    """
    length = tokens.shape[1]
    cast_dtype = parts.transformer.get_cast_dtype()
    x = parts.token_embedding(tokens).to(cast_dtype)  # (T, L, width)
    x = x + parts.positional_embedding[:length].to(cast_dtype)
    x = parts.transformer(x, attn_mask=parts.attn_mask[:length, :length])
    x = parts.ln_final(x)
    x = text_global_pool(x, tokens, parts.pool_type, eos_token_id=parts.eos_id)  # (T, width)
    if isinstance(parts.text_projection, nn.Linear):
        x = parts.text_projection(x)
    elif parts.text_projection is not None:
        x = x @ parts.text_projection
    return x


def _chunks(lengths: list[int], context: int) -> list[list[int]]:
    """Indices into ``lengths`` sorted by length, grouped so that each group's prompts × its longest
    length stays within :data:`TOKEN_BUDGET` and :data:`MAX_PROMPTS_PER_CHUNK`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            group = groups[-1]
            size = len(group) + 1
            if size <= MAX_PROMPTS_PER_CHUNK and size * max(lengths[i], 1) <= max(TOKEN_BUDGET, context):
                group.append(i)
                continue
        groups.append([i])
    return groups


@torch.no_grad()
def encode_prompts(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Normalised text features of tokenized prompts, ``(T, L)`` -> ``(T, D)`` float32.

    Equal (≤ 1e-5) to ``model.encode_text(tokens, normalize=True).float()``; on causal open_clip
    towers each chunk runs only up to its longest prompt's end token (see :func:`short_context_plan`).
    Prompts are encoded in chunks sorted by length (:data:`MAX_PROMPTS_PER_CHUNK`,
    :data:`TOKEN_BUDGET`); the rows keep the order of ``tokens``. ``tokens`` must be on the model's
    device.
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (prompts, context), got shape {tuple(tokens.shape)}")
    plan = short_context_plan(model)
    parts = _open_clip_parts(model)[0] if plan.path == "short" else None
    if parts is not None:
        lengths = (_pool_index(tokens, parts) + 1).tolist()
    else:
        lengths = [tokens.shape[1]] * tokens.shape[0]
    out: torch.Tensor | None = None
    for group in _chunks(lengths, tokens.shape[1]):
        index = torch.tensor(group, device=tokens.device)
        batch = tokens[index]
        if parts is not None:
            feats = _encode_short(parts, batch[:, : max(lengths[i] for i in group)])
        elif plan.path == "model":
            feats = model.encode_text_short(batch)
        else:
            feats = model.encode_text(batch)
        feats = F.normalize(feats, dim=-1).float()  # as encode_text(normalize=True).float()
        if out is None:
            out = feats.new_empty(tokens.shape[0], feats.shape[-1])
        out[index] = feats
    if out is None:
        raise ValueError("no prompts to encode: tokens has 0 rows")
    return out


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _plain_settings(module: nn.Module) -> dict[str, object]:
    """The module's own plain attributes (``pool_type``, ``eos_id``, ``training``, ...)."""
    return {
        k: v
        for k, v in sorted(vars(module).items())
        if isinstance(v, (bool, int, float, str, type(None))) and not k.startswith("__")
    }


def text_tower_state(model: nn.Module) -> tuple[list[tuple[str, torch.Tensor]], str]:
    """The named tensors ``model``'s text path reads (sorted by name) and a JSON description of its
    structure (class, module reprs) and plain settings (pool type, end-token id, ``training``, ...).

    open_clip ``CLIP``: the token embedding, positional embedding, transformer, ``ln_final``,
    ``text_projection`` and the ``attn_mask`` buffer; ``CustomTextCLIP``: everything under ``text``;
    any other model: every parameter and buffer outside ``visual``.
    """
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    if isinstance(model, CLIP):
        chosen = [(n, t) for n, t in tensors if n.startswith(_TEXT_PREFIXES) or n == "attn_mask"]
        modules = [model.token_embedding, model.transformer, model.ln_final]
        if isinstance(model.text_projection, nn.Module):
            modules.append(model.text_projection)
        settings = _plain_settings(model)
    elif isinstance(model, CustomTextCLIP):
        chosen = [(n, t) for n, t in tensors if n.startswith("text.")]
        modules = [model.text]
        settings = {**_plain_settings(model), **_plain_settings(model.text)}
    else:
        chosen = [(n, t) for n, t in tensors if not n.startswith("visual.")]
        modules = [child for name, child in model.named_children() if name != "visual"]
        settings = _plain_settings(model)
    structure = json.dumps(
        {"class": _type_name(model), "modules": [repr(m) for m in modules], "settings": settings},
        sort_keys=True,
        default=str,
    )
    return sorted(chosen, key=lambda item: item[0]), structure
