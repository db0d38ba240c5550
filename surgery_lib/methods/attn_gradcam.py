"""Attention Grad-CAM (Chefer et al.'s ``generate_attn_gradcam``): Grad-CAM on the last block's
attention probabilities. ViT only."""

from surgery_lib.config import GradientConfig
from surgery_lib.methods.base import Method

METHODS = (
    Method(
        name="attn_gradcam",
        title="attention Grad-CAM",
        color="#444444",
        config=GradientConfig("attn_gradcam"),
        reference=(
            "Chefer et al., ICCV 2021 (baseline); github.com/hila-chefer/Transformer-MM-Explainability"
        ),
        position=110,
        towers=("vit",),
    ),
)
