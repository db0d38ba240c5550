"""The shipped small CLIPs: present, intact, loadable offline, and as good as recorded."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from surgery_lib import SurgeryConfig, encode_image_tokens, load_clip, preprocess_images
from surgery_lib.model.shipped import (
    DEFAULT_MODEL,
    TOY_MODELS,
    WEIGHTS_DIR,
    recorded_metadata,
    sha256,
    weights_path,
)
from surgery_tools.quick_check import quick_zero_shot

SHIPPED = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))
TARGETS = {"seen_zero_shot": 80.0, "seen_pointing": 60.0}  # issue 16 (new instances: missed, see the card)


def test_the_default_model_ships():
    assert SHIPPED == ["toy-rn", "toy-vit", "toy-vit-v2"]
    assert sorted(TOY_MODELS) == SHIPPED and DEFAULT_MODEL == "toy-vit-v2"
    clip = load_clip()
    assert clip.name == "toy-vit-v2" and clip.image_size == 112


def test_the_default_vit_meets_the_model_card_targets():
    """The recorded full evaluation of the default ViT (quick_check) against the targets its card
    states: zero-shot >= 80 % on seen instances, pointing game >= 60 % on seen instances, raw CLIP's
    mean score contrast negative (the paper's opposite visualization). The new-instance target
    (>= 20 %) is missed (17.7 %, card: the learning curve); it must at least not fall below the
    previous default's."""
    quality = recorded_metadata(DEFAULT_MODEL)["quality"]
    seen, new = quality["seen_instances"], quality["new_instances"]
    assert seen["zero_shot_top1"] >= TARGETS["seen_zero_shot"]
    assert seen["surgery"]["pointing_game"] >= TARGETS["seen_pointing"]
    assert seen["raw"]["mSC"] < 0 and new["raw"]["mSC"] < 0
    previous = recorded_metadata("toy-vit")["quality"]["new_instances"]["zero_shot_top1"]
    assert new["zero_shot_top1"] >= previous
    curve = recorded_metadata(DEFAULT_MODEL)["learning_curve"]
    assert [point["step"] for point in curve] == sorted(point["step"] for point in curve)
    assert curve[-1]["seen_instances"]["zero_shot_top1"] == round(seen["zero_shot_top1"], 1)


@pytest.mark.parametrize("name", SHIPPED)
def test_checksum_size_and_offline_load(name, monkeypatch):
    path = weights_path(name)
    meta = recorded_metadata(name)
    assert sha256(path) == meta["sha256"]
    assert path.stat().st_size <= 30 * 2**20
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_clip(name)
    stored = load_file(path)
    for key, value in clip.model.state_dict().items():
        assert torch.equal(value, stored[key].float()), key
    assert clip.tokenizer(["a photo of a bird."]).shape == (1, 24)


@pytest.mark.parametrize("name", SHIPPED)
def test_quick_zero_shot_matches_record(name):
    clip = load_clip(name)
    recorded = recorded_metadata(name)["quick_check"]["zero_shot_top1"]
    measured = quick_zero_shot(clip.model, clip.tokenizer, clip.image_size)
    assert abs(measured - recorded) <= 2.5, (
        f"{name}: zero-shot top-1 {measured:.1f} % vs recorded {recorded:.1f} %"
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_quality_shows_surgery_beats_raw(name):
    """The model card's claim, from the recorded full evaluation of each shipped model."""
    quality = recorded_metadata(name)["quality"]
    for split in ("seen_instances", "new_instances"):
        raw, surgery = quality[split]["raw"], quality[split]["surgery"]
        assert surgery["mSC"] > raw["mSC"] and surgery["mIoU"] > raw["mIoU"]
        assert surgery["pointing_game"] > raw["pointing_game"]


def test_default_model_end_to_end_on_a_real_photo():
    from surgery_lib.data.shipped import read_real_photos
    from surgery_lib.paths import data_dir

    clip = load_clip()
    photo = read_real_photos(data_dir() / "real")[0]
    images = preprocess_images([photo.image], size=clip.image_size)
    tokens, grid = encode_image_tokens(clip.model, images, SurgeryConfig.paper())
    assert grid == (14, 14) and tokens.shape == (1, 197, 128) and torch.isfinite(tokens).all()
