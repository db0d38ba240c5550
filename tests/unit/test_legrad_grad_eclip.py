"""LeGrad and Grad-ECLIP (``surgery_lib.model.gradients``) on the tiny models: each checked against an
independent computation of its definition, per image at any batch size, the model left as it was, and
the towers they are not defined on refused (exactness against the official code: the zoo golden test)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, make_rn, make_vit, random_images, snapshot

from surgery_lib.config import GradientConfig
from surgery_lib.methods import GRADIENT_METHODS, REGISTRY
from surgery_lib.model.adapters import UnsupportedModelError
from surgery_lib.model.gradients import (
    LEGRAD_EMPTY_PROMPT,
    grad_eclip,
    gradient_maps,
    legrad,
    upsampled_min_max,
)
from surgery_lib.model.tiny_towers import tiny_eva02, tiny_siglip


def _texts(n: int = 3, d: int = 32, seed: int = 5) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _state(model: torch.nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
    )


# --- the configs and the registry ------------------------------------------------------------------


def test_configs_take_each_explainers_official_layers():
    assert GradientConfig("legrad").start_layer == -2  # LeGrad's layer_index
    assert (
        GradientConfig("chefer").start_layer == -1 == GradientConfig("chefer", start_layer=None).start_layer
    )
    assert GradientConfig("grad_eclip").start_layer == -1
    assert GRADIENT_METHODS["legrad"] == GradientConfig("legrad", start_layer=-2)
    assert GRADIENT_METHODS["grad_eclip"] == GradientConfig("grad_eclip")
    with pytest.raises(ValueError, match="'chefer' or 'legrad' only, not 'grad_eclip'"):
        GradientConfig("grad_eclip", start_layer=0)
    for name in ("legrad", "grad_eclip"):
        method = REGISTRY[name]
        assert method.is_gradient and method.towers == ("vit",) and "github.com/" in method.reference


# --- LeGrad ----------------------------------------------------------------------------------------


def _legrad_reference(model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, layers: int):
    """LeGrad from open_clip's own forward, with the attention gradient taken the other way round:
    ``∂y/∂A_h[i, j] = (∂y/∂o_h[i]) · v_h[j]`` where ``o_h = A_h v_h`` is head ``h``'s output, found from
    the gradient at the block's ``out_proj`` input (a forward hook on a copy of the model)."""
    model = copy.deepcopy(model).eval()
    visual = model.visual
    blocks = list(visual.transformer.resblocks)[-layers:]
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def pre_hook(index: int):
        def hook(module, args):
            x = args[0]
            z = module.ln_1(x)
            v = F.linear(z, module.attn.in_proj_weight, module.attn.in_proj_bias).chunk(3, dim=-1)[2]
            seen[index] = {"v": v}

        return hook

    def post_hook(index: int):
        def hook(module, args, output):
            seen[index]["out"] = output

        return hook

    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(pre_hook(index))
        block.register_forward_hook(post_hook(index))
    # attn's output is out = o W_oᵀ + b with o the heads' outputs side by side, so ∂y/∂o = (∂y/∂out) W_o
    attn_outputs: dict[int, torch.Tensor] = {}
    for index, block in enumerate(blocks):

        def attn_hook(module, args, output, index=index):
            attn_outputs[index] = output[0]

        block.attn.register_forward_hook(attn_hook)
    with torch.enable_grad():
        images = images.clone().requires_grad_(True)
        model.encode_image(images)
        heads = blocks[0].attn.num_heads
        b, n, c = seen[0]["out"].shape
        total = torch.zeros(len(texts), b, n - 1)
        for index, block in enumerate(blocks):
            x = seen[index]["out"]
            pooled = F.normalize(visual.ln_post(x.mean(dim=1)) @ visual.proj, dim=-1)
            for t, text in enumerate(texts):
                (g_out,) = torch.autograd.grad(
                    (pooled @ text).sum(), [attn_outputs[index]], retain_graph=True
                )
                g_o = (g_out @ block.attn.out_proj.weight).reshape(b, n, heads, c // heads).transpose(1, 2)
                v = seen[index]["v"].reshape(b, n, heads, c // heads).transpose(1, 2)
                grad_a = g_o @ v.transpose(-1, -2)  # (B, heads, 1+N, 1+N)
                total[t] += grad_a.clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:].detach()
    side = int((n - 1) ** 0.5)
    return total.transpose(0, 1).reshape(b, len(texts), side, side)


def test_legrad_is_the_attention_gradient_of_the_token_mean_embedding():
    model = make_vit(layers=4)
    images, texts = random_images(model), _texts()
    result = legrad(model, images, texts)
    assert result.relevance.shape == (2, 3, 4, 4) and result.final.shape == (2, 3, 32, 32)
    torch.testing.assert_close(
        result.relevance, _legrad_reference(model, images, texts, 2), rtol=1e-4, atol=1e-7
    )
    last_only = legrad(model, images, texts, start_layer=-1)
    torch.testing.assert_close(
        last_only.relevance, _legrad_reference(model, images, texts, 1), rtol=1e-4, atol=1e-7
    )
    assert (result.relevance - last_only.relevance).abs().max() > 1e-3 * result.relevance.abs().max()
    # the official output: bilinear ×patch upsampling, then min-max per map
    assert torch.equal(result.final, upsampled_min_max(result.relevance, (8, 8)))
    flat = result.final.flatten(2)
    assert torch.allclose(flat.amin(-1), torch.zeros(2, 3)) and torch.allclose(
        flat.amax(-1), torch.ones(2, 3)
    )
    # logits and image features are CLIP's own
    features = F.normalize(model.encode_image(images), dim=-1)
    torch.testing.assert_close(result.image_features, features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        result.logits, model.logit_scale.exp() * features @ texts.t(), atol=1e-4, rtol=1e-5
    )
    assert result.target is None


def test_upsampled_min_max_known_values():
    relevance = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    up = upsampled_min_max(relevance, (2, 2))
    # bilinear ×2 (align_corners=False) of [0, 1]: 0, 0.25, 0.75, 1 along the row
    assert torch.allclose(up, torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(1, 1, 2, 4))
    flat = upsampled_min_max(torch.full((1, 2, 2, 2), 3.0), (4, 4))
    assert flat.shape == (1, 2, 8, 8) and torch.equal(flat, torch.zeros_like(flat))  # constant: 0, not NaN


# --- Grad-ECLIP ------------------------------------------------------------------------------------


def _grad_eclip_reference(model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor):
    """Grad-ECLIP from open_clip's own forward on a copy whose last block's ``nn.MultiheadAttention``
    runs one head (the notebook's ``num_heads=1``): the cosine, and ``∂c/∂O = (∂c/∂attn_out) W_o``."""
    model = copy.deepcopy(model).eval()
    block = model.visual.transformer.resblocks[-1]
    block.attn.num_heads, block.attn.head_dim = 1, block.attn.embed_dim
    seen: dict[str, torch.Tensor] = {}

    def pre_hook(module, args):
        z = module.ln_1(args[0])
        seen["q"], seen["k"], seen["v"] = F.linear(
            z, module.attn.in_proj_weight, module.attn.in_proj_bias
        ).chunk(3, dim=-1)

    def attn_hook(module, args, output):
        seen["out"] = output[0]

    block.register_forward_pre_hook(pre_hook)
    block.attn.register_forward_hook(attn_hook)
    with torch.enable_grad():
        features = F.normalize(model.encode_image(images.clone().requires_grad_(True)), dim=-1)
        cosine = features @ texts.t()  # (B, T)
        q, k, v = seen["q"], seen["k"], seen["v"]
        weight = F.cosine_similarity(q[:, :1], k[:, 1:], dim=-1)  # (B, N)
        low, high = weight.amin(-1, keepdim=True), weight.amax(-1, keepdim=True)
        weight = (weight - low) / (high - low)
        maps = []
        for t in range(texts.shape[0]):
            (g_out,) = torch.autograd.grad(cosine[:, t].sum(), [seen["out"]], retain_graph=True)
            g_o = g_out @ block.attn.out_proj.weight  # (B, 1+N, C)
            maps.append(((g_o[:, :1] * v[:, 1:]).sum(-1) * weight).clamp(min=0).detach())
    b, n = maps[0].shape
    side = int(n**0.5)
    return torch.stack(maps, dim=1).reshape(b, -1, side, side), cosine.detach()


def test_grad_eclip_is_the_one_head_gradient_weighted_by_values_and_qk_cosines():
    model = make_vit(layers=4)
    images, texts = random_images(model), _texts()
    result = grad_eclip(model, images, texts)
    relevance, cosine = _grad_eclip_reference(model, images, texts)
    assert result.relevance.shape == (2, 3, 4, 4) and result.final is None
    torch.testing.assert_close(result.target, cosine, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.relevance, relevance, atol=1e-6 * relevance.abs().max(), rtol=1e-4)
    assert relevance.abs().max() > 0
    # its cosine is not the model's own (one head instead of two), its logits are
    features = F.normalize(model.encode_image(images), dim=-1)
    assert (result.target - features @ texts.t()).abs().max() > 1e-4
    torch.testing.assert_close(
        result.logits, model.logit_scale.exp() * features @ texts.t(), atol=1e-4, rtol=1e-5
    )


def _resampled(model: torch.nn.Module, grid: tuple[int, int], resample) -> torch.nn.Module:
    """A copy of ``model`` whose native grid is ``grid``: its positional embedding replaced by
    ``resample(pos (1, 1+N, C), grid)``, as the official code overwrites it."""
    model = copy.deepcopy(model)
    visual = model.visual
    with torch.no_grad():
        pos = resample(visual.positional_embedding[None], grid)[0]
    visual.positional_embedding = torch.nn.Parameter(pos)
    visual.grid_size = grid
    return model


def _timm_resample(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=1)  # bicubic, antialias


def _notebook_resample(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    side = int((pos.shape[1] - 1) ** 0.5)
    spatial = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], spatial.flatten(2).transpose(1, 2)], dim=1)


