"""Raw CLIP: the vanilla forward, plain cosine similarity between every token and the text."""

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method

METHODS = (
    Method(
        name="raw",
        title="raw CLIP",
        color="#7F7F7F",
        config=SurgeryConfig.off(),
        reference="Radford et al., ICML 2021 (CLIP)",
        position=0,
    ),
)
