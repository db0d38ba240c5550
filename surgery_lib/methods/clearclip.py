"""ClearCLIP (Lan et al., ECCV 2024): the last block with q-q attention, no residual, no FFN. Its
protocol: short side 448, windows 448 / stride 224, the 80 templates, logit scale 50 and a per-dataset
background threshold."""

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method

METHODS = (
    Method(
        name="clearclip",
        title="ClearCLIP",
        color="#009E73",
        config=SurgeryConfig(
            attention="qq",
            dual_path=False,
            depth=1,
            keep_residual=False,
            feature_surgery=False,
            pos_embed_interp="bicubic-dino",
        ),
        reference="Lan et al., ECCV 2024 (ClearCLIP); github.com/mc-lan/ClearCLIP",
        position=50,
        towers=("vit",),
        protocol={
            "protocol": "sliding",
            "image_size": 448,
            "window": 448,
            "stride": 224,
            "templates": "openai80",
            "logit_scale": 50.0,
            "bg_threshold": {"voc": 0.5, "context": 0.15, "coco_object": 0.4, None: 0.5},
            "pamr_steps": 0,
            "official": {
                "window": {"cityscapes": 224, None: None},
                "stride": {"cityscapes": 224, None: None},
            },
        },
    ),
)
