"""ProxyCLIP (``surgery_lib.methods.proxyclip``) and its VFM pairing (``surgery_lib.model.vfm``): the forward
against a reference written from the official lines, per image at any batch size, both models untouched,
the clear refusals (ModifiedResNet, no VFM, offline weights), and FORMAT.md's typical mistakes told apart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import _randomise, assert_unchanged, make_rn, make_vit, random_images, snapshot
from timm.models.vision_transformer import VisionTransformer

from surgery_lib import encode_image_tokens
from surgery_lib.config import SurgeryConfig
from surgery_lib.methods import METHODS, get_method
from surgery_lib.methods.proxyclip import CONFIG
from surgery_lib.model import UnsupportedModelError, WeightsNotAvailableError, dense_forward
from surgery_lib.model.vfm import CLIPWithVFM, load_vfm, vfm_patch_features, with_vfm

ATOL = 1e-5
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _tiny_dino(seed: int = 0) -> VisionTransformer:
    """A DINO-style timm ViT/4 on 32 px (native grid 8: twice the tiny CLIP's 4)."""
    torch.manual_seed(seed)
    vfm = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    return _randomise(vfm, seed)


@pytest.fixture(scope="module")
def pair() -> CLIPWithVFM:
    return with_vfm(make_vit(layers=3), _tiny_dino())


def _renorm(images: torch.Tensor, source, target) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in source)
    to_mean, to_std = (torch.tensor(v).view(1, 3, 1, 1) for v in target)
    return (images * std + mean - to_mean) / to_std


def _reference(pair: CLIPWithVFM, images: torch.Tensor, mistake: str = "") -> torch.Tensor:
    """Normalised patch tokens ``(B, I·J, D)`` as ``forward_feature`` + ``custom_attn`` compute them, one
    image per call (``mistake``: ``clip_pixels``, ``beta1``, ``residual``)."""
    rows = []
    for image in images:
        image = image[None]
        vfm_in = image if mistake == "clip_pixels" else _renorm(image, OPENAI, IMAGENET)
        feats = pair.vfm.forward_features(vfm_in)[:, 1:]  # native grid: timm's own forward
        side = round(feats.shape[1] ** 0.5)
        ex = feats.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        unit = F.normalize(ex.flatten(2, 3), dim=1)
        sim = torch.einsum("bcm,bcn->bmn", unit, unit)
        beta = 1.0 if mistake == "beta1" else 1.2
        sim = (sim - sim.mean() * beta) * 3.0
        sim[sim < 0] = float("-inf")
        attn = torch.softmax(sim, dim=-1)
        visual = pair.clip.visual
        x = visual.conv1(image).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.view(1, 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        block = visual.transformer.resblocks[-1]
        heads = block.attn.num_heads
        v = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)[2]
        g = round((v.shape[1] - 1) ** 0.5)
        v = v[:, 1:].reshape(1, g, g, heads, -1).permute(0, 3, 4, 1, 2).flatten(0, 1)  # (heads, d, g, g)
        v = F.interpolate(v, size=(side, side), mode="bilinear", align_corners=False)
        v = v.flatten(2).transpose(1, 2)  # (heads, IJ, d)
        o = block.attn.out_proj((attn @ v).transpose(0, 1).reshape(1, side * side, -1))
        if mistake == "residual":
            o = o + F.interpolate(
                x[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2), size=(side, side), mode="bilinear"
            ).flatten(2).transpose(1, 2)
        rows.append(F.normalize(visual.ln_post(o) @ visual.proj, dim=-1))
    return torch.cat(rows)


def test_the_preset_is_registered_and_runs_on_vit_only() -> None:
    method = get_method("proxyclip")
    assert METHODS["proxyclip"] is CONFIG and CONFIG.forward == "proxyclip"
    assert method.towers == ("vit",) and not CONFIG.feature_surgery


def test_tokens_match_the_official_lines_on_the_vfm_grid(pair) -> None:
    images = random_images(pair.clip, batch=2)
    with torch.no_grad():
        tokens, grid = encode_image_tokens(pair, images, CONFIG)
        want = _reference(pair, images)
        vanilla, _ = encode_image_tokens(pair.clip, images, SurgeryConfig.off())
    assert grid == (8, 8) and tokens.shape == (2, 65, 32)
    assert (tokens[:, 1:] - want).abs().max() <= ATOL
    assert (tokens[:, 0] - vanilla[:, 0]).abs().max() <= ATOL  # the image embedding is CLIP's own


