"""What a notebook shows on a tower its analysis does not apply to: the notebooks whose analysis reads
the class token of the residual stream (its attention row, its residual updates, the dual path's
decomposition) call :func:`skip_without_class_token` first; on a SigLIP-style tower they show the attention
pool's attention instead (the pool plays the class token's role) and skip the rest, saying why."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch.nn.functional as F
from PIL import Image

from surgery_lib.model import (
    LoadedCLIP,
    UnsupportedModelError,
    pool_attention,
    text_token_features,
    tower_info,
)
from surgery_lib.ui.map_figures import map_grid
from surgery_lib.ui.notebooks import skip_rest


def skip_without_class_token(loaded: LoadedCLIP, image: Image.Image, what: str) -> bool:
    """``False`` when ``loaded``'s tower has a class token in its residual stream. Otherwise show the
    attention pool's attention on ``image`` (SigLIP-style towers), say why the rest of the notebook does
    not apply (``what`` needs the class token) and skip it (:func:`~surgery_lib.ui.notebooks.skip_rest`);
    returns ``True``."""
    info = tower_info(loaded.model)
    if info.class_token == "learned":
        return False
    shown = ""
    if info.class_token == "pooled":
        batch = loaded.reference_preprocess(image.convert("RGB")).unsqueeze(0)
        probs, _ = pool_attention(loaded.model, batch)  # (1, heads, h, w)
        heads = probs[0].float()
        size = (batch.shape[-2], batch.shape[-1])
        maps = F.interpolate(heads[None], size=size, mode="bilinear", align_corners=False)[0]
        maps = (maps - maps.amin(dim=(1, 2), keepdim=True)) / (
            maps.amax(dim=(1, 2), keepdim=True) - maps.amin(dim=(1, 2), keepdim=True)
        ).clamp_min(1e-12)
        labels = [f"head {h}" for h in range(maps.shape[0])]
        figure = map_grid([image.resize(size[::-1])], [maps.permute(1, 2, 0)], labels, ["pool attention"])
        plt.show(figure)
        shown = (
            " Shown instead: where the attention pool's latent query looks, per head (min-max per map) — "
            "on this tower the pool makes the image embedding, as the class token does on CLIP."
        )
    skip_rest(
        f"{what}, but the {info.name} tower has no class token in its residual stream (its image "
        f"embedding is {info.class_token!r}; see README, Towers).{shown} Run this notebook on a tower with "
        "a class token (OpenAI-style ViTs, EVA02, Hugging Face CLIP)."
    )
    return True


def skip_without_token_text_features(loaded: LoadedCLIP) -> bool:
    """``False`` when ``loaded``'s text tower gives per-token features the way CLIP's does (causal, read at
    the end token); otherwise say why the rest of the notebook does not apply, skip it and return ``True``."""
    try:
        text_token_features(loaded.model, loaded.tokenizer(["a photo"]))
    except UnsupportedModelError as error:
        skip_rest(
            f"This notebook reads every text token's feature, which needs CLIP's causal text tower: {error}."
        )
        return True
    return False


__all__ = ["skip_without_class_token", "skip_without_token_text_features"]
