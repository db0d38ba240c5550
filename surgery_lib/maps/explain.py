"""High-level explanation: images + labels -> similarities and maps, raw CLIP or CLIP Surgery."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.maps.features import cosine_similarity, feature_surgery, similarity_map, similarity_to_points
from surgery_lib.maps.images import check_image_batch
from surgery_lib.maps.text import Tokenizer, empty_prompt_features, text_features
from surgery_lib.model.adapters import ViTAdapter, adapter_for
from surgery_lib.model.surgery import dense_forward


def _min_input_hw(model: nn.Module) -> tuple[int, int]:
    adapter = adapter_for(model)
    if isinstance(adapter, ViTAdapter):
        return adapter.patch_size
    return (32, 32)


@torch.no_grad()
def encode_image_tokens(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised image tokens under ``config`` (paper preset by default).

    ``SurgeryConfig.off()`` gives raw CLIP's dense tokens (ResNets: q-k attention pooling with
    every token as a query). The model is not modified.

    Args:
        images: preprocessed ``(B, 3, H, W)``; any size, square or not.
    Returns:
        tokens ``(B, 1 + h·w, D)`` float32 with unit-norm rows (class token first), grid ``(h, w)``.
    """
    check_image_batch(images, _min_input_hw(model))
    device = next(model.parameters()).device
    tokens, grid = dense_forward(model, images.to(device), config or SurgeryConfig.paper())
    tokens = tokens.float()
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
            (vanilla CLIP's zero-shot probabilities under the dual path).
    """

    labels: list[str]
    similarity: torch.Tensor
    maps: torch.Tensor
    grid: tuple[int, int]
    image_scores: torch.Tensor

    def points(self, label: str, image: int = 0, threshold: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM point prompts ``([x, y] (K, 2), labels (K,))`` for one label, in map coordinates."""
        j = self.labels.index(label)
        return similarity_to_points(
            self.similarity[image, 1:, j], tuple(self.maps.shape[1:3]), grid=self.grid, threshold=threshold
        )


@torch.no_grad()
def explain(
    model: nn.Module,
    tokenizer: Tokenizer,
    images: torch.Tensor,
    labels: Sequence[str],
    config: SurgeryConfig | None = None,
    size: tuple[int, int] | None = None,
) -> Explanation:
    """Similarity maps of ``labels`` on ``images`` under ``config`` (paper preset by default).

    Args:
        images: preprocessed ``(B, 3, H, W)``.
        labels: class names (prompt ensemble; see :func:`surgery_lib.maps.text.text_features`).
        size: map size ``(H, W)``; the input size by default.
    """
    config = config or SurgeryConfig.paper()
    texts = text_features(model, tokenizer, labels)
    tokens, grid = encode_image_tokens(model, images, config)
    sim = configured_similarity(model, tokenizer, tokens, texts, config)
    out = size or (images.shape[-2], images.shape[-1])
    scores = torch.softmax(100.0 * tokens[:, 0] @ texts.t(), dim=-1)
    return Explanation(list(labels), sim, similarity_map(sim[:, 1:], out, grid), grid, scores)
