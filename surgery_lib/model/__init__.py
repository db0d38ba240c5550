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
from surgery_lib.model.engine import (
    HOOK_POINTS,
    VIT_ONLY_DEFAULTS,
    HookFn,
    SurgeryError,
    Trace,
    dense_forward,
    max_depth,
)
from surgery_lib.model.gradients import GradientMaps, gradient_maps
from surgery_lib.model.introspection import (
    ResidualContributions,
    attention_maps,
    dual_path_decomposition,
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

__all__ = [
    "DEFAULT_MODEL",
    "HOOK_POINTS",
    "TOY_MODELS",
    "VIT_ONLY_DEFAULTS",
    "GradientMaps",
    "HookFn",
    "LoadedCLIP",
    "ResidualContributions",
    "SurgeryError",
    "SurgeryHandle",
    "TowerInfo",
    "Trace",
    "UnsupportedModelError",
    "WeightsNotAvailableError",
    "apply_surgery",
    "attention_maps",
    "check_image_batch",
    "class_token",
    "dense_forward",
    "dual_path_decomposition",
    "gradient_maps",
    "image_normalisation",
    "is_surgery_applied",
    "load_clip",
    "max_depth",
    "patch_tokens",
    "pretrained_for",
    "read_state_dict",
    "reference_transform",
    "register_configs",
    "residual_contributions",
    "text_token_features",
    "tower_info",
    "trace_forward",
    "weights_path",
    "with_spatial_prior",
]
