"""ResCLIP (Yang et al., CVPR 2025): residual cross-correlation self-attention (RCS) and semantic
feedback refinement (SFR), a plug-in over a training-free dense method's last block.

Written from the paper and the official code (github.com/yvhangyang/ResCLIP, ``clip/model.py``,
``resclip_segmentor.py``, ``configs/cfg_voc21.py``). Notation: ``L`` blocks numbered from 0, ``s =
d_head^-0.5``, ``N`` patches on the ``h×w`` grid (row-major), ``p`` prefix tokens (the class token).

* **RCS.** Blocks ``0 … L−2`` are standard; their q-k softmax ``A_l = softmax(s·q kᵀ)`` (per head, class
  token included) is kept for the blocks :func:`rcs_blocks` names (ViT-B/16: 5, 6, 7, 8, the official
  ``attn_map[5:9]``), and ``A_rcs`` is their mean. The last block's attention of the base method ``A′``
  is mixed with it *after* the softmax: ``A = τ_r·((1−λ_r)·A′ + λ_r·A_rcs)``, τ_r, λ_r = 2.0, 0.3.
* **Base methods** (the preset's fields): NACLIP (``attention="kk"``, σ = 5, no residual, no FFN):
  ``A′ = softmax(mix(s·k kᵀ) + Ω)``; ClearCLIP (``"qq"``, no residual, no FFN): ``softmax(mix(s·q qᵀ))``;
  SCLIP (``"qq+kk"``, residual and FFN kept): ``softmax(mix(s·q qᵀ)) + softmax(mix(s·k kᵀ))``; and, as
  this project's own combination (not in the paper), CLIP Surgery's dual path (``"vv"`` over the last 6
  blocks, FFN skipped on the new path) with the ResCLIP attention in its last new-path block.
  ``mix(G) = τ_s·((1−λ_s)·G + λ_s·Φ)`` with SFR's matrix Φ, the identity without it.
* **SFR** (:func:`sfr_matrix`, needs the class text features): a first pass (RCS, no Φ) gives a class
  map — patch-text cosines, bilinear to the image size, ResCLIP's PAMR (10 steps, dilations 8 and 16,
  :func:`resclip_pamr`), ``softmax(40·ℓ)``, argmax with the classes whose top probability is < 0.5 set to
  class 0, the most frequent pixel class per patch — from which Φ is built (co-membership, the path
  test, a 1-D Gaussian blur of each row, normalised, **cast to float16** as the official code does);
  the second pass runs the last block again with Φ (τ_s, λ_s = 2.2, 0.7).

Everything is per image (the official code assumes batch 1): any batch size gives the same per image.
The official segmentor's per-dataset settings (τ, λ, the 0.5 threshold) are VOC21's here, as in the
golden files.

How to call it. The engine's forward gets images only, so the methods with SFR (``resclip``,
``resclip-clearclip``, ``resclip-sclip``, ``resclip-surgery``) need their class texts given: either
:func:`resclip_forward` ``(model, images, config, texts)`` (tokens, grid and the first pass's class map),
or the public path (``encode_image_tokens``, ``dense_forward``) inside ``with class_texts(texts):``
(:func:`surgery_lib.model.class_texts`).
Without texts their forward raises :class:`~surgery_lib.model.engine.SurgeryError`. ``resclip-rcs``
(RCS alone, NACLIP base) is a plain forward. ViT towers only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods.base import Method
from surgery_lib.model.adapters import adapter_for
from surgery_lib.model.attention import attend, attention_weights, spatial_prior
from surgery_lib.model.engine import (
    SurgeryError,
    check_config,
    class_texts,  # noqa: F401 (re-exported: the texts ResCLIP's semantic feedback reads)
    current_class_texts,
    dense_forward,
    register_forward,
)

RCS_WEIGHTS: tuple[float, float] = (2.0, 0.3)
"""``(τ_r, λ_r)`` of RCS (``configs/cfg_voc21.py``, ``attn_rcs_weights``)."""
SFR_WEIGHTS: tuple[float, float] = (2.2, 0.7)
"""``(τ_s, λ_s)`` of SFR (``attn_sfr_weights``)."""
SFR_LOGIT_SCALE = 40.0
"""The temperature of the first pass's class probabilities (the segmentor's ``logit_scale``)."""
SFR_THRESHOLD = 0.5
"""Pixels whose top class probability is below it count as class 0 (``temp_thd``)."""
SFR_SIGMA = 5.0
"""σ of the 1-D Gaussian blur of Φ's rows, in patches (the segmentor's ``gaussian_std``)."""
PAMR_STEPS = 10
PAMR_DILATIONS: tuple[int, ...] = (8, 16)
"""ResCLIP's first-pass PAMR (hard-coded in ``create_logit_temp``)."""

