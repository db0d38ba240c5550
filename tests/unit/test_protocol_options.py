"""Inference-side protocol options: template sets, logit scale, PAMR steps and method presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import make_vit
from PIL import Image

from surgery_lib.config import SurgeryConfig
from surgery_lib.eval import runner as ev
from surgery_lib.eval.runner import PROTOCOL_PRESETS, EvalSettings
from surgery_lib.eval.segmentation import Protocol, predict_paper, predict_sliding
from surgery_lib.maps.text import PROMPT_TEMPLATES, TEMPLATE_SETS, clear_text_cache, text_features


def _settings(**changes) -> EvalSettings:
    return EvalSettings(task="segment", dataset="voc", root=Path("r"), out=Path("o"), **changes)


@pytest.fixture(scope="module")
def vit():
    return make_vit()


@pytest.fixture(scope="module")
def tok(tokenizer):
    return tokenizer


def test_template_sets():
    assert TEMPLATE_SETS["surgery85"] == PROMPT_TEMPLATES and len(PROMPT_TEMPLATES) == 85
    openai = tuple(t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert TEMPLATE_SETS["openai80"] == openai == PROMPT_TEMPLATES[:80]
    assert TEMPLATE_SETS["single"] == ("a photo of a {}.",)


def test_templates_change_the_text_features_and_default_is_unchanged(vit, tok):
    clear_text_cache(vit)
    labels = ["cat", "dog"]
    default = text_features(vit, tok, labels)
    assert torch.equal(default, text_features(vit, tok, labels, templates="surgery85"))
    assert torch.equal(default, text_features(vit, tok, labels, use_cache=False))
    assert torch.equal(default, text_features(vit, tok, labels, templates=PROMPT_TEMPLATES, use_cache=False))
    openai = text_features(vit, tok, labels, templates="openai80")
    single = text_features(vit, tok, labels, templates="single")
    assert not torch.allclose(default, openai) and not torch.allclose(openai, single)
    # the cache keys on the templates: each set's features equal an uncached computation
    assert torch.equal(openai, text_features(vit, tok, labels, templates="openai80", use_cache=False))
    assert torch.equal(single, text_features(vit, tok, labels, templates=["a photo of a {}."]))
    with pytest.raises(ValueError, match=r"unknown template set 'imagenet'.*surgery85.*openai80.*single"):
        text_features(vit, tok, labels, templates="imagenet")


def test_defaults_unchanged(vit):
    s = _settings()
    assert (s.protocol, s.templates, s.logit_scale, s.pamr_steps, s.protocol_preset) == (
        "paper", "surgery85", None, 0, None
    )  # fmt: skip
    keys = set(ev._settings(s, vit))
    assert not keys & {"templates", "logit_scale", "pamr_steps", "protocol_preset"}  # old runs resume
    changed = ev._settings(_settings(templates="openai80", pamr_steps=2, logit_scale=40.0), vit)
    assert (changed["templates"], changed["pamr_steps"], changed["logit_scale"]) == ("openai80", 2, 40.0)
    assert Protocol() == Protocol(templates="surgery85", pamr_steps=0)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"templates": "imagenet"}, ValueError, "unknown template set 'imagenet'.*openai80"),
        ({"pamr_steps": -1}, ValueError, "pamr_steps must be >= 0"),
        ({"pamr_steps": 1.5}, TypeError, "pamr_steps must be an int"),
        ({"pamr_steps": True}, TypeError, "pamr_steps must be an int"),
        ({"logit_scale": 0.0}, ValueError, "logit_scale must be a finite number > 0"),
        ({"logit_scale": float("inf")}, ValueError, "logit_scale must be a finite number > 0"),
        ({"logit_scale": "40"}, TypeError, "logit_scale must be a number"),
        ({"protocol_preset": "dino"}, ValueError, "unknown protocol preset 'dino'.*sclip.*naclip"),
    ],
)
def test_validation(changes, error, match):
    with pytest.raises(error, match=match):
        _settings(**changes)


def test_presets_fill_unset_fields():
    sclip = _settings(protocol_preset="sclip")
    assert (sclip.protocol, sclip.window, sclip.stride, sclip.templates) == ("sliding", 224, 112, "openai80")
    assert (sclip.logit_scale, sclip.bg_threshold, sclip.pamr_steps, sclip.image_size) == (65.0, 0.1, 0, None)
    on_ade = EvalSettings(
        task="segment", dataset="ade20k", root=Path("r"), out=Path("o"), protocol_preset="sclip"
    )
    assert on_ade.logit_scale == 40.0  # the per-dataset value's fallback
    naclip = _settings(protocol_preset="naclip")
    assert (naclip.pamr_steps, naclip.logit_scale, naclip.templates) == (10, 40.0, "openai80")
    paper_row = _settings(protocol_preset="naclip", pamr_steps=0, window=200)  # explicit values win
    assert (paper_row.pamr_steps, paper_row.window, paper_row.stride) == (0, 200, 112)
    clear = _settings(protocol_preset="clearclip")
    assert (clear.image_size, clear.window, clear.stride, clear.logit_scale) == (448, 448, 224, 50.0)
    gem = _settings(protocol_preset="gem")
    assert (gem.protocol, gem.image_size, gem.templates) == ("paper", 448, "single")
    assert _settings(protocol_preset="maskclip").image_size == 512
    assert set(PROTOCOL_PRESETS) <= set(ev.METHODS)


def test_cli_parses_the_new_flags():
    argv = ["--task", "segment", "--dataset", "voc", "--root", "r", "--out", "o", "--templates", "single",
            "--logit-scale", "30", "--pamr-steps", "3", "--protocol-preset", "clearclip"]  # fmt: skip
    options = vars(ev._parser().parse_args(argv))
    s = EvalSettings(**{**options, "method": "surgery"})
    assert (s.templates, s.logit_scale, s.pamr_steps, s.protocol_preset) == ("single", 30.0, 3, "clearclip")
    assert (s.protocol, s.window) == ("sliding", 448)
    plain = EvalSettings(**{**vars(ev._parser().parse_args(argv[:8])), "method": "surgery"})
    assert plain == _settings()
    with pytest.raises(SystemExit):
        ev._parser().parse_args([*argv[:8], "--templates", "imagenet"])


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(30, 40), (50, 20)]]


def test_pamr_in_both_protocols(vit, tok, monkeypatch):
    from surgery_lib.eval import segmentation

    calls = []

    def spy(image, masks, steps, dilations):
        calls.append((tuple(image.shape), tuple(masks.shape), steps, dilations))
        return segmentation_pamr(image, masks, steps, dilations)

    segmentation_pamr = segmentation.pamr
    monkeypatch.setattr(segmentation, "pamr", spy)
    feats = text_features(vit, tok, ["cat", "dog", "car"])
    images, config = _images(), SurgeryConfig.paper()
    plain = predict_paper(vit, tok, images, feats, config, Protocol("paper"), 32, True)
    assert not calls  # pamr_steps=0: never called
    refined = predict_paper(vit, tok, images, feats, config, Protocol("paper", pamr_steps=2), 32, True)
    # per image: the upsampled maps and the min-max maps that decide background, at the image's size
    assert (
        calls
        == [((1, 3, 30, 40), (1, 3, 30, 40), 2, (8, 16))] * 2
        + [((1, 3, 50, 20), (1, 3, 50, 20), 2, (8, 16))] * 2
    )
    assert [p.shape for p in refined] == [(30, 40), (50, 20)]
    assert all(p.min() >= -1 and p.max() <= 2 for p in refined)
    assert any(not torch.equal(p, q) for p, q in zip(plain, refined, strict=True))
    calls.clear()
    sliding = Protocol("sliding", short_side=48, window=32, stride=16, background_threshold=0.4)
    plain = predict_sliding(vit, tok, images, feats, config, sliding, background=True)
    assert not calls
    refined = predict_sliding(
        vit, tok, images, feats, config, Protocol(**{**sliding.__dict__, "pamr_steps": 2}), background=True
    )
    assert [c[:2] for c in calls] == [((1, 3, 30, 40), (1, 3, 30, 40)), ((1, 3, 50, 20), (1, 3, 50, 20))]
    assert [p.shape for p in refined] == [(30, 40), (50, 20)]
    with pytest.raises(ValueError, match="pamr_steps"):
        Protocol(pamr_steps=-2)
    with pytest.raises(ValueError, match="unknown template set"):
        Protocol(templates="x")


def test_official_and_common_protocols_in_the_settings():
    common = _settings(protocol="common", protocol_preset="sclip")
    assert common.protocol == "sliding" and common == _settings(protocol="sliding", protocol_preset="sclip")
    sclip = _settings(protocol="official", method="sclip")  # the method's own preset by default
    assert (sclip.protocol_preset, sclip.window, sclip.stride, sclip.logit_scale) == ("sclip", 224, 112, 65.0)
    assert (sclip.bg_threshold, sclip.area_thd, sclip.pamr_steps) == (0.1, 0.1, 0)
    ctx_sclip = EvalSettings(
        task="segment", dataset="context", root=Path("r"), out=Path("o"), protocol="official", method="sclip"
    )
    assert ctx_sclip.area_thd is None and ctx_sclip.logit_scale == 50.0
    naclip = _settings(protocol="official", method="naclip+fs")
    assert (naclip.protocol_preset, naclip.window, naclip.pamr_steps) == ("naclip", 0, 10)  # VOC: whole image
    assert _settings(protocol="official", method="naclip", window=224).window == 224  # explicit values win
    clear = EvalSettings(
        task="segment",
        dataset="cityscapes",
        root=Path("r"),
        out=Path("o"),
        protocol="official",
        method="clearclip",
    )
    assert (clear.window, clear.stride, clear.image_size) == (224, 224, 448)
    with pytest.raises(ValueError, match="official segmentor of"):
        _settings(protocol="official", method="surgery")
    with pytest.raises(ValueError, match="area_thd is SCLIP's"):
        _settings(protocol="sliding", protocol_preset="sclip", area_thd=0.2)
    with pytest.raises(ValueError, match="window must be >= 1"):
        _settings(protocol="sliding", window=0)
    argv = ["--task", "segment", "--dataset", "voc", "--root", "r", "--out", "o", "--protocol", "official",
            "--area-thd", "0.3"]  # fmt: skip
    parsed = EvalSettings(**{**vars(ev._parser().parse_args(argv)), "method": "sclip"})
    assert (parsed.protocol, parsed.area_thd) == ("official", 0.3)
    protocol = Protocol("official", segmentor="sclip", window=0, area_threshold=0.3, background_threshold=0.2)
    official = protocol.official(patch=8)
    assert (official.window, official.area_threshold, official.prob_threshold, official.patch) == (
        0,
        0.3,
        0.2,
        8,
    )
