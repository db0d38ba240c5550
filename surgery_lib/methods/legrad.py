"""LeGrad (Bousselham et al., 2024): for each of the last two blocks, the gradient of the image-text
similarity of that block's token-mean embedding with respect to the block's attention probabilities,
ReLU'd and averaged over heads and query rows, summed over the blocks. ViT only."""

from surgery_lib.config import GradientConfig
from surgery_lib.methods.base import Method

METHODS = (
    Method(
        name="legrad",
        title="LeGrad",
        color="#17BECF",
        config=GradientConfig("legrad"),
        reference=(
            "Bousselham et al., LeGrad: An Explainability Method for Vision Transformers via Feature "
            "Formation Sensitivity, arXiv 2404.03214 (2024); github.com/WalBouss/LeGrad"
        ),
        position=130,
        towers=("vit",),
    ),
)
