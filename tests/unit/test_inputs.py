"""Bad input gets a clear error that names the problem, and changes nothing."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from conftest import assert_unchanged, make_rn, make_vit, random_images, snapshot
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from PIL import Image

import surgery_lib.maps.images as images_module
from surgery_lib import (
    ImageInputError,
    LabelTooLongError,
    SurgeryConfig,
    UnsupportedModelError,
    apply_surgery,
    encode_image_tokens,
    explain,
    preprocess_images,
    text_features,
    to_rgb,
)
from surgery_lib.maps.text import _CACHE


@pytest.fixture
def model():
    return make_vit()


def _photo(mode: str = "RGB", size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


# ---- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        ([], ValueError, "label list is empty"),
        (["cat", "  "], ValueError, r"label 1 \('  '\) is empty or whitespace"),
        ([""], ValueError, "empty or whitespace"),
        ("cat", TypeError, "list of class names"),
        (["cat", 3], TypeError, "label 1 is int"),
        (["cat " * 80], LabelTooLongError, "too long"),
    ],
)
def test_bad_labels(model, tokenizer, labels, error, match):
    before = snapshot(model)
    cache_before = dict(_CACHE.get(model, {}))
    with pytest.raises(error, match=match):
        text_features(model, tokenizer, labels)
    with pytest.raises(error, match=match):
        explain(model, tokenizer, random_images(model), labels)
    assert_unchanged(model, before)
    assert dict(_CACHE.get(model, {})).keys() == cache_before.keys()


def test_long_label_that_fits_is_accepted(model, tokenizer):
    assert text_features(model, tokenizer, ["cat " * 50]).shape == (1, 32)


# ---- PIL images and arrays ----------------------------------------------------------------------


def test_rgb_and_lossless_conversions_are_accepted():
    rgb = _photo()
    assert to_rgb(rgb) is rgb
    gray = _photo("L")
    assert to_rgb(gray).mode == "RGB"
    assert np.array_equal(np.asarray(to_rgb(gray))[..., 0], np.asarray(gray))
    assert to_rgb(_photo("P")).mode == "RGB"
    assert to_rgb(_photo("CMYK")).mode == "RGB"


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (_photo("RGBA"), "alpha channel"),
        (_photo("LA"), "alpha channel"),
        (_photo("RGB").convert("I;16"), "16/32-bit"),
        (_photo("RGB").convert("F"), "16/32-bit"),
        (Image.new("RGB", (1, 1)), r"1×1 pixels"),
        (Image.new("RGB", (200, 8)), r"200×8 pixels"),
    ],
)
def test_bad_pil_images(image, match):
    before = image.copy()
    with pytest.raises(ImageInputError, match=match):
        preprocess_images([image])
    assert image.mode == before.mode and image.tobytes() == before.tobytes()


def test_palette_with_transparency_is_refused():
    im = _photo("P")
    im.info["transparency"] = 0
    with pytest.raises(ImageInputError, match="alpha"):
        to_rgb(im)


def test_huge_image_is_refused(monkeypatch):
    monkeypatch.setattr(images_module, "MAX_PIXELS", 1000)
    with pytest.raises(ImageInputError, match="downscale"):
        to_rgb(_photo())


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((3, 40, 40), np.uint8), "channel-first"),
        (np.zeros((40, 40, 4), np.uint8), "alpha channel"),
        (np.zeros((40, 40, 2), np.uint8), r"expected \(H, W, 3\)"),
        (np.zeros((40, 40, 3), np.uint16), "16-bit"),
        (np.zeros((40, 40, 3), bool), "dtype bool"),
        (np.full((40, 40, 3), 2.0, np.float32), r"expected \[0, 1\]"),
        (np.full((40, 40, 3), np.nan, np.float32), "NaN"),
        (np.zeros((1, 1, 3), np.uint8), "1×1"),
    ],
)
def test_bad_arrays(array, match):
    before = array.copy()
    with pytest.raises(ImageInputError, match=match):
        preprocess_images(array)
    assert np.array_equal(array, before, equal_nan=True)


def test_arrays_and_uint8_tensors_are_accepted():
    rgb = np.array(_photo())
    a = preprocess_images(rgb, size=32)
    b = preprocess_images(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), size=32)
    c = preprocess_images(rgb.astype(np.float32) / 255.0, size=32)
    assert a.shape == (1, 3, 32, 32)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_reference_preprocessing_resizes_without_crop():
    out = preprocess_images([_photo(size=(100, 50)), _photo(size=(30, 60))], size=(24, 48))
    assert out.shape == (2, 3, 24, 48)


def test_empty_image_list():
    with pytest.raises(ImageInputError, match="empty"):
        preprocess_images([])


# ---- preprocessed tensors to the encoders ---------------------------------------------------


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.randn(3, 32, 32), "add a batch dimension"),
        (torch.randn(1, 4, 32, 32), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.randn(0, 3, 32, 32), "empty"),
        (torch.randn(1, 3, 4, 32), "smaller than one token"),
        (np.zeros((1, 3, 32, 32), np.float32), "preprocess_images"),
    ],
)
def test_bad_image_batches(model, images, match):
    before = snapshot(model)
    copy = images.clone() if isinstance(images, torch.Tensor) else images.copy()
    with pytest.raises(ImageInputError, match=match):
        encode_image_tokens(model, images, SurgeryConfig.paper())
    assert_unchanged(model, before)
    if isinstance(images, torch.Tensor):
        assert torch.equal(images, copy) or torch.isnan(images).all()


def test_resnet_input_smaller_than_stride_is_refused():
    model = make_rn()
    with pytest.raises(ImageInputError, match="smaller than one token"):
        encode_image_tokens(model, torch.randn(1, 3, 16, 16))


# ---- models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("thing", [torch.nn.Linear(3, 3), "ViT-B-16", None])
def test_not_a_clip(thing, tokenizer):
    with pytest.raises(UnsupportedModelError, match=r"CLIP|expected an open_clip"):
        encode_image_tokens(thing, torch.randn(1, 3, 32, 32))
    with pytest.raises(UnsupportedModelError):
        apply_surgery(thing)
    with pytest.raises(UnsupportedModelError):
        text_features(thing, tokenizer, ["cat"])


def test_timm_tower_is_named():
    vision = CLIPVisionCfg(
        timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False, image_size=224
    )
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match=r"TimmModel.*timm"):
        apply_surgery(model)
    with pytest.raises(UnsupportedModelError, match="TimmModel"):
        encode_image_tokens(model, torch.randn(1, 3, 224, 224))
    assert_unchanged(model, before)


def test_unsupported_vit_variants_are_named():
    with pytest.raises(UnsupportedModelError, match="scaled cosine"):
        apply_surgery(make_vit("custom", scaled_cosine_attn=True))
    with pytest.raises(UnsupportedModelError, match="pool_type='none'"):
        apply_surgery(make_vit(pool_type="none"))


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown attention kind 'xy'"):
        SurgeryConfig(attention="xy")
    with pytest.raises(ValueError, match="depth"):
        SurgeryConfig(depth=-1)
    with pytest.raises(TypeError, match="skip_ffn must be a bool"):
        SurgeryConfig(skip_ffn="yes")
    with pytest.raises(ValueError, match="redundant_features"):
        SurgeryConfig(redundant_features="noise")


def test_numpy_integers_and_bools_make_the_same_config():
    """A sweep over np.arange depths or a mask of flags: stored as plain ints and bools, equal and
    hashed as the plain config (the caches key on it); floats and bools are still refused as depths."""
    import numpy as np

    config = SurgeryConfig(
        attention="gem", depth=np.int64(3), self_attn_iters=np.int32(1), feature_surgery=np.bool_(False)
    )
    plain = SurgeryConfig(attention="gem", depth=3, self_attn_iters=1, feature_surgery=False)
    assert config == plain and hash(config) == hash(plain)
    assert type(config.depth) is int and type(config.feature_surgery) is bool
    for bad in (np.float64(3.0), 3.0, True, np.bool_(True), np.int64(-1)):
        with pytest.raises(ValueError, match="depth must be an int >= 0"):
            SurgeryConfig(depth=bad)
