"""Text features: CLIP's prompt ensemble with a per-model cache, and label validation.

Labels too long for the text context raise :class:`LabelTooLongError` rather than being truncated:
a truncated prompt would silently describe another class.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
from torch import nn

from surgery_lib.model.adapters import check_clip

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
    """Normalised features of plain texts (no templates), ``(T, D)``; texts may be empty strings."""
    check_clip(model)
    texts = validate_labels(texts, allow_empty_label=True)
    tokens = torch.cat([_tokenize(model, tokenizer, t, [t]) for t in texts]).to(model_device(model))
    return model.encode_text(tokens, normalize=True).float()


@torch.no_grad()
def text_features(
    model: nn.Module,
    tokenizer: Tokenizer,
    labels: Sequence[str],
    templates: str | Sequence[str] | None = None,
    use_cache: bool = True,
    allow_empty_label: bool = False,
) -> torch.Tensor:
    """Prompt-ensemble features per label: each prompt normalised, mean over templates normalised.

    Results are cached per (model, tokenizer, templates, label); the cache assumes frozen weights (call
    :func:`clear_text_cache` after changing them).

    Args:
        labels: class names; empty names are refused unless ``allow_empty_label``.
        templates: a set name of :data:`TEMPLATE_SETS` (``"surgery85"``, ``"openai80"``, ``"single"``)
            or format strings with one ``{}``; default :data:`PROMPT_TEMPLATES` (= ``"surgery85"``).
    Returns:
        ``(T, D)`` float32, rows of unit norm.
    """
    check_clip(model)
    labels = validate_labels(labels, allow_empty_label=allow_empty_label)
    model_device(model)
    templates = resolve_templates(templates)
    try:
        hash(tokenizer)
    except TypeError:  # an unhashable tokenizer cannot key the cache: compute without it
        use_cache = False
    cache = _CACHE.setdefault(model, {}) if use_cache else {}
    rows = []
    for label in labels:
        key = (tokenizer, templates, label)
        if key not in cache:
            if not allow_empty_label:
                _check_has_text(tokenizer, label, labels.index(label))
            tokens = _tokenize(model, tokenizer, label, [t.format(label) for t in templates])
            feats = model.encode_text(tokens.to(model_device(model)), normalize=True).float()
            mean = feats.mean(dim=0)
            if not torch.isfinite(mean).all():
                raise ValueError(
                    f"the text tower's outputs for {label!r} are not finite (NaN or infinite): the "
                    "model's weights hold NaN/Inf values or overflow in this dtype"
                )
            cache[key] = (mean / mean.norm()).cpu()
        rows.append(cache[key])
    return torch.stack(rows).to(model_device(model))


def empty_prompt_features(
    model: nn.Module, tokenizer: Tokenizer, templates: str | Sequence[str] | None = None
) -> torch.Tensor:
    """The redundant features of the paper: the prompt ensemble of the empty class name ``""``, ``(1, D)``."""
    return text_features(model, tokenizer, [""], templates=templates, allow_empty_label=True)


def clear_text_cache(model: nn.Module | None = None) -> None:
    """Forget cached text features (of one model, or of all)."""
    if model is None:
        _CACHE.clear()
    else:
        _CACHE.pop(model, None)