@pytest.mark.parametrize(
    ("name", "resample", "wrong"),
    [("legrad", _timm_resample, _notebook_resample), ("grad_eclip", _notebook_resample, _timm_resample)],
)
def test_the_positional_embedding_is_resampled_as_the_official_code_does(name, resample, wrong):
    model = make_vit(layers=4)  # native grid 4×4
    images, texts = random_images(model, hw=(24, 40)), _texts()  # a 3×5 grid: fewer rows, more columns
    method = GRADIENT_METHODS[name]
    result = gradient_maps(model, images, texts, method)
    assert result.relevance.shape == (2, 3, 3, 5) and result.grid == (3, 5)
    want = gradient_maps(_resampled(model, (3, 5), resample), images, texts, method)
    scale = want.relevance.abs().max()
    torch.testing.assert_close(result.relevance, want.relevance, atol=1e-6 * scale, rtol=1e-5)
    torch.testing.assert_close(result.logits, want.logits, atol=1e-4, rtol=1e-5)
    other = gradient_maps(_resampled(model, (3, 5), wrong), images, texts, method)
    assert (other.relevance - want.relevance).abs().max() > 1e-4 * scale


# --- every tower: per image at any batch size, nothing changed, refusals -----------------------------


def _siglip_run(model, images, texts, **kwargs):
    empty = F.normalize(torch.randn(texts.shape[1], generator=torch.Generator().manual_seed(9)), dim=0)
    return legrad(model, images, texts, empty_text_feature=kwargs.get("empty", empty))


