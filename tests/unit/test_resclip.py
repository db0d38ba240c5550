"""ResCLIP (RCS and SFR) beyond its golden files: per image at any batch size, the model untouched,
ResNets refused by name, SFR's texts required, the path test's partial walk, and typical mistakes
of FORMAT.md's table caught."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import REPO, make_rn, make_vit, random_images, snapshot

from surgery_lib import encode_image_tokens
from surgery_lib.methods import METHODS, get_method
from surgery_lib.methods import resclip as rc
from surgery_lib.model import SurgeryError, UnsupportedModelError, dense_forward
from surgery_lib.model.loading import model_from_openai_state_dict

GOLDEN = REPO.parent / "shared" / "golden" / "zoo-v2"
SFR_PRESETS = ("resclip", "resclip-clearclip", "resclip-sclip", "resclip-surgery")


@functools.lru_cache(maxsize=1)
def _golden() -> tuple[torch.nn.Module, dict]:
    """The 12-block model, images, texts and outputs of ``resclip.pt`` (ResCLIP on NACLIP, with SFR)."""
    case = torch.load(GOLDEN / "resclip.pt", weights_only=True)
    weights = safetensors.torch.load_file(Path(GOLDEN / case["meta"]["weights_file"]))
    return model_from_openai_state_dict(dict(weights)), case


def _unit(tokens: torch.Tensor) -> torch.Tensor:
    return tokens / tokens.norm(dim=-1, keepdim=True)


def _texts(model: torch.nn.Module, n: int = 4) -> torch.Tensor:
    dim = model.text_projection.shape[1]
    rows = torch.randn(n, dim, generator=torch.Generator().manual_seed(3))
    return torch.nn.functional.normalize(rows, dim=-1)


def test_the_presets_say_what_they_build_on() -> None:
    assert rc.rcs_blocks(12) == range(5, 9)  # the official attn_map[5:9] on ViT-B/16
    assert rc.rcs_blocks(24) == range(10, 18)
    assert METHODS["resclip"].replace(forward="") == METHODS["naclip"]
    assert METHODS["resclip-clearclip"].replace(forward="") == METHODS["clearclip"]
    assert METHODS["resclip-sclip"].replace(forward="") == METHODS["sclip"]
    assert METHODS["resclip-rcs"].replace(forward="") == METHODS["naclip"]
    assert METHODS["resclip-surgery"].replace(forward="") == METHODS["surgery"]
    assert "not in the paper" in get_method("resclip-surgery").reference


@pytest.mark.parametrize("name", SFR_PRESETS)
def test_every_image_is_its_own_at_any_batch_size(name: str) -> None:
    model, case = _golden()  # its texts give class maps of several classes (random texts give one)
    images, texts = case["images"].float(), case["text_features"].float()
    images = torch.cat([images, images[:1].flip(-1)])
    with torch.no_grad():
        whole = rc.resclip_forward(model, images, METHODS[name], texts)
        alone = [rc.resclip_forward(model, images[i : i + 1], METHODS[name], texts) for i in range(3)]
    assert whole.class_map.shape == (3, 6, 6) and all(len(m.unique()) > 1 for m in whole.class_map[:2])
    assert torch.equal(whole.class_map, torch.cat([a.class_map for a in alone]))
    assert torch.allclose(whole.tokens, torch.cat([a.tokens for a in alone]), atol=1e-5)


def test_the_golden_file_at_batch_one_and_its_class_maps_are_not_trivial() -> None:
    model, case = _golden()
    images, texts, want = case["images"].float(), case["text_features"].float(), case["outputs"]
    with torch.no_grad():
        for i in range(images.shape[0]):
            out = rc.resclip_forward(model, images[i : i + 1], METHODS["resclip"], texts)
            assert torch.equal(out.class_map[0].float(), want["sfr_class_map"][i])
            assert (_unit(out.tokens[0, 1:]) - want["patch_tokens"][i]).abs().max() < 1e-5
    assert all(len(m.unique()) >= 3 for m in want["sfr_class_map"])


def test_sfr_needs_the_texts_and_the_model_is_never_changed() -> None:
    model = make_vit(layers=12, image_size=64)
    images, texts = random_images(model), _texts(model)
    before = snapshot(model)
    with pytest.raises(SurgeryError, match=r"reads the class text features.*class_texts"):
        encode_image_tokens(model, images, METHODS["resclip"])
    with pytest.raises(SurgeryError, match="depth=1"):
        rc.resclip_forward(model, images, METHODS["resclip"].replace(depth=2), texts)
    with pytest.raises(ValueError, match=r"class_texts needs text features \(T, D\)"):
        rc.class_texts(texts[0]).__enter__()
    with torch.no_grad():
        with rc.class_texts(texts):
            tokens, grid = encode_image_tokens(model, images, METHODS["resclip"])
        direct = rc.resclip_forward(model, images, METHODS["resclip"], texts)
        rcs, _ = dense_forward(model, images, METHODS["resclip-rcs"])
        rcs_direct = rc.resclip_forward(model, images, METHODS["resclip-rcs"])
    assert grid == (8, 8) and torch.allclose(tokens, _unit(direct.tokens), atol=1e-6)
    assert torch.equal(rcs, rcs_direct.tokens) and rcs_direct.class_map is None
    assert (_unit(rcs) - tokens).abs().max() > 1e-3  # SFR moves the tokens
    after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model.visual._forward_hooks and not model.visual._forward_pre_hooks


def test_depth_zero_is_vanilla_clip() -> None:
    model = make_vit(layers=12, image_size=64)
    images = random_images(model)
    with torch.no_grad():
        off = rc.resclip_forward(model, images, METHODS["resclip"].replace(depth=0), _texts(model))
        raw, _ = dense_forward(model, images, METHODS["raw"])
    assert torch.equal(off.tokens, raw) and off.class_map is None


@pytest.mark.parametrize("name", [*SFR_PRESETS, "resclip-rcs"])
def test_modified_resnets_are_refused_by_name(name: str) -> None:
    model = make_rn()
    images = random_images(model)
    pattern = rf"method '{name}' has no variant for the ModifiedResNet image tower \(open_clip"
    with pytest.raises(UnsupportedModelError, match=pattern), rc.class_texts(_texts(model)):
        encode_image_tokens(model, images, METHODS[name])
    with pytest.raises(UnsupportedModelError, match="ModifiedResNet"):
        rc.resclip_forward(model, images, METHODS[name], _texts(model))
    assert not get_method(name).runs_on("rn")


def test_the_path_test_walks_only_the_pairs_own_steps_of_the_longest_walk() -> None:
    # one row of 9 patches, patch 5 of another class; the longest walk has M = 8 steps
    classes = torch.zeros(1, 1, 9, dtype=torch.long)
    classes[0, 0, 5] = 1
    phi = rc.sfr_matrix(classes, prefix=1, sigma=0.1)[0, 0].float()  # σ = 0.1: one tap, no blur
    assert phi.shape == (10, 10) and phi.dtype == torch.float32
    assert torch.all(phi[0] == 0) and torch.all(phi[:, 0] == 0) and phi.max() == 1
    row2, row6 = phi[3], phi[7]  # patches 2 and 6 (the class token is row 0)
    # 2 -> 6 (4 steps): only the samples k <= 4 of the 8-step walk, patches 2..4, are tested: kept
    assert row2[1 + 6] == row2[1 + 3] and row2[1 + 5] == 0
    # 6 -> 2 passes patch 5 at once: decayed by exp(-4/8); 6 -> 7 is kept
    assert math.isclose(row6[1 + 2] / row6[1 + 7], math.exp(-0.5), rel_tol=2e-3)
    assert math.isclose(row6[1 + 3] / row6[1 + 7], math.exp(-3 / 8), rel_tol=2e-3)


def test_typical_mistakes_move_the_output_beyond_the_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    """FORMAT.md: RCS over blocks 6-9 instead of 5-8 moves the tokens by 0.052, no PAMR in the first
    pass by 0.037, λ_s·Φ in float32 by ~6e-5; the golden file's tolerance is 1e-5."""
    model, case = _golden()
    images, texts = case["images"].float(), case["text_features"].float()
    want = case["outputs"]["patch_tokens"]

    def error() -> float:
        with torch.no_grad():
            out = rc.resclip_forward(model, images, METHODS["resclip"], texts)
        return (_unit(out.tokens[:, 1:]) - want).abs().max().item()

    assert error() < 1e-5
    with monkeypatch.context() as patch:
        patch.setattr(rc, "rcs_blocks", lambda n: range(6, 10))
        assert error() > 1e-2
    with monkeypatch.context() as patch:
        patch.setattr(rc, "resclip_pamr", lambda image, masks: masks)
        assert error() > 1e-2
    fp16 = rc.sfr_matrix
    with monkeypatch.context() as patch:  # λ_s·Φ in float32 instead of float16: 6.5e-5
        patch.setattr(rc, "sfr_matrix", lambda class_map, prefix: fp16(class_map, prefix).float())
        assert error() > 2e-5


def test_gradients_flow_through_the_second_pass_only() -> None:
    model = make_vit(layers=12, image_size=64)
    images = random_images(model).requires_grad_(True)
    out = rc.resclip_forward(model, images, METHODS["resclip"], _texts(model))
    assert not out.class_map.requires_grad
    out.tokens[:, 1:].sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
