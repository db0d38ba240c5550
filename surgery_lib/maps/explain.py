"""High-level explanation: images + labels -> similarities and maps, for every method of the registry
(raw CLIP, CLIP Surgery, the other dense methods, the gradient explainers)."""

from __future__ import annotations

import numbers
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.maps.features import (
    cosine_similarity,
    feature_surgery,
    similarity_map,
    similarity_to_points,
    zero_shot_probabilities,
)
from surgery_lib.maps.images import check_image_batch
from surgery_lib.maps.text import (
    Tokenizer,
    check_label_tokens,
    distinct_by_tokens,
    empty_prompt_features,
    encode_text,
    model_device,
    text_features,
    validate_labels,
)
from surgery_lib.methods import resolve_method
from surgery_lib.model.adapters import class_token, patch_tokens, tower_info
from surgery_lib.model.engine import class_texts
from surgery_lib.model.gradients import LEGRAD_EMPTY_PROMPT, gradient_maps
from surgery_lib.model.surgery import dense_forward


def _min_input_hw(model: nn.Module) -> tuple[int, int]:
    return tower_info(model).stride


@torch.no_grad()
def encode_image_tokens(
    model: nn.Module,
    images: torch.Tensor,
    config: SurgeryConfig | None = None,
    texts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised image tokens under ``config`` (paper preset by default).

    ``SurgeryConfig.off()`` gives raw CLIP's dense tokens (ResNets: q-k attention pooling with
    every token as a query). The model is not modified.

    Args:
        images: preprocessed ``(B, 3, H, W)``; any size, square or not.
        texts: the class text features ``(T, D)``, for a method whose forward reads them (ResCLIP's
            semantic feedback; :func:`~surgery_lib.model.needs_class_texts`); ignored by the others.
    Returns:
        tokens ``(B, 1 + h·w, D)`` float32 with unit-norm rows (class token first), grid ``(h, w)``.
    """
    check_image_batch(images, _min_input_hw(model))
    device = model_device(model)
    with class_texts(texts):
        tokens, grid = dense_forward(model, images.to(device), config or SurgeryConfig.paper())
    tokens = tokens.float()
    if not torch.isfinite(tokens).all():
        raise ValueError(
            "the image tower's outputs are not finite (NaN or infinite tokens): the model's weights hold "
            "NaN/Inf values or overflow in this dtype"
        )
    return tokens / tokens.norm(dim=-1, keepdim=True), grid


def similarity(
    image_tokens: torch.Tensor,
    text_feats: torch.Tensor,
    config: SurgeryConfig,
    redundant_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image-text similarity per token as ``config`` says: cosine, or with feature surgery.

    With ``config.feature_surgery``: ``redundant_features="classes"`` uses the multi-class form,
    except for a single text, where the class mean is the text itself and would cancel it: then, as
    with ``"empty_prompt"``, ``redundant_features`` (the empty prompt's features) must be given.

    Returns:
        ``(B, 1+N, T)``.
    """
    if not config.feature_surgery:
        return cosine_similarity(image_tokens, text_feats)
    if config.redundant_features == "classes" and text_feats.shape[0] > 1:
        return feature_surgery(image_tokens, text_feats)
    if redundant_features is None:
        raise ValueError(
            "feature surgery against the empty prompt needs its features: pass "
            "redundant_features=empty_prompt_features(model, tokenizer)"
        )
    return feature_surgery(image_tokens, text_feats, redundant_features)


def configured_similarity(
    model: nn.Module,
    tokenizer: Tokenizer,
    image_tokens: torch.Tensor,
    text_feats: torch.Tensor,
    config: SurgeryConfig,
) -> torch.Tensor:
    """:func:`similarity` under ``config``, with the empty prompt's features fetched where it needs them
    (``redundant_features="empty_prompt"``, or a single text). Returns ``(B, 1+N, T)``."""
    redundant = None
    if config.feature_surgery and (config.redundant_features == "empty_prompt" or len(text_feats) == 1):
        redundant = empty_prompt_features(model, tokenizer)
    return similarity(image_tokens, text_feats, config, redundant)