SFR_FORWARD = "resclip"
"""The registered forward with SFR (needs class texts)."""
RCS_FORWARD = "resclip-rcs"
"""The registered forward with RCS alone."""

_SINGLE_PATH_KINDS = ("kk", "qq", "qq+kk", "qk", "vv")
"""The base attentions ResCLIP's last block takes (the official strategies naclip/resclip, clearclip,
sclip, vanilla; and v-v for CLIP Surgery's base)."""


@dataclass(frozen=True)
class ResCLIPOutput:
    """What :func:`resclip_forward` returns.

    Attributes:
        tokens: ``(B, 1 + h·w, D)`` projected tokens, image embedding first, not normalised.
        grid: the token grid ``(h, w)``.
        class_map: ``(B, h, w)`` int64, SFR's first-pass class map (text indices); ``None`` without SFR.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    class_map: torch.Tensor | None


def rcs_blocks(num_blocks: int) -> range:
    """The blocks whose q-k attention RCS averages: ``5L/12 … 9L/12 − 1`` (floors), i.e. the official
    5, 6, 7, 8 on a 12-block tower (ViT-B/16; the code hard-codes them) and the same share of the depth
    on others (24 blocks: 10 … 17).

    Raises:
        SurgeryError: a tower too shallow to hold one such block before its last.
    """
    blocks = range(5 * num_blocks // 12, 9 * num_blocks // 12)
    if len(blocks) == 0 or blocks[-1] >= num_blocks - 1:
        raise SurgeryError(
            f"ResCLIP's RCS needs at least 2 blocks of which one before the last, got {num_blocks}"
        )
    return blocks


# --- PAMR as ResCLIP runs it -----------------------------------------------------------------------

_NINE: tuple[tuple[int, int], ...] = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_EIGHT: tuple[tuple[int, int], ...] = tuple(o for o in _NINE if o != (0, 0))


def _shifted(x: torch.Tensor, dilations: Sequence[int], offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, len(dilations)·len(offsets), H, W)``: the values at ``p + d·offset``
    (borders replicated), dilation-major, offsets in row-major 3×3 order."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for dy, dx in offsets:
            out.append(padded[..., d * (1 + dy) : d * (1 + dy) + h, d * (1 + dx) : d * (1 + dx) + w])
    return torch.stack(out, dim=2)


def resclip_pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    steps: int = PAMR_STEPS,
    dilations: Sequence[int] = PAMR_DILATIONS,
) -> torch.Tensor:
    """PAMR as ResCLIP's (and SCLIP's, NACLIP's) ``pamr.py`` computes it.

    This differs from :func:`surgery_lib.maps.pamr.pamr`: σ_c is the *unbiased* standard deviation over
    the 9 samples of every dilation's 3×3 window together (18 for two dilations, the centre counted
    once per dilation); the kernel is ``−|I_c(p) − I_c(n)| / (1e-8 + 0.1·σ_c)`` averaged over channels;
    one softmax runs over the 8 neighbours of all dilations together (16), and the pixel is not its own
    neighbour. Then ``steps`` times ``ℓ(p) ← Σ_n a_n ℓ(n)``, summed over the neighbours in the official
    order one at a time (the same numbers as its stacked sum, without a 16× larger tensor).

    Args:
        image: ``(B, C, H, W)`` the image as given to the model.
        masks: ``(B, T, H, W)`` class maps at the image size.
    Returns:
        ``(B, T, H, W)`` float32.
    """
    x = image.float()
    std = _shifted(x, dilations, _NINE).std(dim=2, keepdim=True)  # (B, C, 1, H, W), unbiased
    diff = (x[:, :, None] - _shifted(x, dilations, _EIGHT)).abs()
    affinity = torch.softmax((-diff / (1e-8 + 0.1 * std)).mean(dim=1, keepdim=True), dim=2)
    weights = affinity.unbind(dim=2)  # per neighbour (B, 1, H, W), dilation-major
    h, w = masks.shape[-2:]
    out = masks.float()
    term = torch.empty_like(out)
    for _ in range(steps):
        total: torch.Tensor | None = None
        neighbour = iter(weights)
        for d in dilations:
            padded = F.pad(out, (d, d, d, d), mode="replicate")
            for dy, dx in _EIGHT:
                value = padded[..., d * (1 + dy) : d * (1 + dy) + h, d * (1 + dx) : d * (1 + dx) + w]
                if total is None:
                    total = value * next(neighbour)
                else:
                    total.add_(torch.mul(value, next(neighbour), out=term))
        out = total
    return out


# --- SFR -------------------------------------------------------------------------------------------


def sfr_class_map(
    patch_features: torch.Tensor,
    texts: torch.Tensor,
    images: torch.Tensor,
    grid: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """SFR's first-pass class map: the most frequent pixel class of every patch.

    Per image: ``ℓ = unit(f)·tᵀ`` on the grid, bilinear to the image size (``align_corners=False``),
    :func:`resclip_pamr`, ``P = softmax(40·ℓ)`` over the texts, pixel class ``argmax P`` (0 where
    ``max P < 0.5``), then the mode of each ``stride`` block (ties: the smallest class).

    Args:
        patch_features: ``(B, h·w, D)`` the first pass's projected patch tokens (not normalised).
        texts: ``(T, D)`` text features as given (unit rows).
        images: ``(B, 3, H, W)`` the model's input.
        grid: ``(h, w)``; stride: pixels per token ``(s_h, s_w)``.
    Returns:
        ``(B, h, w)`` int64 text indices.
    """
    h, w = grid
    f = patch_features.detach().float()  # the class map is discrete: no gradient flows through it
    images = images.detach()
    f = f / f.norm(dim=-1, keepdim=True)
    logits = f @ texts.to(f).t()  # (B, N, T)
    logits = logits.permute(0, 2, 1).reshape(f.shape[0], -1, h, w)
    maps = []
    for b in range(f.shape[0]):  # per image, as the official code (batch 1)
        one = F.interpolate(logits[b : b + 1], size=images.shape[-2:], mode="bilinear", align_corners=False)
        one = resclip_pamr(images[b : b + 1], one)[0]  # (T, H, W)
        probs = torch.softmax(one * SFR_LOGIT_SCALE, dim=0)
        pixel = probs.argmax(dim=0)
        pixel[probs.max(dim=0).values < SFR_THRESHOLD] = 0
        blocks = pixel.unfold(0, stride[0], stride[0]).unfold(1, stride[1], stride[1]).reshape(h, w, -1)
        counts = F.one_hot(blocks, texts.shape[0]).sum(dim=2)  # (h, w, T)
        maps.append(counts.argmax(dim=-1))  # first maximum: the smallest class among ties
    return torch.stack(maps)


def _walk(
    grid: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The path test's geometry: for every pair ``(i, j)`` of patches (row-major, ``i`` major) the
    Chebyshev distance ``steps`` ``(N, N)``, its maximum ``M`` over all pairs, the flat indices ``(N², M+1)``
    of the points ``round(p_i·(1−t_k) + p_j·t_k)`` with ``t = linspace(0, 1, M+1)`` (float32, half to
    even), and which of them are within the pair's own steps ``(N², M+1)``."""
    h, w = grid
    n = h * w
    index = torch.arange(n, device=device)
    coords = torch.stack((torch.div(index, w, rounding_mode="floor"), index % w), dim=-1)  # (N, 2)
    start = coords[:, None].expand(n, n, 2).reshape(-1, 2)
    end = coords[None, :].expand(n, n, 2).reshape(-1, 2)
    steps = (end - start).abs().max(dim=1).values  # (N²,)
    m = int(steps.max().item())
    t = torch.linspace(0, 1, steps=m + 1, device=device)[None, :, None]
    points = (start[:, None] * (1 - t) + end[:, None] * t).round().long()  # (N², M+1, 2)
    flat = points[..., 0] * w + points[..., 1]
    within = torch.arange(m + 1, device=device)[None] <= steps[:, None]
    return steps.view(n, n), flat, within, m


