"""NACLIP (Hajimiri et al., WACV 2025, ``arch='reduced'``): the last block with k-k attention plus a
Gaussian neighbourhood prior (σ = 5 patches), no residual, no FFN; without PAMR (the paper's main row;
its README protocol adds PAMR: sliding windows as SCLIP's, logit scale 40, PAMR 10 steps)."""

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method
from surgery_lib.methods.sclip import SCLIP_PROTOCOL

METHODS = (
    Method(
        name="naclip",
        title="NACLIP",
        color="#D55E00",
        config=SurgeryConfig(
            attention="kk",
            dual_path=False,
            depth=1,
            keep_residual=False,
            spatial_prior_sigma=5,
            feature_surgery=False,
            pos_embed_interp="bicubic-dino",
        ),
        reference="Hajimiri et al., WACV 2025 (NACLIP); github.com/sinahmr/NACLIP",
        position=60,
        towers=("vit",),
        protocol={  # SCLIP's windows and threshold; official: configs/cfg_voc21.py runs the whole image
            **SCLIP_PROTOCOL,
            "logit_scale": 40.0,
            "pamr_steps": 10,
            "official": {"window": {"voc": 0, None: None}},
        },
        knobs={"spatial_prior_sigma": (0, 10)},
    ),
)