RUNS = {
    "legrad": (lambda: make_vit(layers=4), lambda m, i, t: legrad(m, i, t)),
    "grad_eclip": (lambda: make_vit(layers=4), lambda m, i, t: grad_eclip(m, i, t)),
    "legrad-siglip": (lambda: tiny_siglip(depth=3), _siglip_run),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_batch_gives_each_images_own_maps(name):
    build, run = RUNS[name]
    model = build()
    width = 32 if name != "legrad-siglip" else 64
    images, texts = random_images(model, batch=3), _texts(d=width)
    together = run(model, images, texts)
    for b in range(3):
        alone = run(model, images[b : b + 1], texts)
        scale = together.relevance[b].abs().max()
        torch.testing.assert_close(alone.relevance[0], together.relevance[b], atol=1e-6 * scale, rtol=1e-5)
        if together.final is not None:
            torch.testing.assert_close(alone.final[0], together.final[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.logits[0], together.logits[b], atol=1e-4, rtol=1e-5)
    assert together.relevance.abs().max() > 0


@pytest.mark.parametrize("name", list(RUNS))
def test_the_model_is_left_as_it_was_also_after_an_error(name):
    build, run = RUNS[name]
    model = build()
    model.train()
    model.visual.requires_grad_(False)
    width = 32 if name != "legrad-siglip" else 64
    before, state = snapshot(model), _state(model)
    images = random_images(model)
    with torch.no_grad():  # they turn gradients on themselves
        result = run(model, images, _texts(d=width))
    assert (result.relevance >= 0).all() and not result.relevance.requires_grad
    assert _state(model) == state
    assert_unchanged(model, before)
    with pytest.raises(RuntimeError):  # raises mid-run: the text width does not match
        run(model, images, _texts(d=16))
    assert _state(model) == state
    assert_unchanged(model, before)


def test_legrad_on_siglip_applies_the_empty_prompt_correction():
    model = tiny_siglip(depth=3)
    images, texts = random_images(model), _texts(n=2, d=64)
    plain = _siglip_run(model, images, texts, empty=torch.zeros(64))  # no direction: a constant map
    assert plain.relevance.shape == (2, 2, 6, 6) and plain.final.shape == (2, 2, 96, 96)
    # e = text 0: the positions where text 0's own map is above 0.8 after min-max are zeroed, in every map
    corrected = _siglip_run(model, images, texts, empty=texts[0])
    raw = plain.relevance.flatten(2)
    low, high = raw[:, :1].amin(-1, keepdim=True), raw[:, :1].amax(-1, keepdim=True)
    drop = ((raw[:, :1] - low) / (high - low) > 0.8).expand_as(raw)
    assert drop.any() and not drop.all()
    torch.testing.assert_close(corrected.relevance.flatten(2), raw.masked_fill(drop, 0.0))
    # the official output: min-max first, then bilinear ×patch upsampling
    up = F.interpolate(corrected.relevance, scale_factor=16.0, mode="bilinear", align_corners=False)
    low, high = (
        corrected.relevance.amin((-2, -1), keepdim=True),
        corrected.relevance.amax((-2, -1), keepdim=True),
    )
    torch.testing.assert_close(corrected.final, (up - low) / (high - low))
    with pytest.raises(ValueError, match=LEGRAD_EMPTY_PROMPT):
        gradient_maps(model, images, texts, GRADIENT_METHODS["legrad"])


def test_towers_they_are_not_defined_on_are_refused_by_name():
    rn = make_rn()
    images, texts = random_images(rn), _texts()
    for name in ("legrad", "grad_eclip"):
        with pytest.raises(UnsupportedModelError) as error:
            gradient_maps(rn, images, texts, GRADIENT_METHODS[name])
        assert repr(name) in str(error.value) and "ModifiedResNet" in str(error.value)
    eva = tiny_eva02(depth=2)  # a class token: both are defined there (§13: q, k rotated as the model does)
    for name in ("legrad", "grad_eclip"):
        result = gradient_maps(eva, random_images(eva), _texts(d=48), GRADIENT_METHODS[name])
        assert result.relevance.shape == (2, 3, 6, 6) and torch.isfinite(result.relevance).all()
    with pytest.raises(
        UnsupportedModelError,
        match="'grad_eclip' is defined on ViT towers whose image embedding is the class token",
    ):
        gradient_maps(
            tiny_siglip(depth=2),
            random_images(tiny_siglip(depth=2)),
            _texts(d=64),
            GRADIENT_METHODS["grad_eclip"],
        )
    with pytest.raises(ValueError, match="start_layer"):
        legrad(make_vit(layers=4), random_images(make_vit(layers=4)), _texts(), start_layer=-5)


def test_explain_takes_them_by_name(tokenizer):
    from surgery_lib import explain

    model = make_vit(layers=4)
    images = random_images(model, batch=1)
    for name in ("legrad", "grad_eclip"):
        result = explain(model, tokenizer, images, ["cat", "dog"], method=name)
        assert result.maps.shape == (1, 32, 32, 2) and result.method == GRADIENT_METHODS[name]
        assert float(result.maps.min()) >= 0.0 and float(result.maps.max()) <= 1.0
