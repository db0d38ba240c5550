"""Small open_clip models with timm image towers, built from a config (no download): a SigLIP-style
tower (attention-pool head, no class token) and an EVA02 tower (rotary embedding, SwiGLU, inner norm).

open_clip builds a timm tower by *name* (``timm.create_model(vision_cfg['timm_model_name'])``), so a
tower of another size needs a registered timm name: :func:`register_timm_tower` registers one that
builds the trunk from explicit keyword arguments. The tests, the golden files' towers (their
``meta.arch``) and notebooks run on such models with random weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

TRUNKS: dict[str, str] = {
    "siglip": "timm.models.vision_transformer.VisionTransformer",
    "eva02": "timm.models.eva.Eva",
}
"""The trunk classes :func:`register_timm_tower` can register, by family."""

_EVA02_CLIP = {
    "qkv_fused": False,
    "swiglu_mlp": True,
    "scale_mlp": True,
    "scale_attn_inner": True,
    "use_rot_pos_emb": True,
    "global_pool": "token",
}
"""The EVA02-CLIP settings of timm's ``eva02_*_clip_*`` models (beside the sizes)."""

_SIGLIP = {"class_token": False, "global_pool": "map"}
"""The SigLIP settings of timm's ``vit_*_siglip_*`` models (beside the sizes)."""


def _trunk_class(family: str) -> Callable[..., nn.Module]:
    if family == "siglip":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer
    if family == "eva02":
        from timm.models.eva import Eva

        return Eva
    raise ValueError(f"unknown timm tower family {family!r}; expected one of {sorted(TRUNKS)}")


def register_timm_tower(name: str, family: str, timm_kwargs: Mapping[str, object]) -> str:
    """Register the timm model ``name`` that builds a ``family`` trunk (``"siglip"``: timm
    ``VisionTransformer``; ``"eva02"``: timm ``Eva``) from ``timm_kwargs`` and the keyword arguments open_clip
    passes (``num_classes``, ``global_pool``). Registering the same name again replaces it. Returns ``name``.
    """
    from timm.models import _registry

    cls = _trunk_class(family)
    fixed = dict(timm_kwargs)

    def build(pretrained: bool = False, **kwargs: object) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name} is a project-built tower: it has no pretrained weights")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return cls(**{**fixed, **kwargs})

    build.__name__ = name
    build.__module__ = __name__
    _registry._model_entrypoints[name] = build  # the registry's own table (register_model refuses repeats)
    return name


def timm_clip(
    family: str, timm_kwargs: Mapping[str, object], clip_cfg: Mapping[str, object], seed: int | None = 0
):
    """An open_clip ``CustomTextCLIP`` whose image tower is a registered ``family`` trunk.

    Args:
        family: ``"siglip"`` or ``"eva02"``.
        timm_kwargs: the trunk's keyword arguments (sizes; the family's fixed settings are added).
        clip_cfg: ``open_clip.model.CustomTextCLIP`` keyword arguments (``embed_dim``, ``vision_cfg`` naming
            ``timm_model_name``, ``text_cfg``, ...).
        seed: ``torch.manual_seed`` before building (random weights), or ``None`` to leave the RNG alone.
    Returns:
        the model in eval mode.
    """
    from open_clip.model import CustomTextCLIP

    base = _SIGLIP if family == "siglip" else _EVA02_CLIP
    register_timm_tower(str(clip_cfg["vision_cfg"]["timm_model_name"]), family, {**base, **timm_kwargs})
    if seed is not None:
        torch.manual_seed(seed)
    return CustomTextCLIP(**clip_cfg).eval()


TINY_CONTEXT = 32
"""The text context of the tiny towers (tokens): the shipped data's longest prompts fit."""


def _text_cfg(width: int, context_length: int, causal: bool) -> dict[str, object]:
    cfg: dict[str, object] = {"context_length": context_length, "vocab_size": 49408, "width": width}
    cfg.update({"heads": 2, "layers": 2})
    if not causal:
        cfg.update(
            {"no_causal_mask": True, "pool_type": "last", "proj_bias": True, "norm_kwargs": {"eps": 1e-6}}
        )
    return cfg


