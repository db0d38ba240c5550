"""CLIP Surgery (Li et al., arXiv 2304.05653) and its two ablations.

* ``surgery``: v-v attention on a dual path over the last 6 blocks, FFN skipped on the new path,
  feature surgery on; its own protocol is the whole image at the native size with the 85 templates.
* ``surgery-no-fs``: architecture surgery alone (the authors' open-vocabulary segmentation setting).
* ``feature-surgery-only``: feature surgery on vanilla CLIP's tokens.
"""

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method

_REFERENCE = "Li et al., arXiv 2304.05653 (CLIP Surgery); github.com/xmed-lab/CLIP_Surgery"
_PROTOCOL = {"protocol": "paper", "templates": "surgery85"}

METHODS = (
    Method(
        name="surgery",
        title="CLIP Surgery",
        color="#0072B2",
        config=SurgeryConfig.paper(),
        reference=_REFERENCE,
        position=10,
        protocol=_PROTOCOL,
    ),
    Method(
        name="surgery-no-fs",
        title="CLIP Surgery, no FS",
        color="#56B4E9",
        config=SurgeryConfig.paper().replace(feature_surgery=False),
        reference=_REFERENCE,
        position=11,
        protocol=_PROTOCOL,
    ),
    Method(
        name="feature-surgery-only",
        title="feature surgery only",
        color="#A6CEE3",
        config=SurgeryConfig.off().replace(feature_surgery=True),
        reference=_REFERENCE,
        position=12,
    ),
)