def sfr_matrix(class_map: torch.Tensor, prefix: int = 1, sigma: float = SFR_SIGMA) -> torch.Tensor:
    """SFR's attention matrix Φ from a class map, as the official ``generate_attention_sfr``.

    Per image, over the patches (row-major): ``E_ij = [K_i = K_j]``; where the straight walk from ``i``
    towards ``j`` (the first ``steps_ij + 1`` of the ``M + 1`` points of an ``M``-step walk, ``M`` the
    largest Chebyshev distance of the grid) leaves ``i``'s class, ``E_ij ← E_ij·exp(−steps_ij/M)``; each
    row is convolved with a normalised 1-D Gaussian (σ, ``min(N, int(6σ+1))`` taps made odd, zero
    padding), clamped at 0 and divided by its sum + 1e-8. The prefix rows and columns are 0; Φ is
    divided by its maximum and cast to float16.

    Args:
        class_map: ``(B, h, w)`` integer classes.
        prefix: prefix tokens before the patches (the class token: 1).
    Returns:
        ``(B, 1, p + N, p + N)`` float16.
    """
    b, h, w = class_map.shape
    n = h * w
    device = class_map.device
    steps, flat, within, m = _walk((h, w), device)
    size = min(n, int(6 * sigma + 1))
    size = size if size % 2 == 1 else size + 1
    taps = torch.arange(size, device=device) - size // 2
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    decay = torch.exp(-steps / m) if m > 0 else torch.ones(n, n, device=device)
    out = []
    for k in class_map.reshape(b, n):
        same = (k[:, None] == k[None, :]).float()  # (N, N), diagonal 1
        start_class = k.repeat_interleave(n)[:, None]
        valid = ((k[flat] == start_class) | ~within).all(dim=1).view(n, n)
        same = torch.where(valid, same, same * decay)
        blurred = F.relu(F.conv1d(same.unsqueeze(1), kernel, padding=size // 2).squeeze(1))
        blurred = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
        phi = torch.zeros(prefix + n, prefix + n, device=device)
        phi[prefix:, prefix:] = blurred
        out.append((phi / phi.max()).to(torch.float16))
    return torch.stack(out)[:, None]


# --- the forward -----------------------------------------------------------------------------------


def _logits(
    a: torch.Tensor, b: torch.Tensor, sfr: torch.Tensor | None, prior: torch.Tensor | None
) -> torch.Tensor:
    """``mix(s·a bᵀ) (+ Ω)``: SFR's mix in the official order (``λ_s·Φ`` in float16)."""
    g = (a @ b.transpose(-1, -2)) * a.shape[-1] ** -0.5
    if sfr is not None:
        tau, lam = SFR_WEIGHTS
        g = tau * ((1 - lam) * g + lam * sfr)
    if prior is not None:
        g = g + prior
    return g


def _last_attention(
    kind: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rcs: torch.Tensor,
    sfr: torch.Tensor | None,
    prior: torch.Tensor | None,
) -> torch.Tensor:
    """ResCLIP's last-block attention ``(B, heads, N, N)``: the base kind's softmax of the SFR-mixed
    logits, then RCS ``τ_r·((1−λ_r)·A′ + λ_r·A_rcs)``."""
    pairs = {"kk": (k, k), "qq": (q, q), "qk": (q, k), "vv": (v, v)}
    if kind == "qq+kk":
        a = torch.softmax(_logits(q, q, sfr, prior), dim=-1) + torch.softmax(
            _logits(k, k, sfr, prior), dim=-1
        )
    else:
        a = torch.softmax(_logits(*pairs[kind], sfr, prior), dim=-1)
    tau, lam = RCS_WEIGHTS
    return tau * ((1 - lam) * a + lam * rcs)


def _check(adapter, config: SurgeryConfig) -> None:
    """Refuse what ResCLIP's forward cannot run, naming the field."""
    if config.attention not in _SINGLE_PATH_KINDS:
        raise SurgeryError(
            f"ResCLIP's last block takes the attention kinds {_SINGLE_PATH_KINDS}, not {config.attention!r}"
        )
    if config.temperature != "head_dim" or config.self_attn_iters:
        raise SurgeryError("ResCLIP's attention uses the head_dim temperature and no GEM iterations")
    if not config.dual_path and config.depth != 1:
        raise SurgeryError(
            f"ResCLIP on a single path changes the last block only (depth=1), got depth={config.depth}"
        )
    if adapter.num_blocks < 2:
        raise SurgeryError("ResCLIP needs a tower of at least 2 blocks")


def resclip_forward(
    model: nn.Module,
    images: torch.Tensor,
    config: SurgeryConfig,
    texts: torch.Tensor | None = None,
) -> ResCLIPOutput:
    """ResCLIP's tokens under ``config`` (the base method's fields; see the module doc): RCS, and SFR
    when ``texts`` are given.

    Args:
        images: preprocessed ``(B, 3, H, W)``.
        config: a ResCLIP preset (or any config whose fields name a base ResCLIP takes); ``depth=0``
            gives vanilla CLIP.
        texts: ``(T, D)`` class text features (unit rows, one per query name) for SFR; ``None``: RCS
            alone.
    Returns:
        :class:`ResCLIPOutput` (tokens ``(B, 1 + h·w, D)`` not normalised, grid, SFR's class map).
    Raises:
        UnsupportedModelError: a ModifiedResNet tower (named with the method).
        SurgeryError: a config ResCLIP cannot run.
    """
    adapter = adapter_for(model)
    check_config(adapter, config)
    if config.depth == 0:
        tokens, grid = dense_forward(model, images, config.replace(forward=""))
        return ResCLIPOutput(tokens, grid, None)
    if adapter.kind != "vit":  # pragma: no cover - check_config refuses ResNets first
        raise SurgeryError("ResCLIP needs a ViT tower")
    _check(adapter, config)
    p, n_blocks = adapter.prefix, adapter.num_blocks
    last = n_blocks - 1
    rcs_ids = rcs_blocks(n_blocks)
    start = n_blocks - config.depth if config.dual_path else last
    x, grid = adapter.embed(images, config.pos_embed_interp)
    y: torch.Tensor | None = None
    kept: list[torch.Tensor] = []
    for i in range(last):
        if i not in rcs_ids and i < start:
            x = adapter.run_block(i, x)
            continue
        q, k, v = adapter.qkv(i, adapter.ln_1(i, x))
        if i >= start:  # CLIP Surgery's new path (dual path only), from the original path's LN1
            y = x if y is None else y
            new = adapter.attention_residual(i, attend(config.attention, q, k, v))
            y = y + new if config.keep_residual else new
            if not config.skip_ffn:
                y = y + adapter.ffn_residual(i, y)
        probs = attention_weights("qk", q, k, v)
        if i in rcs_ids:
            kept.append(probs)
        x = x + adapter.attention_residual(i, probs @ v)
        x = x + adapter.ffn_residual(i, x)
    rcs = torch.stack(kept).mean(dim=0)
    q, k, v = adapter.qkv(last, adapter.ln_1(last, x))
    sigma = config.spatial_prior_sigma
    prior = spatial_prior(grid, sigma, q, p) if sigma else None
    original = adapter.run_block(last, x) if config.dual_path else None
    stream = x if y is None else y

    def run(sfr: torch.Tensor | None) -> torch.Tensor:
        a = adapter.attention_residual(last, _last_attention(config.attention, q, k, v, rcs, sfr, prior) @ v)
        out = stream + a if config.keep_residual else a
        if not config.skip_ffn:
            out = out + adapter.ffn_residual(last, out)
        if original is None:
            return adapter.output(out, out)
        return adapter.output(torch.cat([original[:, :p], out[:, p:]], dim=1), original)

    tokens = run(None)
    if texts is None:
        return ResCLIPOutput(tokens, grid, None)
    stride = adapter.info.stride
    class_map = sfr_class_map(tokens[:, 1:], texts, images, grid, stride)
    phi = sfr_matrix(class_map.to(tokens.device), p).to(tokens.device)
    return ResCLIPOutput(run(phi), grid, class_map)


def _rcs_forward(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The registered ``resclip-rcs`` forward: RCS alone."""
    out = resclip_forward(model, images, config)
    return out.tokens, out.grid


def _sfr_forward(
    model: nn.Module, images: torch.Tensor, config: SurgeryConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The registered ``resclip`` forward: RCS and SFR, with the texts of :func:`class_texts`."""
    out = resclip_forward(model, images, config, current_class_texts())  # the engine checked it is set
    return out.tokens, out.grid


register_forward(SFR_FORWARD, _sfr_forward, needs_texts=True)
register_forward(RCS_FORWARD, _rcs_forward)

_REFERENCE = (
    "Yang et al., ResCLIP: Residual Attention for Training-free Dense Vision-language Inference, CVPR 2025; "
    "github.com/yvhangyang/ResCLIP"
)
_PROTOCOL = {
    "protocol": "sliding",
    "image_size": 336,
    "window": 224,
    "stride": 112,
    "templates": "openai80",
    "logit_scale": 40.0,
    "bg_threshold": {"voc": 0.1, "context": 0.1, "coco_object": 0.1, None: 0.0},
    "pamr_steps": 0,
}
"""The official segmentor's settings (short side 336, windows 224 / stride 112 — VOC20/21 run the whole
image — logit scale 40, ``prob_thd`` 0.1 on VOC21, Context60, Object)."""

_NACLIP = SurgeryConfig(
    attention="kk",
    dual_path=False,
    depth=1,
    keep_residual=False,
    spatial_prior_sigma=5,
    feature_surgery=False,
    pos_embed_interp="bicubic-dino",
)
_CLEARCLIP = SurgeryConfig(
    attention="qq",
    dual_path=False,
    depth=1,
    keep_residual=False,
    feature_surgery=False,
    pos_embed_interp="bicubic-dino",
)
_SCLIP = SurgeryConfig(
    attention="qq+kk",
    dual_path=False,
    depth=1,
    skip_ffn=False,
    feature_surgery=False,
    pos_embed_interp="bicubic-dino",
)

METHODS = (
    Method(
        name="resclip",
        title="ResCLIP",
        color="#8C564B",
        config=_NACLIP.replace(forward=SFR_FORWARD),
        reference=_REFERENCE + " (on NACLIP, the paper's main row)",
        position=72,
        towers=("vit",),
        protocol=_PROTOCOL,
    ),
    Method(
        name="resclip-clearclip",
        title="ResCLIP (ClearCLIP)",
        color="#A0725F",
        config=_CLEARCLIP.replace(forward=SFR_FORWARD),
        reference=_REFERENCE + " (on ClearCLIP)",
        position=73,
        towers=("vit",),
        protocol=_PROTOCOL,
    ),
    Method(
        name="resclip-sclip",
        title="ResCLIP (SCLIP)",
        color="#B48C7D",
        config=_SCLIP.replace(forward=SFR_FORWARD),
        reference=_REFERENCE + " (on SCLIP)",
        position=74,
        towers=("vit",),
        protocol=_PROTOCOL,
    ),
    Method(
        name="resclip-rcs",
        title="ResCLIP, RCS only",
        color="#C4A69B",
        config=_NACLIP.replace(forward=RCS_FORWARD),
        reference=_REFERENCE + " (RCS alone on NACLIP: the paper's ablation)",
        position=75,
        towers=("vit",),
        protocol=_PROTOCOL,
    ),
    Method(
        name="resclip-surgery",
        title="ResCLIP (CLIP Surgery)",
        color="#6B3F34",
        config=SurgeryConfig.paper().replace(forward=SFR_FORWARD),
        reference=(
            "this project's own combination, not in the paper: ResCLIP's RCS and SFR in the last block of "
            "CLIP Surgery's dual path (feature surgery on); " + _REFERENCE
        ),
        position=76,
        towers=("vit",),
        protocol={"protocol": "paper", "templates": "surgery85"},
    ),
)
