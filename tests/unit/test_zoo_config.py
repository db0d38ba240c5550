"""The method zoo: config fields and their validation, presets, attention kinds, ResNet refusals, and
gradient explainers that leave the model as it was (exact agreement: tests/golden/test_zoo_golden.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import assert_unchanged, make_rn, make_vit, random_images, snapshot

from surgery_lib import UnsupportedModelError, apply_surgery, encode_image_tokens, explain
from surgery_lib.config import POS_EMBED_INTERPS, GradientConfig, SurgeryConfig
from surgery_lib.methods import (
    GRADIENT_METHODS,
    METHODS,
    get_method,
    method_config,
    method_names,
    resolve_method,
)
from surgery_lib.model import TINY_VFM, with_vfm
from surgery_lib.model.attention import attend, attention_weights, spatial_prior
from surgery_lib.model.gradients import attention_gradcam, chefer_relevancy, gradcam, gradient_maps
from surgery_lib.model.introspection import attention_maps, residual_contributions

ZOO = ("maskclip", "sclip", "gem", "clearclip", "naclip")


@pytest.fixture(scope="module")
def vit():
    return make_vit()


@pytest.fixture(scope="module")
def rn():
    return make_rn()


# --- config fields and validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"spatial_prior_sigma": 5}, ["spatial_prior_sigma", "dual_path"]),
        ({"attention": "kk", "dual_path": False, "spatial_prior_sigma": 5, "depth": 1}, []),  # legal
        ({"attention": "identity", "dual_path": False, "spatial_prior_sigma": 5}, ["spatial", "identity"]),
        ({"attention": "gem", "dual_path": False, "spatial_prior_sigma": 5}, ["spatial", "gem"]),
        ({"self_attn_iters": 2}, ["self_attn_iters", "gem", "vv"]),
        ({"attn_temperature": "adaptive"}, ["adaptive", "gem", "vv"]),
        ({"attention": "identity", "attn_temperature": "head_dim"}, ["identity", "head_dim"]),
        ({"pos_embed_interp": "nearest"}, ["pos_embed_interp", "bicubic-dino"]),
        ({"attn_temperature": 0.5}, ["attn_temperature"]),
        ({"attention": "qk+vv"}, ["attention", "qq+kk"]),
        ({"self_attn_iters": -1}, ["self_attn_iters"]),
        ({"spatial_prior_sigma": 2.5, "dual_path": False}, ["spatial_prior_sigma", "int"]),
        ({"spatial_prior_sigma": True, "dual_path": False}, ["spatial_prior_sigma"]),
    ],
)
def test_combinations_that_mean_nothing_raise_naming_the_conflict(changes, words):
    if not words:
        SurgeryConfig(**changes)
        return
    with pytest.raises(ValueError) as error:
        SurgeryConfig(**changes)
    for word in words:
        assert word in str(error.value)


def test_keep_residual_must_be_a_bool():
    with pytest.raises(TypeError, match="keep_residual"):
        SurgeryConfig(keep_residual="no")


def test_new_fields_default_to_clip_surgery_and_resolve_the_temperature():
    paper = SurgeryConfig.paper()
    assert (paper.keep_residual, paper.attn_temperature, paper.self_attn_iters) == (True, "auto", 0)
    assert (paper.spatial_prior_sigma, paper.pos_embed_interp) == (0, "bilinear")
    assert paper.temperature == "head_dim"
    assert METHODS["gem"].temperature == "adaptive"
    assert METHODS["gem"].replace(attn_temperature="head_dim").temperature == "head_dim"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_preset_is_constructible_and_runs_on_a_vit(vit, name):
    preset = METHODS[name]
    assert SurgeryConfig(**dataclasses.asdict(preset)) == preset
    assert method_config(name) is preset and resolve_method(name) is preset
    # a non-native grid of 6 × 7 patches (SC-CLIP's outlier test needs at least 31); ProxyCLIP reads a VFM
    # beside CLIP (a small random DINO here) and answers on its grid, twice as fine
    model = with_vfm(vit, TINY_VFM) if get_method(name).needs_vfm else vit
    texts = torch.nn.functional.normalize(
        torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    tokens, grid = encode_image_tokens(model, random_images(vit, hw=(48, 56)), preset, texts=texts)
    assert grid == ((12, 14) if get_method(name).needs_vfm else (6, 7))
    n = 1 + grid[0] * grid[1]
    assert tokens.shape == (2, n, 32) and torch.isfinite(tokens).all()
    torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(2, n))


def test_presets_match_the_methods_spec():
    def fields(name: str, *names: str) -> tuple:
        return tuple(getattr(METHODS[name], field) for field in names)

    m = METHODS
    assert fields("maskclip", "attention", "skip_ffn", "keep_residual") == ("identity", False, True)
    assert fields("sclip", "attention", "skip_ffn", "depth") == ("qq+kk", False, 1)
    assert fields("gem", "dual_path", "depth", "self_attn_iters") == (True, 6, 1)
    assert fields("clearclip", "attention", "keep_residual", "skip_ffn") == ("qq", False, True)
    assert fields("naclip", "attention", "spatial_prior_sigma", "keep_residual") == ("kk", 5, False)
    assert not any(m[name].feature_surgery for name in ZOO)
    assert m["surgery-no-fs"] == SurgeryConfig.paper().replace(feature_surgery=False)
    assert m["feature-surgery-only"].depth == 0 and m["feature-surgery-only"].feature_surgery


def test_unknown_names_list_the_known_ones():
    for resolve in (method_config, resolve_method):
        with pytest.raises(ValueError) as error:
            resolve("clip-surgery-v2")
        assert all(name in str(error.value) for name in (*METHODS, *GRADIENT_METHODS))
    with pytest.raises(ValueError, match="gradient method"):
        method_config("gradcam")
    assert resolve_method("chefer") == GradientConfig("chefer", start_layer=-1)
    assert method_names() == (*METHODS, *GRADIENT_METHODS)


def test_gradient_configs_validate():
    with pytest.raises(ValueError, match="chefer"):
        GradientConfig("gradcam", start_layer=0)
    with pytest.raises(ValueError, match="gradcam"):
        GradientConfig("lime")
    assert GRADIENT_METHODS["chefer-all-layers"].start_layer == 0


# --- attention kinds -------------------------------------------------------------------------------


def _qkv(n: int = 10, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, n, 8, generator=gen) for _ in range(3)]


def test_new_attention_kinds():
    q, k, v = _qkv()
    a = attention_weights("qq+kk", q, k, v)
    torch.testing.assert_close(a.sum(-1), torch.full((2, 2, 10), 2.0))  # a sum, not a mean
    torch.testing.assert_close(attend("qq+kk", q, k, v), a @ v)
    gem = attention_weights("gem", q, k, v, temperature=3.0, iters=2)
    torch.testing.assert_close(gem.sum(-1), torch.ones(2, 2, 10))
    torch.testing.assert_close(attend("gem", q, k, v, temperature=3.0, iters=2), gem @ v)
    assert not torch.allclose(gem, attention_weights("gem", q, k, v, temperature=3.0, iters=0))


def test_spatial_prior_is_naclips_kernel():
    omega = spatial_prior((3, 4), 5.0, torch.zeros(()))
    assert omega.shape == (13, 13)
    assert (omega[0] == 0).all() and (omega[:, 0] == 0).all()
    torch.testing.assert_close(omega[1:, 1:].diagonal(), torch.ones(12))
    # patches (0, 0) and (2, 3): distance² 4 + 9
    torch.testing.assert_close(omega[1, 12], torch.exp(torch.tensor(-13.0 / 50.0)))
    q, k, v = _qkv(13)
    manual = torch.softmax(k @ k.transpose(-1, -2) * 8**-0.5 + omega, dim=-1) @ v
    torch.testing.assert_close(attend("kk", q, k, v, bias=omega), manual)


@pytest.mark.parametrize("mode", POS_EMBED_INTERPS)
def test_interpolation_modes_are_the_identity_at_the_native_grid(vit, mode):
    images = random_images(vit)
    config = METHODS["sclip"]
    want, _ = encode_image_tokens(vit, images, config)
    got, _ = encode_image_tokens(vit, images, config.replace(pos_embed_interp=mode))
    assert torch.equal(got, want)


def test_interpolation_modes_differ_on_other_grids(vit):
    images = random_images(vit, hw=(40, 56))
    tokens = {
        mode: encode_image_tokens(vit, images, METHODS["sclip"].replace(pos_embed_interp=mode))[0]
        for mode in POS_EMBED_INTERPS
    }
    modes = list(tokens)
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            assert not torch.allclose(tokens[a], tokens[b]), (a, b)


def test_keep_residual_false_replaces_the_stream(vit):
    images = random_images(vit)
    clear = METHODS["clearclip"]
    with_residual, _ = encode_image_tokens(vit, images, clear.replace(keep_residual=True))
    without, _ = encode_image_tokens(vit, images, clear)
    assert not torch.allclose(with_residual, without)
    with pytest.raises(Exception, match="keep_residual"):
        residual_contributions(vit, images, clear)


def test_attention_maps_offer_the_new_kinds(vit):
    maps, _ = attention_maps(vit, random_images(vit), block=-1, query=0, kinds=("qq+kk", "gem"))
    torch.testing.assert_close(maps["qq+kk"].sum(-1), torch.full((2, 2), 2.0))
    torch.testing.assert_close(maps["gem"].sum(-1), torch.ones(2, 2))


# --- ResNet towers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_zoo_presets_on_a_resnet_name_the_method_and_the_tower(rn, name):
    images = random_images(rn)
    before = snapshot(rn)
    with pytest.raises(UnsupportedModelError) as error:
        encode_image_tokens(rn, images, METHODS[name])
    assert repr(name) in str(error.value) and "ModifiedResNet" in str(error.value)
    with pytest.raises(UnsupportedModelError, match=name):
        apply_surgery(rn, METHODS[name])
    assert_unchanged(rn, before)


def test_clip_surgery_presets_still_run_on_a_resnet(rn):
    images = random_images(rn)
    for name in ("raw", "surgery", "surgery-no-fs", "feature-surgery-only"):
        tokens, _ = encode_image_tokens(rn, images, METHODS[name])
        assert torch.isfinite(tokens).all()
    with pytest.raises(UnsupportedModelError, match=r"this SurgeryConfig.*keep_residual"):
        encode_image_tokens(rn, images, SurgeryConfig(keep_residual=False))


# --- gradient explainers ---------------------------------------------------------------------------


def _state(model: torch.nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [m._backward_hooks or getattr(m, "_backward_pre_hooks", None) for m in model.modules()],
    )


def _explainers():
    return {
        "gradcam": gradcam,
        "attn_gradcam": attention_gradcam,
        "chefer": chefer_relevancy,
        "chefer-all-layers": lambda m, i, t: chefer_relevancy(m, i, t, start_layer=0),
    }


@pytest.mark.parametrize("name", list(_explainers()))
def test_gradient_methods_leave_the_model_untouched(name):
    model = make_vit(layers=4)
    model.train()
    model.visual.transformer.resblocks[0].requires_grad_(False)  # mixed: frozen and trainable
    before, state = snapshot(model), _state(model)
    images, texts = random_images(model), torch.randn(3, 32)
    with torch.no_grad():  # they turn gradients on themselves
        result = _explainers()[name](model, images, texts)
    assert result.relevance.shape == (2, 3, 4, 4) and result.logits.shape == (2, 3)
    assert (result.relevance >= 0).all() and not result.relevance.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert _state(model) == state
    assert_unchanged(model, before)
    with pytest.raises(RuntimeError):  # raises mid-forward: text width 16 != 32
        _explainers()[name](model, images, torch.randn(3, 16))
    assert _state(model) == state and all(p.grad is None for p in model.parameters())
    assert_unchanged(model, before)


def test_gradient_methods_work_on_a_frozen_model_and_agree_with_the_forward():
    model = make_vit(layers=4).requires_grad_(False)
    images, texts = random_images(model), torch.nn.functional.normalize(torch.randn(3, 32), dim=-1)
    result = gradcam(model, images, texts)
    assert result.relevance.abs().sum() > 0
    features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    torch.testing.assert_close(result.image_features, features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.logits, model.logit_scale.exp() * features @ texts.t())
    last = chefer_relevancy(model, images, texts, start_layer=-1)
    third = chefer_relevancy(model, images, texts, start_layer=3)
    torch.testing.assert_close(third.relevance, last.relevance)
    with pytest.raises(ValueError, match="start_layer"):
        chefer_relevancy(model, images, texts, start_layer=4)


def test_gradcam_on_a_resnet_and_attention_methods_refused(rn):
    before, images, texts = snapshot(rn), random_images(rn), torch.randn(2, 32)
    assert gradcam(rn, images, texts).relevance.shape == (2, 2, 2, 2)
    for name in ("attn_gradcam", "chefer"):
        with pytest.raises(UnsupportedModelError) as error:
            gradient_maps(rn, images, texts, GRADIENT_METHODS[name])
        assert repr(name) in str(error.value) and "ModifiedResNet" in str(error.value)
    assert all(p.grad is None for p in rn.parameters())
    assert_unchanged(rn, before)


def test_explain_takes_every_method_name(tokenizer):
    model = make_vit(layers=4)
    images = random_images(model, batch=1)
    for name in ("sclip", "gradcam", "chefer"):
        result = explain(model, tokenizer, images, ["cat", "dog"], method=name)
        assert result.maps.shape == (1, 32, 32, 2) and result.similarity.shape == (1, 17, 2)
        assert result.method == resolve_method(name)
        assert float(result.maps.min()) >= 0.0 and float(result.maps.max()) <= 1.0
    torch.testing.assert_close(
        explain(model, tokenizer, images, ["cat"], "naclip").similarity,
        explain(model, tokenizer, images, ["cat"], method=METHODS["naclip"]).similarity,
    )
    with pytest.raises(ValueError, match="gradcam"):
        explain(model, tokenizer, images, ["cat"], method="grad-cam")
    with pytest.raises(ValueError, match="not both"):
        explain(model, tokenizer, images, ["cat"], method="raw", config=SurgeryConfig.paper())
    with pytest.warns(DeprecationWarning, match="pass method="):
        old = explain(model, tokenizer, images, ["cat"], config=SurgeryConfig.off())
    torch.testing.assert_close(old.similarity, explain(model, tokenizer, images, ["cat"], "raw").similarity)
