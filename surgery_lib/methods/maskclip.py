"""MaskCLIP (Zhou et al., ECCV 2022, official ViT code): identity attention in the last block, its
residual and FFN kept; the key smoothing / prompt denoising post-processing is off (as in its released
configs). Its protocol: whole-image inference at 512 with the 85 templates."""

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method

METHODS = (
    Method(
        name="maskclip",
        title="MaskCLIP",
        color="#E69F00",
        config=SurgeryConfig(
            attention="identity",
            dual_path=False,
            depth=1,
            skip_ffn=False,
            feature_surgery=False,
            pos_embed_interp="bicubic",
        ),
        reference="Zhou et al., ECCV 2022 (MaskCLIP); github.com/chongzhou96/MaskCLIP",
        position=20,
        towers=("vit",),
        protocol={"protocol": "paper", "image_size": 512, "templates": "surgery85"},
    ),
)