def test_typical_mistakes_move_the_tokens_beyond_the_tolerance(pair) -> None:
    images = random_images(pair.clip, batch=2)
    with torch.no_grad():
        tokens, _ = encode_image_tokens(pair, images, CONFIG)
        for mistake in ("clip_pixels", "beta1", "residual"):
            wrong = _reference(pair, images, mistake)
            assert (tokens[:, 1:] - wrong).abs().max() > 100 * ATOL, mistake


def test_vfm_features_resample_positions_at_other_sizes(pair) -> None:
    square = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats, grid = vfm_patch_features(pair.vfm, torch.randn(2, 3, 24, 40))
        native, native_grid = vfm_patch_features(pair.vfm, square)
        timm_native = pair.vfm.forward_features(square)[:, 1:]
    assert grid == (6, 10) and feats.shape == (2, 60, 32) and native_grid == (8, 8)
    assert (native - timm_native).abs().max() <= ATOL  # at the native grid: timm's own forward


def test_each_image_gets_its_own_result_at_any_batch_size(pair) -> None:
    images = random_images(pair.clip, batch=3, hw=(40, 24))  # non-native and non-square on both towers
    with torch.no_grad():
        tokens, grid = dense_forward(pair, images, CONFIG)
        for i in range(3):
            alone, _ = dense_forward(pair, images[i : i + 1], CONFIG)
            assert torch.allclose(tokens[i : i + 1], alone, atol=ATOL)
    assert grid == (10, 6) and tokens.shape == (3, 61, 32)


def test_neither_model_changes_after_a_run_and_after_an_error(pair) -> None:
    clip_before, vfm_before = snapshot(pair.clip), snapshot(pair.vfm)
    images = random_images(pair.clip, batch=2)
    dense_forward(pair, images, CONFIG)
    with pytest.raises(RuntimeError):
        dense_forward(pair, images[:, :2], CONFIG)  # two channels: the patch embeddings refuse
    assert_unchanged(pair.clip, clip_before)
    assert_unchanged(pair.vfm, vfm_before)


def test_refusals_name_the_problem(pair) -> None:
    rn = make_rn()
    with pytest.raises(UnsupportedModelError, match=r"'proxyclip'.*ModifiedResNet"):
        dense_forward(rn, random_images(rn, batch=1), CONFIG)
    with pytest.raises(UnsupportedModelError, match=r"'proxyclip' needs a vision foundation model.*with_vfm"):
        dense_forward(pair.clip, random_images(pair.clip, batch=1), CONFIG)
    with pytest.raises(UnsupportedModelError, match="timm VisionTransformer"):
        with_vfm(pair.clip, torch.nn.Linear(2, 2))


def test_the_pair_answers_for_its_clip(pair) -> None:
    assert pair.visual is pair.clip.visual and pair.logit_scale is pair.clip.logit_scale
    tokens = torch.zeros(1, 77, dtype=torch.long)
    assert torch.equal(pair.encode_text(tokens), pair.clip.encode_text(tokens))


def test_missing_vfm_weights_offline_say_how_to_supply_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError, match=r"dino_vitb8.*HF_HUB_OFFLINE(.|\n)*checkpoint="):
        load_vfm("dino_vitb8", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown VFM 'nope'"):
        load_vfm("nope")


def test_explain_runs_on_a_toy_clip_paired_with_the_tiny_vfm(toy_vit) -> None:
    import surgery_lib as sl

    pair = with_vfm(toy_vit.model, "tiny-dino")
    images = random_images(toy_vit.model, batch=1)
    result = sl.explain(pair, toy_vit.tokenizer, images, ["cat", "dog"], method="proxyclip")
    assert result.maps.shape[-1] == 2 and torch.isfinite(result.maps).all()
    again = with_vfm(toy_vit.model, "tiny-dino")  # deterministic: the same random VFM each time
    assert all(
        torch.equal(a, b)
        for a, b in zip(pair.vfm.state_dict().values(), again.vfm.state_dict().values(), strict=True)
    )
