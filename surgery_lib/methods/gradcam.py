"""Grad-CAM (Selvaraju et al., ICCV 2017) on CLIP, as pytorch-grad-cam computes it: a ViT's last
``ln_1`` output or a ModifiedResNet's ``layer4`` output, weighted by the mean gradient."""

from surgery_lib.config import GradientConfig
from surgery_lib.methods.base import Method

METHODS = (
    Method(
        name="gradcam",
        title="Grad-CAM",
        color="#000000",
        config=GradientConfig("gradcam"),
        reference="Selvaraju et al., ICCV 2017 (Grad-CAM); github.com/jacobgil/pytorch-grad-cam",
        position=100,
    ),
)
