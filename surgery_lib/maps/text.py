"""Text features: CLIP's prompt ensemble, cached in memory per model and on disk, and label validation.

Labels too long for the text context raise :class:`LabelTooLongError` rather than being truncated:
a truncated prompt would silently describe another class.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from surgery_lib.maps.feature_cache import (
    clear_disk_cache,  # noqa: F401 (re-exported beside clear_text_cache)
    disk_cache_enabled,
    disk_cacheable,
    entry_path,
    forget_weights_hash,
    load_entry,
    store_entry,
    text_entry_key,
    text_weights_hash,
    tokenizer_fingerprint,
    weights_signature,
)
from surgery_lib.model.adapters import check_clip
from surgery_lib.model.text_encoding import encode_prompts

Tokenizer = Callable[[Sequence[str]], torch.Tensor]

SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)


def _imagenet_templates() -> tuple[str, ...]:
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


PROMPT_TEMPLATES: tuple[str, ...] = _imagenet_templates() + SCENE_TEMPLATES
"""The 85 templates of the paper: CLIP's 80 ImageNet templates and 5 scene templates."""

OPENAI_TEMPLATES: tuple[str, ...] = PROMPT_TEMPLATES[:80]
"""CLIP's 80 ImageNet templates (OpenAI), the first 80 of :data:`PROMPT_TEMPLATES`."""

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "surgery85": PROMPT_TEMPLATES,
    "openai80": OPENAI_TEMPLATES,
    "single": ("a photo of a {}.",),
}
"""Named template sets: ``surgery85`` (CLIP Surgery, MaskCLIP: 80 ImageNet + 5 scene templates),
``openai80`` (SCLIP, ClearCLIP, NACLIP), ``single`` (GEM: "a photo of a {}.")."""


