"""Vision foundation models (VFMs) beside CLIP: ProxyCLIP's proxy attention reads their patch features.

A VFM is a timm ``VisionTransformer`` (DINO ViT-B/8 by default, DINOv2 optional). It reaches a method's
forward paired with CLIP in :class:`CLIPWithVFM` (:func:`with_vfm`): a small module that holds both and
answers every CLIP attribute (``visual``, ``encode_text``, ``logit_scale``...) from the CLIP, so the
whole library takes it where it takes a CLIP. Neither model is changed.

Loading (:func:`load_vfm`) follows the rules of CLIP weights (:mod:`surgery_lib.model.loading`): a
local checkpoint file, or the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``, timm's hub copies); with
``HF_HUB_OFFLINE=1`` or an unreachable hub, missing weights fail at once with
:class:`~surgery_lib.model.loading.WeightsNotAvailableError` saying how to supply them.

Features (:func:`vfm_patch_features`): DINO's ``get_intermediate_layers(x)[0]`` patch rows — the last
block's output after the final LayerNorm — with DINO's own positional resampling at a non-native grid
(bicubic, ``scale_factor = ((I + 0.1)/g, (J + 0.1)/g)``), not timm's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from surgery_lib.model.adapters import UnsupportedModelError, _interpolate_grid, check_clip
from surgery_lib.model.loading import WeightsNotAvailableError, read_state_dict

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""The normalisation DINO and DINOv2 were trained with (ProxyCLIP's ``transforms.Normalize``)."""

DEFAULT_VFM = "dino_vitb8"
"""ProxyCLIP's default VFM (its main table: DINO ViT-B/8)."""

VFM_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "dino_vitb8": "vit_base_patch8_224.dino",
        "dino_vitb16": "vit_base_patch16_224.dino",
        "dino_vits8": "vit_small_patch8_224.dino",
        "dino_vits16": "vit_small_patch16_224.dino",
        "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
        "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    }
)
"""The VFMs by their torch.hub names (as ProxyCLIP names them) -> timm model names (``name.tag``)."""


def _timm_vit() -> type:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


def check_vfm(vfm: object) -> nn.Module:
    """``vfm`` after checking that it is a timm ``VisionTransformer`` with a patch-embedding convolution.

    Raises:
        UnsupportedModelError: naming the type otherwise.
    """
    if not isinstance(vfm, _timm_vit()):
        raise UnsupportedModelError(
            f"a vision foundation model must be a timm VisionTransformer (e.g. load_vfm('{DEFAULT_VFM}')), "
            f"got {type(vfm).__module__}.{type(vfm).__qualname__}"
        )
    if not isinstance(getattr(vfm.patch_embed, "proj", None), nn.Conv2d) or vfm.pos_embed is None:
        raise UnsupportedModelError("the VFM needs a convolutional patch embedding and absolute positions")
    return vfm


def _how_to_supply(name: str, timm_name: str) -> str:
    return (
        f"Supply the weights of the VFM {name} (timm {timm_name}) in one of these ways:\n"
        f"  - a local file: load_vfm({name!r}, checkpoint='/path/to/weights.safetensors|.pth');\n"
        f"  - the Hugging Face cache (HF_HOME/HF_HUB_CACHE), filled on a machine with internet by\n"
        f'    python -c "import timm; timm.create_model({timm_name!r}, pretrained=True)"\n'
        f"    and copied here (with HF_HUB_OFFLINE=1 set)."
    )


