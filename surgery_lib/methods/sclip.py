"""SCLIP (Wang et al., ECCV 2024): the last block with the SUM of the q-q and k-k softmaxes
(correlative self-attention), residual and FFN kept. Its protocol: sliding windows 224 / stride 112,
the 80 OpenAI templates, a per-dataset logit scale, background where the top probability < 0.1."""

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method

SCLIP_PROTOCOL = {
    "protocol": "sliding",
    "window": 224,
    "stride": 112,
    "templates": "openai80",
    "logit_scale": {"voc": 65.0, "context": 50.0, "coco_object": 50.0, None: 40.0},
    "bg_threshold": 0.1,
    "pamr_steps": 0,
    "official": {"area_thd": {"voc": 0.1, None: None}},
}
"""SCLIP's main-table protocol (NACLIP's README protocol starts from it); ``official``: the values only
its official segmentor has (``--protocol official``: ``configs/cfg_voc21.py``'s ``area_thd``)."""

METHODS = (
    Method(
        name="sclip",
        title="SCLIP",
        color="#CC79A7",
        config=SurgeryConfig(
            attention="qq+kk",
            dual_path=False,
            depth=1,
            skip_ffn=False,
            feature_surgery=False,
            pos_embed_interp="bicubic-dino",
        ),
        reference="Wang et al., ECCV 2024 (SCLIP); github.com/wangf3014/SCLIP",
        position=30,
        towers=("vit",),
        protocol=SCLIP_PROTOCOL,
    ),
)
