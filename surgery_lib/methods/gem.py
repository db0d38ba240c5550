"""GEM (Bousselham et al., CVPR 2024, code defaults): CLIP Surgery's dual path over the last 6 blocks
with GEM's self-self ensemble (q-q, k-k, v-v over L2-normalised projections), its adaptive temperature
and 1 clustering iteration (the paper's best: 2-3, per dataset). Its protocol: GEM's demo transform
(whole image at 448, the single template "a photo of a {}.")."""

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method

METHODS = (
    Method(
        name="gem",
        title="GEM",
        color="#F0E442",
        config=SurgeryConfig(
            attention="gem", self_attn_iters=1, feature_surgery=False, pos_embed_interp="bicubic-antialias"
        ),
        reference="Bousselham et al., CVPR 2024 (GEM); github.com/WalBouss/GEM",
        position=40,
        towers=("vit",),
        protocol={"protocol": "paper", "image_size": 448, "templates": "single"},
        knobs={"self_attn_iters": (0, 5)},
    ),
)