def _cached_hub_file(timm_name: str, cache_dir: str | None) -> str | None:
    """The timm hub weights of ``timm_name`` already in the HF cache, else ``None``."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def load_vfm(
    name: str = DEFAULT_VFM, checkpoint: str | Path | None = None, cache_dir: str | None = None
) -> nn.Module:
    """A vision foundation model in eval mode, float32, on the CPU.

    Args:
        name: a key of :data:`VFM_NAMES` (``dino_vitb8``: DINO ViT-B/8) or a timm model name.
        checkpoint: a local weights file (timm's key names; DINO's own checkpoints use them too).
        cache_dir: the Hugging Face cache folder (default: ``HF_HUB_CACHE``).
    Raises:
        WeightsNotAvailableError: the weights are neither given, nor cached, nor downloadable.
        ValueError: an unknown name.
    """
    import timm

    timm_name = VFM_NAMES.get(name, name)
    architecture = timm_name.split(".")[0]
    if not timm.is_model(architecture):
        raise ValueError(f"unknown VFM {name!r}; known: {', '.join(VFM_NAMES)} (or a timm model name)")
    if checkpoint is not None:
        model = timm.create_model(architecture, pretrained=False, num_classes=0, dynamic_img_size=False)
        model.load_state_dict(read_state_dict(checkpoint), strict=True)
        return check_vfm(model.float().eval())
    source = _cached_hub_file(timm_name, cache_dir)
    if source is None and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise WeightsNotAvailableError(
            f"weights for the VFM {name} are not on this machine and HF_HUB_OFFLINE is set.\n"
            + _how_to_supply(name, timm_name)
        )
    overlay = {"file": source} if source is not None else None
    try:
        model = timm.create_model(
            timm_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay, cache_dir=cache_dir
        )
    except (OSError, RuntimeError) as err:
        raise WeightsNotAvailableError(
            f"weights for the VFM {name} could not be fetched ({err}).\n" + _how_to_supply(name, timm_name)
        ) from err
    return check_vfm(model.float().eval())


def dino_from_state_dict(state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None) -> nn.Module:
    """A DINO-style timm ``VisionTransformer`` (class token, LayerNorm eps 1e-6, exact GELU, qkv bias) built
    from its state dict (timm key names), loaded strictly; patch size, width, depth, MLP ratio and native
    grid are read from the weights.

    Args:
        num_heads: not in the weights; default ``width // 64`` (DINO's head width).
    """
    width = int(state_dict["cls_token"].shape[-1])
    patch = int(state_dict["patch_embed.proj.weight"].shape[-1])
    depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    hidden = int(state_dict["blocks.0.mlp.fc1.weight"].shape[0])
    side = round((state_dict["pos_embed"].shape[1] - 1) ** 0.5)
    model = _timm_vit()(
        img_size=side * patch,
        patch_size=patch,
        embed_dim=width,
        depth=depth,
        num_heads=num_heads or max(width // 64, 1),
        mlp_ratio=hidden / width,
        qkv_bias=True,
        num_classes=0,
    )
    model.load_state_dict(dict(state_dict), strict=True)
    return model.float().eval()


def vfm_patch_features(vfm: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The VFM's patch features: the last block's output after the final norm, prefix tokens dropped.

    The positional embedding is resampled as DINO's ``interpolate_pos_encoding`` does at a non-native
    grid (the class token's position kept).

    Args:
        images: ``(B, 3, H, W)`` normalised as the VFM expects (ImageNet's statistics for DINO).
    Returns:
        features ``(B, I·J, C)`` (row-major) and the grid ``(I, J) = (H // p, W // p)``.
    """
    vfm = check_vfm(vfm)
    x = vfm.patch_embed.proj(images.to(vfm.patch_embed.proj.weight.dtype))  # (B, C, I, J)
    grid = (int(x.shape[-2]), int(x.shape[-1]))
    x = vfm.patch_embed.norm(x.flatten(2).transpose(1, 2))
    pos = vfm.pos_embed[0]
    with_prefix = 0 if vfm.no_embed_class else vfm.num_prefix_tokens
    old = round((pos.shape[0] - with_prefix) ** 0.5)
    patch_pos = _interpolate_grid(pos[with_prefix:], (old, old), grid, "bicubic-dino")
    prefix = [t.expand(x.shape[0], -1, -1) for t in (vfm.cls_token, vfm.reg_token) if t is not None]
    if vfm.no_embed_class:
        x = torch.cat([*prefix, x + patch_pos], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1) + torch.cat([pos[:with_prefix], patch_pos], dim=0)
    x = vfm.norm_pre(vfm.pos_drop(x))
    for block in vfm.blocks:
        x = block(x)
    return vfm.norm(x)[:, vfm.num_prefix_tokens :], grid


