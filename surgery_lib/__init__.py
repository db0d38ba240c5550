"""CLIP Surgery for open_clip models: exact, reversible explainability maps for CLIP.

Implements *A Closer Look at the Explainability of Contrastive Language-Image Pre-training*
(arXiv 2304.05653): architecture surgery (v-v attention on a dual path, FFN skipped) and feature
surgery (redundant features removed), on any open_clip ViT or ModifiedResNet image tower.

The public API: this package, :mod:`surgery_lib.analysis` (the analyses: data, nulls, metrics,
evaluation runs) and :mod:`surgery_lib.figures` (figures, claims, explorers). Notebooks import from these
three only (a test checks it), so the modules behind them can move.

Quick use::

    from surgery_lib import load_clip, preprocess_images, explain
    clip = load_clip("ViT-B-16", pretrained="openai")
    images = preprocess_images([pil_image], size=224)
    result = explain(clip.model, clip.tokenizer, images, ["cat", "dog"])
    result.maps  # (B, H, W, T)
"""

from surgery_lib.config import ATTENTION_KINDS, GradientConfig, SurgeryConfig
from surgery_lib.maps.explain import (
    Explanation,
    configured_similarity,
    encode_image_tokens,
    explain,
    similarity,
)
from surgery_lib.maps.features import (
    class_weights,
    cosine_similarity,
    feature_surgery,
    similarity_map,
    similarity_to_points,
    zero_shot_probabilities,
)
from surgery_lib.maps.images import ImageInputError, preprocess_images, reference_transform, to_rgb
from surgery_lib.maps.multimodal import END, caption_tokens, word_importance, word_similarity
from surgery_lib.maps.sam import SamSegmenter, SamUnavailableError, gate_rates, target_map, text_points
from surgery_lib.maps.text import (
    PROMPT_TEMPLATES,
    LabelTooLongError,
    clear_disk_cache,
    clear_text_cache,
    empty_prompt_features,
    encode_text,
    text_features,
)
from surgery_lib.methods import (
    GRADIENT_METHODS,
    METHOD_TITLES,
    METHODS,
    PROTOCOL_PRESETS,
    RAW_VS_SURGERY,
    REGISTRY,
    Method,
    get_method,
    method_names,
    resolve_method,
)
from surgery_lib.model import (
    DEFAULT_MODEL,
    HOOK_POINTS,
    GradientMaps,
    LoadedCLIP,
    ResidualContributions,
    SurgeryError,
    SurgeryHandle,
    TowerInfo,
    Trace,
    UnsupportedModelError,
    WeightsNotAvailableError,
    apply_surgery,
    attention_maps,
    available_towers,
    class_token,
    dense_forward,
    dual_path_decomposition,
    gradient_maps,
    is_surgery_applied,
    load_clip,
    load_tower,
    max_depth,
    patch_tokens,
    pretrained_for,
    residual_contributions,
    tower_info,
    tower_spec,
    trace_forward,
    with_spatial_prior,
)

__all__ = [
    "ATTENTION_KINDS",
    "DEFAULT_MODEL",
    "END",
    "GRADIENT_METHODS",
    "HOOK_POINTS",
    "METHODS",
    "METHOD_TITLES",
    "PROMPT_TEMPLATES",
    "PROTOCOL_PRESETS",
    "RAW_VS_SURGERY",
    "REGISTRY",
    "Explanation",
    "GradientConfig",
    "GradientMaps",
    "ImageInputError",
    "LabelTooLongError",
    "LoadedCLIP",
    "Method",
    "ResidualContributions",
    "SamSegmenter",
    "SamUnavailableError",
    "SurgeryConfig",
    "SurgeryError",
    "SurgeryHandle",
    "TowerInfo",
    "Trace",
    "UnsupportedModelError",
    "WeightsNotAvailableError",
    "apply_surgery",
    "attention_maps",
    "available_towers",
    "caption_tokens",
    "class_token",
    "class_weights",
    "clear_disk_cache",
    "clear_text_cache",
    "configured_similarity",
    "cosine_similarity",
    "dense_forward",
    "dual_path_decomposition",
    "empty_prompt_features",
    "encode_image_tokens",
    "encode_text",
    "explain",
    "feature_surgery",
    "gate_rates",
    "get_method",
    "gradient_maps",
    "is_surgery_applied",
    "load_clip",
    "load_tower",
    "max_depth",
    "method_names",
    "patch_tokens",
    "preprocess_images",
    "pretrained_for",
    "reference_transform",
    "residual_contributions",
    "resolve_method",
    "similarity",
    "similarity_map",
    "similarity_to_points",
    "target_map",
    "text_features",
    "text_points",
    "to_rgb",
    "tower_info",
    "tower_spec",
    "trace_forward",
    "with_spatial_prior",
    "word_importance",
    "word_similarity",
    "zero_shot_probabilities",
]