@dataclass
class Explanation:
    """What :func:`explain` returns.

    Attributes:
        labels: the T class names.
        similarity: ``(B, 1+N, T)`` per-token similarity (class token first).
        maps: ``(B, H, W, T)`` min-max normalised similarity maps.
        grid: token grid ``(h, w)``.
        image_scores: ``(B, T)`` softmax over labels of the class token's cosine similarity × 100
            (vanilla CLIP's zero-shot probabilities under the dual path); with a ``vocabulary``, the
            softmax runs over the whole vocabulary and the labels' columns are kept.
        method: the resolved method config (``None`` when built by hand). For a gradient method
            (:class:`~surgery_lib.config.GradientConfig`) ``similarity[:, 1:]`` holds the relevance of
            each patch (:mod:`surgery_lib.model.gradients`) and ``similarity[:, 0]`` the class token's
            cosine similarity; the maps are the min-max normalised, upsampled relevance.
        cosine: ``(B, 1+N, T)`` plain cosine similarity of the tokens with the labels, before feature
            surgery (``None`` for gradient methods and when built by hand).
        empty_similarity: ``(B, 1+N)`` cosine similarity of the tokens with the empty prompt ``""``:
            ``cosine[..., j] − empty_similarity`` is label j's single-text feature surgery
            (``None`` like ``cosine``).
    """

    labels: list[str]
    similarity: torch.Tensor
    maps: torch.Tensor
    grid: tuple[int, int]
    image_scores: torch.Tensor
    method: SurgeryConfig | GradientConfig | None = None
    cosine: torch.Tensor | None = None
    empty_similarity: torch.Tensor | None = None

    def points(
        self,
        label: str,
        image: int = 0,
        threshold: float = 0.8,
        image_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM point prompts ``([x, y] (K, 2), labels (K,))`` for one label.

        Args:
            image: index into the batch (``-B`` to ``B - 1``).
            threshold: in [0, 1], on the min-max normalised cells (see
                :func:`~surgery_lib.maps.features.similarity_to_points`).
            image_size: ``(H, W)`` of the pixels the points are for; the map size by default.
        """
        if label not in self.labels:
            raise ValueError(
                f"label {label!r} is not among the explained labels: {', '.join(map(repr, self.labels))}"
            )
        count = self.similarity.shape[0]
        try:
            index = operator.index(image)
        except TypeError:
            raise TypeError(f"image must be an integer index, got {type(image).__name__} {image!r}") from None
        if not -count <= index < count:
            raise ValueError(
                f"image {index} is out of range: this explanation holds {count} image"
                f"{'' if count == 1 else 's'} (0..{count - 1}, or -{count}..-1 from the end)"
            )
        real = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
        if not real or not 0.0 <= threshold <= 1.0:  # NaN fails the comparison too
            raise ValueError(
                f"threshold must be a number in [0, 1] (the cells are min-max normalised), got {threshold!r}"
            )
        j = self.labels.index(label)
        return similarity_to_points(
            self.similarity[index, 1:, j],
            tuple(image_size or self.maps.shape[1:3]),
            grid=self.grid,
            threshold=float(threshold),
        )


@torch.no_grad()
def explain(
    model: nn.Module,
    tokenizer: Tokenizer,
    images: torch.Tensor,
    labels: Sequence[str],
    method: SurgeryConfig | GradientConfig | str | None = None,
    size: tuple[int, int] | None = None,
    *,
    vocabulary: Sequence[str] | None = None,
    config: SurgeryConfig | GradientConfig | str | None = None,
) -> Explanation:
    """Maps of ``labels`` on ``images`` under one method (CLIP Surgery's paper preset by default).

    Args:
        images: preprocessed ``(B, 3, H, W)``.
        labels: class names (prompt ensemble; see :func:`surgery_lib.maps.text.text_features`).
        method: a name of :func:`surgery_lib.methods.method_names` (the dense methods of ``METHODS``
            and the gradient explainers ``gradcam``, ``attn_gradcam``, ``chefer``, ...) or a config
            (:class:`SurgeryConfig` or :class:`GradientConfig`).
        size: map size ``(H, W)``; the input size by default.
        vocabulary: the class list feature surgery runs over (e.g. the dataset's classes); the
            ``labels`` are added to it when missing and only their maps are returned. Without it the
            labels are the class list: feature surgery subtracts the mean over the labels passed, so
            with exactly two labels the two maps are complements (``S₂ = −S₁``) — display a few
            labels, but pass the whole class list here.
        config: the former name of ``method`` (deprecated: a ``DeprecationWarning``; give one of the two).
    Raises:
        ValueError: an unknown method name (the message lists the known ones), or both given; labels
            whose token ids are equal (``"cat"``, ``"Cat"``) or that tokenize to nothing (``"&nbsp;"``);
            a model on the ``meta`` device. Vocabulary entries that tokenize like a label or an
            earlier entry are that class (kept once).
    """
    labels = labels if isinstance(labels, str) else list(labels)  # a generator is read once
    labels = check_label_tokens(tokenizer, labels)
    if config is not None:
        if method is not None:
            raise ValueError("pass the method as method= (config= is its former name), not both")
        warnings.warn("explain(config=...) is deprecated: pass method=", DeprecationWarning, stacklevel=2)
    resolved = resolve_method(method if method is not None else config)
    names = labels if vocabulary is None else _with_vocabulary(tokenizer, labels, vocabulary)
    every_text = text_features(model, tokenizer, names)
    texts = every_text[: len(labels)]
    out = size or (images.shape[-2], images.shape[-1])
    if isinstance(resolved, GradientConfig):
        check_image_batch(images, _min_input_hw(model))
        result = gradient_maps(model, images, texts, resolved, _legrad_empty(model, tokenizer, resolved))
        cls_sim = result.image_features @ texts.to(result.image_features).t()  # (B, T)
        relevance = result.relevance.flatten(2).transpose(1, 2)  # (B, N, T)
        sim = torch.cat([cls_sim[:, None], relevance], dim=1)
        scores = zero_shot_probabilities(result.image_features, every_text, model)[:, : len(labels)]
        maps = similarity_map(relevance, out, result.grid)
        return Explanation(list(labels), sim, maps, result.grid, scores, resolved)
    tokens, grid = encode_image_tokens(model, images, resolved, texts=every_text)
    sim = configured_similarity(model, tokenizer, tokens, every_text, resolved)[..., : len(labels)]
    scores = zero_shot_probabilities(class_token(tokens), every_text, model)[:, : len(labels)]
    cosine = cosine_similarity(tokens, texts)
    empty = cosine_similarity(tokens, empty_prompt_features(model, tokenizer))[..., 0]
    maps = similarity_map(patch_tokens(sim), out, grid)
    return Explanation(list(labels), sim, maps, grid, scores, resolved, cosine, empty)


def _legrad_empty(model: nn.Module, tokenizer: Tokenizer, method: GradientConfig) -> torch.Tensor | None:
    """LeGrad's "empty" text embedding for its SigLIP correction (the plain prompt
    :data:`~surgery_lib.model.gradients.LEGRAD_EMPTY_PROMPT`, no template), ``(D,)``; ``None`` elsewhere."""
    if method.explainer != "legrad" or tower_info(model).class_token != "pooled":
        return None
    return encode_text(model, tokenizer, [LEGRAD_EMPTY_PROMPT])[0]


def _with_vocabulary(tokenizer: Tokenizer, labels: list[str], vocabulary: Sequence[str]) -> list[str]:
    """``labels`` first, then the vocabulary's other classes (each once, in order): an entry whose
    token ids equal a label's or an earlier entry's (``"Cat"`` after ``"cat"``) is that class."""
    if isinstance(vocabulary, str):
        raise TypeError(f"vocabulary must be a sequence of class names, not the string {vocabulary!r}")
    return distinct_by_tokens(tokenizer, validate_labels([*labels, *vocabulary]))
