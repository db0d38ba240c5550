"""Grad-ECLIP (Zhao et al., ICML 2024): the gradient of the image-text cosine at the last attention
output (the class token's row, one head over the full width, as the official notebook runs it), times
each patch's value and the min-max q-k cosine of the class token with the patch, ReLU'd. ViT only."""

from surgery_lib.config import GradientConfig
from surgery_lib.methods.base import Method

METHODS = (
    Method(
        name="grad_eclip",
        title="Grad-ECLIP",
        color="#BCBD22",
        config=GradientConfig("grad_eclip"),
        reference=(
            "Zhao et al., Gradient-based Visual Explanation for Transformer-based CLIP, ICML 2024; "
            "github.com/Cyang-Zhao/Grad-Eclip"
        ),
        position=140,
        towers=("vit",),
    ),
)
