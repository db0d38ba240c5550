"""Chefer et al.'s relevancy (ICCV 2021, rules 5-7 for self-attention) on the image encoder. ViT only.

* ``chefer``: the CLIP notebook's default ``start_layer=-1`` (the last block only);
* ``chefer-all-layers``: every block, the paper's rule.
"""

from surgery_lib.config import GradientConfig
from surgery_lib.methods.base import Method

_REFERENCE = "Chefer et al., ICCV 2021; github.com/hila-chefer/Transformer-MM-Explainability"

METHODS = (
    Method(
        name="chefer",
        title="Chefer relevancy",
        color="#8C564B",
        config=GradientConfig("chefer"),
        reference=_REFERENCE,
        position=120,
        towers=("vit",),
    ),
    Method(
        name="chefer-all-layers",
        title="Chefer, all layers",
        color="#C49C94",
        config=GradientConfig("chefer", start_layer=0),
        reference=_REFERENCE,
        position=121,
        towers=("vit",),
    ),
)