def tiny_siglip(
    seed: int = 0, grid: int = 6, patch: int = 16, width: int = 64, depth: int = 6, heads: int = 2
):
    """A SigLIP-style open_clip model (timm ``VisionTransformer``, no class token, attention-pool head,
    ``logit_bias``; a bidirectional text tower pooled at the last token, CLIP's vocabulary) with random
    weights: input ``grid·patch`` pixels."""
    size = grid * patch
    name = f"surgery_tiny_siglip_{width}x{depth}_p{patch}_g{grid}"
    timm_kwargs = {
        "patch_size": patch,
        "embed_dim": width,
        "depth": depth,
        "num_heads": heads,
        "img_size": size,
    }
    cfg = {
        "embed_dim": width,
        "init_logit_bias": -10.0,
        "vision_cfg": {"image_size": size, "timm_model_name": name, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": _text_cfg(width, TINY_CONTEXT, causal=False),
    }
    return timm_clip("siglip", timm_kwargs, cfg, seed)


def tiny_eva02(
    seed: int = 0, grid: int = 6, patch: int = 16, width: int = 64, depth: int = 6, heads: int = 2
):
    """An EVA02-CLIP-style open_clip model (timm ``Eva``: class token, separate q/k/v with q and v biases,
    rotary embedding, inner norm, SwiGLU) with random weights and a causal text tower: input
    ``grid·patch`` pixels."""
    size = grid * patch
    name = f"surgery_tiny_eva02_{width}x{depth}_p{patch}_g{grid}"
    timm_kwargs = {
        "patch_size": patch,
        "embed_dim": width,
        "depth": depth,
        "num_heads": heads,
        "img_size": size,
        "mlp_ratio": 4 * 2 / 3,
        "ref_feat_shape": (grid, grid),
    }
    cfg = {
        "embed_dim": 48,
        "vision_cfg": {"image_size": size, "timm_model_name": name, "timm_pool": "token", "timm_proj": None},
        "text_cfg": _text_cfg(48, TINY_CONTEXT, causal=True),
    }
    model = timm_clip("eva02", timm_kwargs, cfg, seed)
    _spread_eva_parameters(model, seed)
    return model


@torch.no_grad()
def _spread_eva_parameters(model: nn.Module, seed: int) -> None:
    """timm initialises the EVA head near zero (``head_init_scale``) and the class token, layer norms and
    biases to constants; draw them at random so that every path of the tower matters in the tests."""
    g = torch.Generator().manual_seed(seed + 1)
    trunk = model.visual.trunk
    for name, p in trunk.named_parameters():
        if name.startswith("head.") or name == "cls_token" or p.ndim == 1:
            base = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))


def tiny_clipa(seed: int = 0, grid: int = 4, patch: int = 8, width: int = 64, depth: int = 6):
    """A native open_clip ViT pooled by the mean patch token, as CLIPA is (``pool_type='avg'``,
    ``final_ln_after_pool``, no ``ln_pre``), with random weights and a bidirectional text tower pooled at
    the last token: input ``grid·patch`` pixels."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    vision = CLIPVisionCfg(
        layers=depth,
        width=width,
        head_width=32,
        patch_size=patch,
        image_size=grid * patch,
        pool_type="avg",
        final_ln_after_pool=True,
        no_ln_pre=True,
    )
    text = CLIPTextCfg(**_text_cfg(32, TINY_CONTEXT, causal=False))
    return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).eval()


TINY_TOWERS: dict[str, Callable[..., nn.Module]] = {
    "tiny-siglip": tiny_siglip,
    "tiny-eva02": tiny_eva02,
    "tiny-clipa": tiny_clipa,
}
"""Names :func:`~surgery_lib.model.loading.load_clip` accepts for the project-built towers of other
families (random weights: for exercising code paths, e.g. ``SURGERY_MODEL=tiny-siglip`` in the notebooks;
their maps mean nothing)."""

_SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def load_tiny(name: str, pretrained: str | None = "default", device: str | torch.device = "cpu"):
    """A :data:`TINY_TOWERS` model as a :class:`~surgery_lib.model.loading.LoadedCLIP`: random weights
    (seed 0), CLIP's tokenizer with the towers' :data:`TINY_CONTEXT`-token context, the reference
    preprocessing with the family's normalisation (SigLIP: 0.5 / 0.5).

    Raises:
        ValueError: ``pretrained`` other than ``"default"`` or ``None`` (these towers have no weights).
    """
    import open_clip

    from surgery_lib.model.loading import LoadedCLIP
    from surgery_lib.model.preprocess import OPENAI_MEAN, OPENAI_STD, reference_transform

    if pretrained not in ("default", None):
        raise ValueError(
            f"{name} is built by the project with random weights: it has no pretrained {pretrained!r}"
        )
    model = TINY_TOWERS[name]().to(device)
    mean, std = _SIGLIP_MEAN_STD if name == "tiny-siglip" else (OPENAI_MEAN, OPENAI_STD)
    model.visual.preprocess_cfg = {"mean": mean, "std": std}
    size = model.visual.image_size
    size = int(size if isinstance(size, int) else size[0])
    return LoadedCLIP(
        model=model,
        tokenizer=open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CONTEXT),
        preprocess=open_clip.image_transform(size, is_train=False, mean=mean, std=std),
        reference_preprocess=reference_transform(size, mean, std),
        name=name,
        pretrained=None,
        image_size=size,
    )
