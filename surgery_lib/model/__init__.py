"""The model layer: everything that touches open_clip — the tower adapters, the forward engine,
attention kinds, the surgery wrapper, gradient explainers, introspection, loading, preprocessing and
the shipped models. Imports nothing above it.

The names below are the layer's interface: the layers above (``eval``, ``ui``, ``cli``) import them from
``surgery_lib.model``, never from its modules (import-linter checks it); ``maps`` and ``methods``, which
build on the engine directly, may use the modules.
"""

from surgery_lib.model.adapters import (
    TowerInfo,
    UnsupportedModelError,
    class_token,
    patch_tokens,
    text_token_features,
    tower_info,
)
from surgery_lib.model.attention import with_spatial_prior
from surgery_lib.model.catalog import available_towers, load_tower, tower_spec
from surgery_lib.model.engine import (
    HOOK_POINTS,
    VIT_ONLY_DEFAULTS,
    HookFn,
    SurgeryError,
    Trace,
    class_texts,
    dense_forward,
    max_depth,
    needs_class_texts,
)
from surgery_lib.model.gradients import DEFINED_ON as GRADIENT_TOWERS
from surgery_lib.model.gradients import GradientMaps, gradient_maps
from surgery_lib.model.hf_towers import HFCLIP, hf_clip_from_open_clip, hf_siglip_from_open_clip
from surgery_lib.model.introspection import (
    ResidualContributions,
    attention_maps,
    dual_path_decomposition,
    pool_attention,
    residual_contributions,
    trace_forward,
)
from surgery_lib.model.loading import LoadedCLIP, WeightsNotAvailableError, load_clip, read_state_dict
from surgery_lib.model.preprocess import check_image_batch, image_normalisation, reference_transform
from surgery_lib.model.shipped import (
    DEFAULT_MODEL,
    TOY_MODELS,
    pretrained_for,
    register_configs,
    weights_path,
)
from surgery_lib.model.surgery import SurgeryHandle, apply_surgery, is_surgery_applied
from surgery_lib.model.text_encoding import (
    ShortContextPlan,
    encode_prompts,
    short_context_exact,
    short_context_plan,
)
from surgery_lib.model.tiny_towers import tiny_clipa, tiny_eva02, tiny_siglip
from surgery_lib.model.vfm import DEFAULT_VFM, TINY_VFM, CLIPWithVFM, load_vfm, with_vfm

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_VFM",
    "GRADIENT_TOWERS",
    "HFCLIP",
    "HOOK_POINTS",
    "TINY_VFM",
    "TOY_MODELS",
    "VIT_ONLY_DEFAULTS",
    "CLIPWithVFM",
    "GradientMaps",
    "HookFn",
    "LoadedCLIP",
    "ResidualContributions",
    "ShortContextPlan",
    "SurgeryError",
    "SurgeryHandle",
    "TowerInfo",
    "Trace",
    "UnsupportedModelError",
    "WeightsNotAvailableError",
    "apply_surgery",
    "attention_maps",
    "available_towers",
    "check_image_batch",
    "class_texts",
    "class_token",
    "dense_forward",
    "dual_path_decomposition",
    "encode_prompts",
    "gradient_maps",
    "hf_clip_from_open_clip",
    "hf_siglip_from_open_clip",
    "image_normalisation",
    "is_surgery_applied",
    "load_clip",
    "load_tower",
    "load_vfm",
    "max_depth",
    "needs_class_texts",
    "patch_tokens",
    "pool_attention",
    "pretrained_for",
    "read_state_dict",
    "reference_transform",
    "register_configs",
    "residual_contributions",
    "short_context_exact",
    "short_context_plan",
    "text_token_features",
    "tiny_clipa",
    "tiny_eva02",
    "tiny_siglip",
    "tower_info",
    "tower_spec",
    "trace_forward",
    "weights_path",
    "with_spatial_prior",
    "with_vfm",
]