class CLIPWithVFM(nn.Module):
    """A CLIP and a vision foundation model, for the methods that read both (ProxyCLIP).

    Every attribute other than ``clip``, ``vfm``, ``vfm_name``, ``vfm_mean`` and ``vfm_std`` is the
    CLIP's (``visual``, ``encode_text``, ``encode_image``, ``logit_scale``...), so the library takes the
    pair wherever it takes a CLIP; calling it calls the CLIP. Neither model is changed.

    Attributes:
        clip: the CLIP model; vfm: the VFM (:func:`check_vfm`); vfm_name: how it is named (tables, UI).
        vfm_mean, vfm_std: the normalisation the VFM expects (ImageNet's).
    """

    def __init__(
        self,
        clip: nn.Module,
        vfm: nn.Module,
        vfm_name: str = DEFAULT_VFM,
        vfm_mean: Sequence[float] = IMAGENET_MEAN,
        vfm_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        check_clip(clip)
        if isinstance(clip, CLIPWithVFM):
            raise UnsupportedModelError("this CLIP is already paired with a VFM")
        self.clip = clip
        self.vfm = check_vfm(vfm)
        self.vfm_name = vfm_name
        self.vfm_mean = tuple(float(m) for m in vfm_mean)
        self.vfm_std = tuple(float(s) for s in vfm_std)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("clip"), name)

    def forward(self, *args, **kwargs):
        return self.clip(*args, **kwargs)


TINY_VFM = "tiny-dino"
"""The name of :func:`tiny_dino` for :func:`with_vfm` (random weights: tests, toy models, the Explorer's
toys; no download)."""


def tiny_dino(model: nn.Module, seed: int = 0) -> nn.Module:
    """A small random-weight DINO-style VFM for ``model``'s CLIP: half its patch size, so its native grid
    is twice the CLIP's (as DINO ViT-B/8 beside ViT-B/16); width 96, 3 heads, 2 blocks. Deterministic in
    ``seed``; for tests and toy models only (its features mean nothing)."""
    visual = check_clip(model)
    patch = int(visual.conv1.kernel_size[0]) if isinstance(getattr(visual, "conv1", None), nn.Conv2d) else 16
    size = visual.image_size if hasattr(visual, "image_size") else 224
    size = int(size if isinstance(size, int) else size[0])
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        vfm = _timm_vit()(
            img_size=size, patch_size=max(patch // 2, 1), embed_dim=96, depth=2, num_heads=3, num_classes=0
        )
    finally:
        torch.random.set_rng_state(state)
    return vfm.float().eval()


def with_vfm(model: nn.Module, vfm: nn.Module | str = DEFAULT_VFM) -> CLIPWithVFM:
    """``model`` paired with a VFM: a module, a name for :func:`load_vfm` (default DINO ViT-B/8), or
    :data:`TINY_VFM` for :func:`tiny_dino`."""
    if isinstance(vfm, str):
        module = tiny_dino(model) if vfm == TINY_VFM else load_vfm(vfm)
        return CLIPWithVFM(model, module, vfm_name=vfm)
    return CLIPWithVFM(model, vfm, vfm_name=type(vfm).__name__)


__all__ = [
    "DEFAULT_VFM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TINY_VFM",
    "VFM_NAMES",
    "CLIPWithVFM",
    "check_vfm",
    "dino_from_state_dict",
    "load_vfm",
    "tiny_dino",
    "vfm_patch_features",
    "with_vfm",
]
