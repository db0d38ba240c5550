"""Which method runs on which image tower: the method × tower matrix, computed by running each method.

Nothing here is written by hand: :func:`method_tower_matrix` runs every method of the registry on each
tower given (dense presets through the engine, gradient explainers through ``gradient_maps``) on one
small random image and records ✓, or the refusal the library raises (``UnsupportedModelError``) in a
few words. :func:`project_towers` builds one small model per tower family the project supports, so the
README's and notebook 11's matrices come from the code they describe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.config import GradientConfig
from surgery_lib.methods import GRADIENT_METHODS, METHODS, get_method, method_names
from surgery_lib.model import (
    GRADIENT_TOWERS,
    TINY_VFM,
    UnsupportedModelError,
    class_texts,
    dense_forward,
    gradient_maps,
    hf_clip_from_open_clip,
    hf_siglip_from_open_clip,
    tiny_clipa,
    tiny_eva02,
    tiny_siglip,
    tower_info,
    with_vfm,
)

_REASONS = (
    ("has no variant for the ModifiedResNet", "ViT only"),
    ("class token", "needs a class token"),
    ("needs the attention of a ViT", "needs ViT attention"),
    ("only, not on", None),  # gradient explainers: named by what they need, below
)

_NEEDS = {
    ("learned",): "needs a class token",
    ("learned", "pooled"): "needs a class token or an attention pool",
}


MIN_GRID = 8
"""Patches per side of the matrix's test image at least (its native size otherwise): SC-CLIP's outlier test
needs 31 patch tokens, and a tower is judged, not an input size."""


def _reason(method: str, error: UnsupportedModelError) -> str:
    """A few words for the README's cell: why ``method`` does not run on the tower."""
    message = str(error)
    for needle, words in _REASONS:
        if needle in message:
            if words is not None:
                return words
            explainer = GRADIENT_METHODS[method].explainer
            return _NEEDS.get(GRADIENT_TOWERS[explainer], "not defined")
    return message.split(":")[0][:60]


def _runs(model: nn.Module, method: str, images: torch.Tensor, texts: torch.Tensor) -> str:
    """ "✓" or why not; a method that needs a vision foundation model runs with a small random one."""
    config = METHODS.get(method) or GRADIENT_METHODS[method]
    if get_method(method).needs_vfm:
        try:
            model = with_vfm(model, TINY_VFM)
        except UnsupportedModelError as error:
            return "✗ " + _reason(method, error)
    try:
        with torch.no_grad():
            if not isinstance(config, GradientConfig):
                with class_texts(texts):
                    dense_forward(model, images, config)
                return "✓"
        empty = texts[0] if tower_info(model).class_token == "pooled" else None
        gradient_maps(model, images, texts, config, empty_text_feature=empty)
    except UnsupportedModelError as error:
        return "✗ " + _reason(method, error)
    return "✓"


@torch.no_grad()
def _embed_dim(model: nn.Module, images: torch.Tensor) -> int:
    return int(dense_forward(model, images[:1], METHODS["raw"])[0].shape[-1])


def method_tower_matrix(
    towers: Mapping[str, nn.Module], methods: list[str] | None = None
) -> dict[str, dict[str, str]]:
    """Run every method on every tower.

    Args:
        towers: a column name -> a model (its native input size is used).
        methods: the rows (default: every method of the registry, in its order).
    Returns:
        ``{method: {tower: "✓" or "✗ <why not>"}}``.
    """
    matrix: dict[str, dict[str, str]] = {m: {} for m in methods or method_names()}
    for column, model in towers.items():
        stride = tower_info(model).stride
        grid = [max(g, MIN_GRID) for g in tower_info(model).pos_grid]
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(1, 3, grid[0] * stride[0], grid[1] * stride[1], generator=generator)
        texts = F.normalize(torch.randn(2, _embed_dim(model, images), generator=generator), dim=-1)
        for method in matrix:
            matrix[method][column] = _runs(model, method, images, texts)
    return matrix


def markdown_matrix(matrix: Mapping[str, Mapping[str, str]]) -> str:
    """The matrix as a Markdown table (methods as rows, towers as columns)."""
    columns = list(next(iter(matrix.values())))
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| `{m}` | " + " | ".join(row[c] for c in columns) + " |" for m, row in matrix.items()]
    return "\n".join(lines)


def project_towers() -> dict[str, Callable[[], nn.Module]]:
    """One small model per supported tower family, by column name (built on demand, random weights
    except the shipped toy models; the Hugging Face columns are the same weights as ``toy-vit-v2`` and
    the tiny SigLIP, mapped into ``transformers``' ``CLIPModel`` / ``SiglipModel``, which need the ``hf``
    extra)."""
    from surgery_lib.model import load_clip

    return {
        "OpenAI-style ViT (toy-vit-v2)": lambda: load_clip("toy-vit-v2").model,
        "ModifiedResNet (toy-rn)": lambda: load_clip("toy-rn").model,
        "EVA02 (timm)": tiny_eva02,
        "SigLIP (timm)": tiny_siglip,
        "CLIPA (mean pooling)": tiny_clipa,
        "HF CLIPModel": lambda: hf_clip_from_open_clip(load_clip("toy-vit-v2").model),
        "HF SiglipModel": lambda: hf_siglip_from_open_clip(tiny_siglip()),
    }
