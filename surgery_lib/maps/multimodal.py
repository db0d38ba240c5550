"""Multimodal (text-side) visualization: which words of a caption CLIP relies on, and where each lands.

Each token of a caption is treated like a class: its feature after ``ln_final`` and the text
projection is compared with the image tokens. Feature surgery removes what all tokens share, either the
empty prompt's features or the mean over the caption's tokens. By default only the content tokens are
taken; ``special_tokens=True`` adds the start and end tokens, as the reference does (all n + 2 token
features, taken before CLIP's argmax over the end position; ``/shared/METHODS.md`` §9b). Caveat: only
the end token's position is trained to align with images (it *is* CLIP's text embedding); the other
positions' features are compared with the image tokens although nothing trained them for it.
:func:`word_pointing_records` scores whether a class word's map peaks on its object, beside the chance
of a random point (the object's share of the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.maps.text import Tokenizer, encode_text
from surgery_lib.model.adapters import class_token, text_token_features

WordRedundancy = Literal["empty_prompt", "word_mean", "none"]


@dataclass
class CaptionTokens:
    """The content tokens of one caption.

    Attributes:
        caption: the caption as given.
        words: the text of each token (BPE pieces; a word may span several tokens); the special
            tokens, when taken, are :data:`START` and :data:`END`.
        positions: each token's index in the tokenized sequence (start token = 0).
        features: normalised ``(K, D)`` token features.
    """

    caption: str
    words: list[str]
    positions: list[int]
    features: torch.Tensor


def _token_text(tokenizer: Tokenizer, token_id: int) -> str:
    decode = getattr(tokenizer, "decode", None)
    if callable(decode):
        return decode([token_id]).strip()
    return str(token_id)


START, END = "[start]", "[end]"
"""How :attr:`CaptionTokens.words` names the start- and end-of-text tokens."""


@torch.no_grad()
def caption_tokens(
    model: nn.Module, tokenizer: Tokenizer, caption: str, special_tokens: bool = False
) -> CaptionTokens:
    """Per-token features of ``caption``; padding is always dropped.

    Args:
        special_tokens: also take the start token (first) and the end token (last), the reference's
            n + 2 tokens; False: the n content tokens only.
    Raises:
        ValueError: for an empty or whitespace caption, or one that does not fit the context.
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"the caption {caption!r} is empty: give some words")
    encode_text(model, tokenizer, [caption])  # validates the model and the length
    tokens = tokenizer([caption]).to(next(model.parameters()).device)
    end = int(tokens[0].argmax())  # the end-of-text token has the largest id
    positions = list(range(0, end + 1)) if special_tokens else list(range(1, end))
    feats = F.normalize(text_token_features(model, tokens)[0, positions].float(), dim=-1)
    words = [_token_text(tokenizer, int(tokens[0, p])) for p in positions]
    if special_tokens:
        words[0], words[-1] = START, END
    return CaptionTokens(caption, words, positions, feats)


def _redundant(
    caption: CaptionTokens, redundancy: WordRedundancy, empty: torch.Tensor | None
) -> torch.Tensor:
    if redundancy == "none":
        return torch.zeros_like(caption.features[:1])
    if redundancy == "word_mean":
        return caption.features.mean(dim=0, keepdim=True)
    if redundancy == "empty_prompt":
        if empty is None:
            raise ValueError(
                "redundancy='empty_prompt' needs empty_features=empty_prompt_features(model, tokenizer)"
            )
        return empty.reshape(1, -1).to(caption.features)
    raise ValueError(f"unknown redundancy {redundancy!r}; expected 'empty_prompt', 'word_mean' or 'none'")


def word_similarity(
    image_tokens: torch.Tensor,
    caption: CaptionTokens,
    redundancy: WordRedundancy = "empty_prompt",
    empty_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Similarity of every image token with every word, the redundant part removed.

    Args:
        image_tokens: normalised ``(B, 1+N, D)``.
    Returns:
        ``(B, 1+N, K)``: ``f · (t_k − r)``; the class token's row (index 0) scores the word for the
        whole image, the patch rows give per-word maps.
    """
    r = _redundant(caption, redundancy, empty_features)
    return image_tokens @ (caption.features - r).t().to(image_tokens.dtype)


def word_importance(word_sim: torch.Tensor) -> torch.Tensor:
    """Word importance for each image from :func:`word_similarity`: the class token's scores
    min-max normalised over the caption's words, ``(B, K)`` in [0, 1]."""
    scores = class_token(word_sim)
    lo, hi = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
    return (scores - lo) / (hi - lo).clamp_min(torch.finfo(scores.dtype).tiny)
