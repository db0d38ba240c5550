"""CLIP Surgery for open_clip models: exact, reversible explainability maps for CLIP.

Implements *A Closer Look at the Explainability of Contrastive Language-Image Pre-training*
(arXiv 2304.05653): architecture surgery (v-v attention on a dual path, FFN skipped) and feature
surgery (redundant features removed), on any open_clip ViT or ModifiedResNet image tower.

Quick use::

    from surgery_lib import load_clip, preprocess_images, explain
    clip = load_clip("ViT-B-16", pretrained="openai")
    images = preprocess_images([pil_image], size=224)
    result = explain(clip.model, clip.tokenizer, images, ["cat", "dog"])
    result.maps  # (B, H, W, T)
"""

from surgery_lib.config import ATTENTION_KINDS, SurgeryConfig
from surgery_lib.maps.explain import Explanation, encode_image_tokens, explain, similarity
from surgery_lib.maps.features import (
    cosine_similarity,
    feature_surgery,
    similarity_map,
    similarity_to_points,
)
from surgery_lib.maps.images import ImageInputError, preprocess_images, reference_transform, to_rgb
from surgery_lib.maps.text import (
    PROMPT_TEMPLATES,
    LabelTooLongError,
    clear_text_cache,
    empty_prompt_features,
    encode_text,
    text_features,
)
from surgery_lib.model.adapters import UnsupportedModelError
from surgery_lib.model.introspection import (
    ResidualContributions,
    attention_maps,
    residual_contributions,
    trace_forward,
)
from surgery_lib.model.loading import LoadedCLIP, WeightsNotAvailableError, load_clip
from surgery_lib.model.surgery import (
    SurgeryError,
    SurgeryHandle,
    Trace,
    apply_surgery,
    dense_forward,
    is_surgery_applied,
)

__all__ = [
    "ATTENTION_KINDS",
    "PROMPT_TEMPLATES",
    "Explanation",
    "ImageInputError",
    "LabelTooLongError",
    "LoadedCLIP",
    "ResidualContributions",
    "SurgeryConfig",
    "SurgeryError",
    "SurgeryHandle",
    "Trace",
    "UnsupportedModelError",
    "WeightsNotAvailableError",
    "apply_surgery",
    "attention_maps",
    "clear_text_cache",
    "cosine_similarity",
    "dense_forward",
    "empty_prompt_features",
    "encode_image_tokens",
    "encode_text",
    "explain",
    "feature_surgery",
    "is_surgery_applied",
    "load_clip",
    "preprocess_images",
    "reference_transform",
    "residual_contributions",
    "similarity",
    "similarity_map",
    "similarity_to_points",
    "text_features",
    "to_rgb",
    "trace_forward",
]