def resolve_templates(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    """Templates from a set name of :data:`TEMPLATE_SETS`, a list of format strings, or ``None``
    (:data:`PROMPT_TEMPLATES`); each must hold exactly one ``{}``."""
    if templates is None:
        return PROMPT_TEMPLATES
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; expected one of {tuple(TEMPLATE_SETS)}")
        return TEMPLATE_SETS[templates]
    resolved = tuple(templates)
    if not resolved or any(not isinstance(t, str) or t.count("{}") != 1 for t in resolved):
        raise ValueError("templates must be a non-empty list of strings with exactly one '{}' each")
    return resolved


class LabelTooLongError(ValueError):
    """A label whose prompts do not fit in the text encoder's context."""


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()
_SIGNATURES: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def validate_labels(labels: Sequence[str], allow_empty_label: bool = False) -> list[str]:
    """Check a list of class names: non-empty list of strings, no empty or whitespace-only name."""
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of class names, got the string {labels!r}; wrap it in a list")
    labels = list(labels)
    if not labels:
        raise ValueError("the label list is empty: give at least one class name")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise TypeError(f"label {i} is {type(label).__name__} {label!r}, expected a string")
        if not allow_empty_label and not label.strip():
            raise ValueError(f"label {i} ({label!r}) is empty or whitespace: a class name is needed")
    return labels


def _label_ids(tokenizer: Tokenizer, label: str) -> tuple[int, ...]:
    """The token ids of ``label`` alone: the content tokens of the tokenizer's ``encode`` (after its
    cleaning), or, for a tokenizer without one, its whole row (start, end and padding included)."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return tuple(int(i) for i in encode(label))
    return tuple(int(i) for i in tokenizer([label])[0].tolist())


def _check_has_text(tokenizer: Tokenizer, label: str, index: int) -> tuple[int, ...]:
    """``label``'s token ids; a ``ValueError`` when they are the empty prompt's (nothing between the
    start and end tokens: the tokenizer's cleaning removed the whole label, e.g. ``"&nbsp;"``)."""
    ids = _label_ids(tokenizer, label)
    if ids == _label_ids(tokenizer, ""):
        raise ValueError(
            f"label {index} ({label!r}) has no text once tokenized (the tokenizer's cleaning leaves no "
            "token): it would be the empty prompt; give a class name"
        )
    return ids


def check_label_tokens(tokenizer: Tokenizer, labels: Sequence[str]) -> list[str]:
    """Check class names as the text encoder will see them (after :func:`validate_labels`).

    Refuses a label with no token once tokenized (the tokenizer's cleaning removes ``"&nbsp;"``,
    ``"\\ufeff"``, ``"\\x00"``, ...: it would be the empty prompt) and two labels whose token ids are
    equal (``"cat"`` and ``"Cat"``: the tokenizer lowercases and cleans; both would get the same text
    features, and feature surgery over the two would be exactly 0), naming the labels.

    Returns:
        the labels as a list.
    """
    labels = validate_labels(labels)
    seen: dict[tuple[int, ...], int] = {}
    for i, label in enumerate(labels):
        ids = _check_has_text(tokenizer, label, i)
        if ids in seen:
            first = labels[seen[ids]]
            if first == label:
                raise ValueError(f"label {label!r} is given twice (labels {seen[ids]} and {i}): keep one")
            raise ValueError(
                f"labels {first!r} and {label!r} tokenize to the same ids (the tokenizer lowercases and "
                "cleans text): they would get the same text features and the same maps; keep one"
            )
        seen[ids] = i
    return labels


def distinct_by_tokens(tokenizer: Tokenizer, names: Sequence[str]) -> list[str]:
    """``names`` without those whose token ids equal an earlier name's (the first is kept)."""
    seen: set[tuple[int, ...]] = set()
    kept = []
    for name in names:
        ids = _label_ids(tokenizer, name)
        if ids not in seen:
            seen.add(ids)
            kept.append(name)
    return kept


def _context_length(model: nn.Module, tokenizer: Tokenizer) -> int:
    return int(getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77))


def _tokenize(model: nn.Module, tokenizer: Tokenizer, label: str, prompts: list[str]) -> torch.Tensor:
    """Tokenize prompts, refusing those that the tokenizer would truncate."""
    inner = getattr(tokenizer, "encode", None)
    limit = _context_length(model, tokenizer)
    if callable(inner):
        longest = max(len(inner(p)) + 2 for p in prompts)  # + start and end tokens
        if longest > limit:
            raise LabelTooLongError(
                f"label {label!r} is too long: its longest prompt needs {longest} tokens, the text "
                f"context holds {limit}; shorten the label"
            )
    return tokenizer(prompts)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters; a ``ValueError`` for the ``meta`` device (shapes only, no
    values: nothing can be computed there)."""
    device = next(model.parameters()).device
    if device.type == "meta":
        raise ValueError(
            "the model's parameters are on the meta device (shapes without values): nothing can be "
            "computed there; load its weights onto a real device first (e.g. model.to_empty(device='cpu') "
            "then load_state_dict, or load_clip(..., device='cpu'))"
        )
    return device


@torch.no_grad()
def encode_text(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Normalised features of plain texts (no templates), ``(T, D)``; texts may be empty strings.
    Encoded in chunks on the short context where exact (:func:`encode_prompts`)."""
    check_clip(model)
    texts = validate_labels(texts, allow_empty_label=True)
    tokens = torch.cat([_tokenize(model, tokenizer, t, [t]) for t in texts]).to(model_device(model))
    return encode_prompts(model, tokens)


def _memory_cache(model: nn.Module) -> dict[tuple, torch.Tensor]:
    """``model``'s in-memory cache, emptied first when its text weights changed since it was filled
    (a replaced or in-place changed tensor: :func:`~surgery_lib.maps.feature_cache.weights_signature`)."""
    signature = weights_signature(model)
    if signature is None or _SIGNATURES.get(model) != signature:
        _CACHE.pop(model, None)
        if signature is not None:
            _SIGNATURES[model] = signature
    return _CACHE.setdefault(model, {})


def _encode_labels(
    model: nn.Module,
    tokenizer: Tokenizer,
    todo: list[str],
    templates: tuple[str, ...],
) -> dict[str, torch.Tensor]:
    """The prompt-ensemble features of the labels ``todo`` (each ``(D,)`` float32 on the CPU), all
    their prompts (labels × templates) encoded in one batched call of
    :func:`~surgery_lib.model.text_encoding.encode_prompts` (chunked, short context where exact)."""
    tokens = [_tokenize(model, tokenizer, label, [t.format(label) for t in templates]) for label in todo]
    feats = encode_prompts(model, torch.cat(tokens).to(model_device(model)))  # (labels·templates, D)
    out = {}
    for label, per_label in zip(todo, feats.split(len(templates)), strict=True):
        mean = per_label.mean(dim=0)
        if not torch.isfinite(mean).all():
            raise ValueError(
                f"the text tower's outputs for {label!r} are not finite (NaN or infinite): the "
                "model's weights hold NaN/Inf values or overflow in this dtype"
            )
        out[label] = (mean / mean.norm()).cpu()
    return out


def _disk_keys(
    model: nn.Module, tokenizer: Tokenizer, templates: tuple[str, ...], labels: list[str]
) -> dict[str, tuple[Path, str]]:
    """Each label's disk-cache file and key (:mod:`surgery_lib.maps.feature_cache`)."""
    weights = text_weights_hash(model)
    tokens = tokenizer_fingerprint(tokenizer, _context_length(model, tokenizer))
    param = next(model.parameters())
    keys = {}
    for label in labels:
        key = text_entry_key(weights, tokens, templates, label, param.dtype, param.device)
        keys[label] = (entry_path(weights, key), key)
    return keys


@torch.no_grad()
def text_features(
    model: nn.Module,
    tokenizer: Tokenizer,
    labels: Sequence[str],
    templates: str | Sequence[str] | None = None,
    use_cache: bool = True,
    allow_empty_label: bool = False,
    use_disk_cache: bool = True,
) -> torch.Tensor:
    """Prompt-ensemble features per label: each prompt normalised, mean over templates normalised.

    Looked up in the in-memory cache (per model, tokenizer, templates and label; emptied when the
    text weights change in place or are replaced), then in the disk cache
    (:mod:`surgery_lib.maps.feature_cache`: ``$SURGERY_CACHE_DIR``, off with ``SURGERY_NO_CACHE=1``
    or ``use_disk_cache=False``), else computed: the prompts of all missing labels in one batched,
    chunked forward, on the context cut to the longest prompt where that is exact
    (:func:`~surgery_lib.model.text_encoding.encode_prompts`); then stored in both caches.

    Args:
        labels: class names; empty names are refused unless ``allow_empty_label``.
        templates: a set name of :data:`TEMPLATE_SETS` (``"surgery85"``, ``"openai80"``, ``"single"``)
            or format strings with one ``{}``; default :data:`PROMPT_TEMPLATES` (= ``"surgery85"``).
        use_cache: ``False`` computes afresh, reading and writing neither cache.
        use_disk_cache: ``False`` leaves the disk cache out (the memory cache is still used).
    Returns:
        ``(T, D)`` float32, rows of unit norm.
    """
    check_clip(model)
    labels = validate_labels(labels, allow_empty_label=allow_empty_label)
    device = model_device(model)
    templates = resolve_templates(templates)
    try:
        hash(tokenizer)
    except TypeError:  # an unhashable tokenizer cannot key the cache: compute without it
        use_cache = False
    if not allow_empty_label:  # before any cache: a cached entry never hides an empty label
        for i, label in enumerate(labels):
            _check_has_text(tokenizer, label, i)
    memory = _memory_cache(model) if use_cache else {}
    found: dict[str, torch.Tensor] = {}
    for label in dict.fromkeys(labels):
        if (tokenizer, templates, label) in memory:
            found[label] = memory[(tokenizer, templates, label)]
    missing = [label for label in dict.fromkeys(labels) if label not in found]
    disk = {}
    if missing and use_cache and disk_cache_enabled(use_disk_cache) and disk_cacheable(model):
        disk = _disk_keys(model, tokenizer, templates, missing)
        for label, (path, key) in disk.items():
            value = load_entry(path, key)
            if value is not None:
                found[label] = memory[(tokenizer, templates, label)] = value
    todo = [label for label in missing if label not in found]
    if todo:
        computed = _encode_labels(model, tokenizer, todo, templates)
        for label, value in computed.items():
            memory[(tokenizer, templates, label)] = found[label] = value
            if label in disk:
                store_entry(*disk[label], value, label=label)
    return torch.stack([found[label] for label in labels]).to(device)


def empty_prompt_features(
    model: nn.Module, tokenizer: Tokenizer, templates: str | Sequence[str] | None = None
) -> torch.Tensor:
    """The redundant features of the paper: the prompt ensemble of the empty class name ``""``, ``(1, D)``."""
    return text_features(model, tokenizer, [""], templates=templates, allow_empty_label=True)


def clear_text_cache(model: nn.Module | None = None) -> None:
    """Forget the text features cached in memory (of one model, or of all) and the remembered
    weights hash; the disk cache is left as it is (:func:`clear_disk_cache`)."""
    if model is None:
        _CACHE.clear()
        _SIGNATURES.clear()
    else:
        _CACHE.pop(model, None)
        _SIGNATURES.pop(model, None)
    forget_weights_hash(model)
